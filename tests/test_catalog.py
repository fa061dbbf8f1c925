"""Finding studies: a person's folders beside the shipped ones, broken files kept apart, and a wheel installed
elsewhere that still has its studies. Real files in tmp_path, the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gansweep.catalog import STUDIES_ENV, find_spec, list_studies
from gansweep.cli import main
from gansweep.errors import UnknownNameError

ROOT = Path(__file__).parent.parent
SHIPPED = sorted(p.stem for p in (ROOT / "gansweep" / "studies").glob("*.toml"))

STUDY = """
name = "{name}"
description = "{description}"
variants = ["gan"]
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write(folder: Path, name: str, text: str | None = None, description: str = "mine") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text if text is not None else STUDY.format(name=name, description=description))


def rows(output: str) -> dict[str, str]:
    """The lines of a `list studies` table by study name."""
    return {line.split()[0]: line for line in output.splitlines()[2:]}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, with no study folder named in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STUDIES_ENV, raising=False)
    return tmp_path


def test_a_users_studies_are_listed_beside_the_shipped_ones_and_replace_a_namesake(workdir, monkeypatch):
    write(workdir / "studies", "mine")
    write(workdir / "studies", "lr-sensitivity", description="my own learning rates")
    write(workdir / "elsewhere", "lr-sensitivity", description="shadowed by ./studies")
    write(workdir / "elsewhere", "dropout", description="their dropout")
    write(workdir / "elsewhere", "theirs")
    monkeypatch.setenv(STUDIES_ENV, str(workdir / "elsewhere"))

    studies = {s.name: s for s in list_studies()}
    assert sorted(studies) == sorted({*SHIPPED, "mine", "theirs"})
    expected = {"mine": "studies/mine.toml", "lr-sensitivity": "studies/lr-sensitivity.toml",
                "dropout": f"{workdir}/elsewhere/dropout.toml", "theirs": f"{workdir}/elsewhere/theirs.toml",
                "tune": str(ROOT / "gansweep" / "studies" / "tune.toml")}
    assert {name: str(studies[name].path) for name in expected} == expected
    assert {name: str(find_spec(name)) for name in expected} == expected
    assert studies["lr-sensitivity"].spec.description == "my own learning rates"

    result = invoke("list", "studies")
    assert result.exit_code == 0
    listed = rows(result.output)
    assert sorted(listed) == sorted(studies)
    assert all(expected[name] in listed[name] for name in expected)
    assert "my own learning rates" in listed["lr-sensitivity"] and "shadowed" not in result.output


def test_a_study_folder_named_in_the_environment_must_exist(workdir, monkeypatch):
    monkeypatch.setenv(STUDIES_ENV, str(workdir / "missing"))
    result = invoke("list", "studies")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {STUDIES_ENV} must name a folder of study files, got " \
                                    f"'{workdir / 'missing'}'; create it or unset it"


@pytest.mark.parametrize("text, error", [
    ("name = \n", "cannot read study file: Invalid value (at line 1, column 8)"),
    (STUDY.format(name="bad", description="d") + 'sampler = "grid-search"\n',
     "sampler must be one of grid, tpe, random, got 'grid-search'"),
    (STUDY.format(name="foo", description="d"),
     "name: a study's name is its file name, 'bad', got 'foo'; rename the file or change the name"),
])
def test_a_broken_file_is_listed_with_its_error_and_the_others_normally(workdir, text, error):
    write(workdir / "studies", "bad", text)
    write(workdir / "studies", "mine")
    result = invoke("list", "studies")
    assert result.exit_code == 0, result.output
    listed = rows(result.output)
    assert sorted(listed) == sorted({*SHIPPED, "mine", "bad"})
    assert listed["bad"].split()[1:4] == ["-", "-", "studies/bad.toml"]
    assert listed["bad"].endswith(f"broken: studies/bad.toml: {error}")
    assert "broken" not in "".join(line for name, line in listed.items() if name != "bad")

    run = invoke("study", "bad")
    assert run.exit_code == 2 and run.output == f"Error: studies/bad.toml: {error}\n"


def test_a_study_is_found_by_its_file_name_not_its_name_key(workdir):
    write(workdir / "studies", "bar", STUDY.format(name="foo", description="d"))
    assert str(find_spec("bar")) == "studies/bar.toml"
    with pytest.raises(UnknownNameError, match="^unknown study 'foo'; known: bar, critic-iterations, "):
        find_spec("foo")
    with pytest.raises(UnknownNameError, match="^unknown study 'baz'; did you mean 'bar'\\?"):
        find_spec("baz")


@pytest.mark.parametrize("asked, suggested", [
    ("lr-sensitivty", "lr-sensitivity"),  # shipped
    ("my-stdy", "my-study"),              # the user's
    ("brokn", "broken"),                  # a broken file is still a study by that name
])
def test_unknown_names_get_the_closest_file_name(workdir, asked, suggested):
    write(workdir / "studies", "my-study")
    write(workdir / "studies", "broken", "variants = [")
    result = invoke("study", asked)
    assert result.exit_code == 2
    assert result.output == (f"Error: unknown study {asked!r}; did you mean {suggested!r}? "
                             f"(see: gansweep list studies)\n")


def test_a_wheel_installed_elsewhere_lists_and_runs_its_shipped_studies(tmp_path, feature_net_cache):
    """Built from the checkout without build isolation (offline, with the venv's setuptools); setuptools' scratch
    folders go to tmp_path through DIST_EXTRA_CONFIG, since a stale build/lib in the checkout would be packed into
    the wheel and could hide a missing package-data rule."""
    pytest.importorskip("setuptools", reason="the wheel is built without isolation, with this venv's setuptools")
    (tmp_path / "setup.cfg").write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n"
                                        f"[egg_info]\negg_base = {tmp_path}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in (STUDIES_ENV, "MLFLOW_TRACKING_URI", "GANSWEEP_STORE", "PYTHONPATH")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path / "dist")], check=True,
                   env={**env, "DIST_EXTRA_CONFIG": str(tmp_path / "setup.cfg")})
    (wheel,) = (tmp_path / "dist").glob("gansweep-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, env=env)

    elsewhere = tmp_path / "elsewhere"  # no studies/ here, and not the checkout
    elsewhere.mkdir()
    env = {**env, "PYTHONPATH": str(target), "GANSWEEP_CACHE": str(feature_net_cache)}

    def gansweep(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gansweep", *args], cwd=elsewhere, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)

    listing = gansweep("list", "studies")
    assert listing.returncode == 0, listing.stdout
    listed = rows(listing.stdout)
    assert sorted(listed) == SHIPPED
    assert all(f"{target}/gansweep/studies/{name}.toml" in listed[name] for name in SHIPPED), listing.stdout

    run = gansweep("study", "lr-sensitivity", "--variant", "gan", "--dataset", "mnist-5k", "--epochs", "1",
                   "--trials", "1", "--device", "cpu",
                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage", str(tmp_path / "optuna.journal"))
    assert run.returncode == 0, run.stdout
    assert "study lr-sensitivity: 1 trial(s) run now, 1 in all" in run.stdout
    assert f"browse: gansweep ui --tracking-uri sqlite:///{tmp_path}/m.db  -> " in run.stdout  # the same store
    assert (tmp_path / "m.db").is_file() and (tmp_path / "optuna.journal").is_file()
    assert not (elsewhere / "mlruns").exists()
    report = gansweep("report", "lr-sensitivity", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                      "-o", str(tmp_path / "report"))  # its page's template ships too
    assert report.returncode == 0, report.stdout
    assert "<h1>gansweep study lr-sensitivity</h1>" in (tmp_path / "report" / "report.html").read_text()
