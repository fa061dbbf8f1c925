"""Bad input never costs a run: every value is refused up front with one line and exit code 2, before any store,
device or data is touched; a point that fails is retried a bounded number of times; a study is never continued
into trials that do not compare. Stores are real (sqlite and journal files in tmp_path), read back through
MLflow's and Optuna's own APIs."""

import math

import optuna
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from gansweep.cli import main
from gansweep.errors import ConfigError, GansweepError
from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import RETRIES, StudyOptions, run_study

STUDY = """
name = "tiny"
description = "a tiny MLP GAN at two learning rates"
variants = ["gan"]
dataset = "mnist-5k"
epochs = 1
batch_size = 200
n_eval = 200
seeds = [0]
{top}

[config]
hidden = [32]
z_dim = 8
n_samples = 16
log_every = 5
{config}

[space]
lr = [1e-4, 1e-3]
"""


def write_study(folder, top="", config="", name="tiny"):
    (folder / "studies").mkdir(exist_ok=True)
    path = folder / "studies" / f"{name}.toml"
    path.write_text(STUDY.format(top=top, config=config).replace('name = "tiny"', f'name = "{name}"'))
    return path


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory with the tiny study and no store yet."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GANSWEEP_STORE", raising=False)
    write_study(tmp_path)
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, *fragments):
    """One `Error:` line, exit code 2, no traceback, naming what was wrong."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def trial_count(folder, name="tiny"):
    journal = folder / "mlruns" / "optuna.journal"
    if not journal.exists():
        return 0
    storage = resolve_store(str(folder / "mlruns")).optuna()
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return len(optuna.load_study(study_name=name, storage=storage).get_trials()) if name in names else 0


# -- the runaways of the issue: each is now one line, zero trials, zero runs, no store ---------------------------

def _put(text, line):
    key = line.split(" = ")[0]
    lines = text.splitlines()
    for n, x in enumerate(lines):
        if x.split(" = ")[0] == key:
            lines[n] = line
            return "\n".join(lines) + "\n"
    return text.replace("[config]", f"[config]\n{line}")


@pytest.mark.parametrize("lines, options, fragments", [
    ([], ["--epochs", "-1"], ["--epochs -1", "epochs must be in [1, 1000000]"]),
    ([], ["--epochs", "0"], ["--epochs 0"]),
    ([], ["--trials", "0"], ["--trials must be in [1, 100000], got 0"]),
    (['hidden = "big"'], [], ["studies/tiny.toml", "hidden must be a list, got 'big'"]),
    (['variants = ["wgan"]', "label_smoothing = 0.1"], [], ["label_smoothing has no meaning"]),
    (["hidden = [32]\nepochs = 20"], [], ["epochs is set twice", "at the top (1)", "in [config] (20)"]),
    (['epochs = "five"'], [], ["epochs must be an integer, got 'five'"]),
    ([], ["--seeds", "0,-1"], ["--seeds 0,-1", "seeds must be in [0, 4294967295], got -1"]),
    ([], ["--device", "cuda"], ["cuda"]),
    ([], ["--experiment", ""], ["--experiment must not be empty"]),
    ([], ["--storage", ""], ["--storage must not be empty"]),
    ([], ["--tracking-uri", "mlruns"], ["plain file store"]),
])
def test_a_bad_value_costs_one_line_and_creates_nothing(here, lines, options, fragments):
    import torch

    if options == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = here / "studies" / "tiny.toml"
    text = path.read_text()
    for line in lines:
        text = _put(text, line)
    path.write_text(text)
    assert_refused(invoke("study", "tiny", "--device", "cpu", *options), *fragments)
    assert not (here / "mlruns").exists()  # no database, no journal, no artifacts


@pytest.mark.parametrize("space, fragment", [
    ("lr = [1e300]", "lr must be in (0, 1000], got 1e+300"),
    ("n_critic = []", "space.n_critic must be a non-empty list"),
    ("n_critic = [1, 1]", "lists 1 more than once"),
    ("width = [[8], [16]]", "each value must be a number, a string or a boolean"),
    ("lr = { low = 1e-3, high = 1e-4 }", "low must not exceed high"),
    ("lr = { low = 0.0, high = 1e-3, log = true }", "a log range needs low > 0"),
    ("lr = { low = 1e-4, high = nan }", "space.lr.high must be a finite number"),
    ("n_critic = { low = 5, high = 1 }", "low must not exceed high"),
    ("seed = [0, 1]", "space.seed"),
    ("batch_size = [5000]", "batch_size * n_critic must not exceed the 4000 training images"),
])
def test_every_space_entry_is_checked_when_the_file_loads(tmp_path, space, fragment):
    path = write_study(tmp_path)
    sampler = 'sampler = "random"\ntrials = 2\n' if "low" in space else ""
    text = path.read_text().replace("lr = [1e-4, 1e-3]", space).replace('seeds = [0]', f"seeds = [0]\n{sampler}")
    path.write_text(text.replace("batch_size = 200\n", "") if space.startswith("batch_size") else text)
    with pytest.raises(ConfigError, match="^" + str(path).replace(".", r"\.")) as error:
        load_spec(path)
    assert fragment in str(error.value)


@pytest.mark.parametrize("line, fragment", [
    ("seeds = [0.5]", "seeds must be an integer, got 0.5"),
    ('seeds = ["a"]', "seeds must be an integer, got 'a'"),
    ("seeds = []", "needs at least one seed"),
    ('best_seeds = "123"', "best_seeds must be a list, got '123'"),
    ("trials = 3", "trials is for tpe/random searches"),
    ('objective = "fid"', "objective must be a table"),
    ('objective = { metric = "fid" }', "unknown metric 'fid'; did you mean 'fid_proxy'?"),
    ("n_eval = 3", "n_eval must be in [4, 100000]"),
    ('name = "other"', "a study's name is its file name, 'tiny'"),
    ("saturation_window = 100", "divergence_window"),
    ("collapse_window = -1", "collapse_window must be in [0, 1000]"),
])
def test_every_top_level_key_is_checked(tmp_path, line, fragment):
    path = write_study(tmp_path)
    key = line.split(" = ")[0]
    lines = [x for x in path.read_text().splitlines() if not x.startswith(f"{key} = ")]
    path.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(ConfigError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}: ") and fragment in str(error.value)


def test_precedence_is_variant_then_config_then_budget_then_command_line(tmp_path):
    path = write_study(tmp_path)
    moved = path.read_text().replace("epochs = 1\nbatch_size = 200\n", "").replace(
        "log_every = 5", "log_every = 5\nepochs = 3\nbatch_size = 32\ndropout = 0.1")
    path.write_text(moved)
    spec = load_spec(path)
    assert (spec.epochs, spec.batch_size) == (3, 32) and "epochs" not in spec.config
    from gansweep.variants import get_variant

    config = get_variant("gan").config(**spec.changes({"variant": "gan", "lr": 1e-3, "seed": 0}))
    assert (config.epochs, config.batch_size, config.dropout, config.lr) == (3, 32, 0.1, 1e-3)
    assert config.betas == get_variant("gan").config().betas  # untouched: the variant's default
    assert StudyOptions(epochs=7).apply(spec).epochs == 7


# -- every CLI option: zero, negative, string, NaN, absurd --------------------------------------------------------

TRAIN_BAD = {
    "--epochs": ["0", "-1", "x", "nan", "10000000"],
    "--batch-size": ["0", "-1", "x", "nan", "5000", "100000000"],
    "--lr": ["0", "-1", "x", "nan", "inf", "1e9"],
    "--lr-g": ["0", "-1", "x", "nan", "inf"],
    "--lr-d": ["0", "-1", "x", "nan", "inf"],
    "--dropout": ["-1", "1", "x", "nan", "1e9"],
    "--label-smoothing": ["-1", "0.9", "x", "nan", "inf"],
    "--n-critic": ["0", "-1", "x", "nan", "1000000"],
    "--seed": ["-1", "x", "nan", "99999999999"],
    "--n-eval": ["0", "1", "-1", "x", "1000000000"],
    "--device": ["0", "x", "gpu"],
    "--dataset": ["0", "x", ""],
    "--experiment": [""],
    "--store": [""],
    "--tracking-uri": ["", "x", "file:///tmp/mlruns"],
}


@pytest.mark.parametrize("option, value", [(o, v) for o, vs in TRAIN_BAD.items() for v in vs])
def test_every_train_option_refuses_bad_values_before_creating_anything(here, option, value):
    assert_refused(invoke("train", "gan", option, value))
    assert not (here / "mlruns").exists()


STUDY_BAD = {
    "--epochs": ["0", "-1", "x", "nan", "10000000"],
    "--trials": ["0", "-1", "x", "nan", "10000000"],
    "--seeds": ["", "x", "nan", "0.5", "-1", "99999999999", "0,0"],
    "--variant": ["0", "x", "", "cgan"],  # cgan: registered, not one of the study's
    "--dataset": ["0", "x", ""],
    "--device": ["0", "x"],
    "--store": [""],
    "--storage": [""],
    "--experiment": [""],
    "--population": ["0", "-1", "x", "nan", "1.5", "", "100000"],
}


@pytest.mark.parametrize("option, value", [(o, v) for o, vs in STUDY_BAD.items() for v in vs])
def test_every_study_option_refuses_bad_values_before_creating_anything(here, option, value):
    assert_refused(invoke("study", "tiny", option, value))
    assert not (here / "mlruns").exists() and trial_count(here) == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A store holding one finished one-epoch trial of the tiny study."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("GANSWEEP_STORE", raising=False)
        outcome = run_study(load_spec(write_study(folder)), StudyOptions(trials=1, device="cpu", progress=False))
    return folder, outcome.table["run_id"][0]


READ_BAD = [
    ["sample", "{run}", "--n", "0"], ["sample", "{run}", "--n", "-1"], ["sample", "{run}", "--n", "x"],
    ["sample", "{run}", "--n", "100000000"], ["sample", "{run}", "--label", "3"], ["sample", "{run}", "--seed", "-1"],
    ["sample", "{run}", "--seed", "x"], ["sample", "nope"], ["sample", "{run}", "--checkpoint", "x"],
    ["interpolate", "{run}", "--steps", "0"], ["interpolate", "{run}", "--steps", "1"],
    ["interpolate", "{run}", "--steps", "x"], ["interpolate", "{run}", "--steps", "100000"],
    ["interpolate", "{run}", "--pairs", "0"], ["interpolate", "{run}", "--pairs", "-1"],
    ["interpolate", "{run}", "--pairs", "100000"], ["interpolate", "{run}", "--seed", "-1"],
    ["evaluate", "{run}", "--n", "0"], ["evaluate", "{run}", "--n", "1"], ["evaluate", "{run}", "--n", "x"],
    ["evaluate", "{run}", "--n", "1000000000"], ["evaluate", "{run}", "--device", "x"], ["evaluate", "nope"],
    ["export", "--study", "tiny", "--format", "x"], ["export", "--study", "tiny", "--metrics", "x"],
    ["export", "--study", "tiny", "--group-by", "x"], ["export", "--study", "nope"], ["export"],
    ["export", "--study", "it's"], ["export", "--study", "tiny", "--sort", "x"],
    ["export", "--study", "tiny", "--sort", "-"], ["export", "--study", "tiny", "--sort", ""],
    ["export", "--study", "tiny", "--columns", "x"], ["export", "--study", "tiny", "--columns", "run_id,0"],
    ["export", "--study", "tiny", "--columns", ","], ["export", "--study", "tiny", "--columns", "trial,trial"],
    ["export", "--study", "tiny", "--group-by", "lr,lr"], ["export", "--study", "tiny", "--group-by", ""],
    ["export", "--study", "tiny", "--metrics", ""], ["export", "--study", "tiny", "--metrics", " , "],
    ["export", "--study", "tiny", "--tracking-uri", "bogus://x"], ["report", "tiny", "--tracking-uri", "bogus://x"],
    ["export", "--study", "tiny", "--tracking-uri", "http://127.0.0.1:9"],
    ["export", "--study", "tiny", "--tracking-uri", "postgresql://nobody@127.0.0.1:9/x"],
    ["sample", "0", "--n", "4"], ["sample", "-1"], ["sample", "x" * 100], ["report", "nope"], ["report", "it's"],
    ["ui", "--port", "0"], ["ui", "--port", "-1"], ["ui", "--port", "x"], ["ui", "--port", "70000"],
    ["ui", "--workers", "0"], ["sample", "tiny", "--best", "--store", ""],
    # -o inside a file (the study file): its folders could not be made
    ["export", "--study", "tiny", "-o", "studies/tiny.toml/x.csv"],
    ["sample", "{run}", "-o", "studies/tiny.toml/x.png"],
    ["interpolate", "{run}", "-o", "studies/tiny.toml/x.png"], ["report", "tiny", "-o", "studies/tiny.toml/sub"],
]


@pytest.mark.parametrize("args", READ_BAD, ids=" ".join)
def test_every_reading_command_refuses_bad_values(finished, monkeypatch, args):
    folder, run = finished
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_refused(invoke(*[a.format(run=run) for a in args]))


@pytest.mark.parametrize("command", [["export", "--study", "tiny"], ["report", "tiny"], ["sample", "tiny", "--best"],
                                     ["evaluate", "tiny", "--best"], ["ui"]])
def test_a_reading_command_refuses_a_store_that_does_not_exist_and_creates_none(here, command):
    assert_refused(invoke(*command), "no store at", "gansweep study NAME")
    assert not (here / "mlruns").exists()


# -- a finished study asked for something else ------------------------------------------------------------------

def test_a_study_asked_for_another_budget_says_so_and_how_to_run_it(here):
    assert invoke("study", "tiny", "--device", "cpu", "--trials", "1").exit_code == 0
    before = trial_count(here)
    result = invoke("study", "tiny", "--device", "cpu", "--epochs", "2")
    assert_refused(result, "was run with epochs 1, now asked for 2", "--fresh")
    assert trial_count(here) == before


def test_another_experiment_never_hides_a_study(here):
    assert invoke("study", "tiny", "--device", "cpu", "--trials", "1").exit_code == 0
    assert_refused(invoke("study", "tiny", "--device", "cpu", "--experiment", "other"),
                   "is in experiment 'tiny'", "--fresh")
    client = MlflowClient(resolve_store().tracking_uri)
    assert client.get_experiment_by_name("other") is None
    exported = invoke("export", "--study", "tiny", "--format", "csv")
    assert exported.exit_code == 0 and len(exported.output.strip().splitlines()) == 2  # header and the one trial


# -- bounded retries ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("population", ["1", "2"])
def test_a_point_that_keeps_failing_is_retried_a_bounded_number_of_times(here, monkeypatch, population):
    """Training that fails (here: a disk that refuses the checkpoint) makes every point fail; each is tried
    1 + RETRIES times, then left failed, and the study ends with exit code 1 and a summary line. Trained two
    at a time, a population's failure is each of its members'."""
    import gansweep.runs

    def refuse(*args, **kwargs):
        raise GansweepError("no space left for the checkpoint")

    monkeypatch.setattr(gansweep.runs, "train_population", refuse)
    result = CliRunner().invoke(main, ["study", "tiny", "--device", "cpu", "--population", population])
    assert result.exit_code == 1, result.output
    assert "2 point(s) failed" in result.output and "no space left for the checkpoint" in result.output
    assert "failed 3 time(s)" in result.output

    storage = resolve_store().optuna()
    done = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert len(done) == 2 * (1 + RETRIES) and all(t.state == TrialState.FAIL for t in done)
    assert all(t.user_attrs["reason"] == "no space left for the checkpoint" for t in done)
    client = MlflowClient(resolve_store().tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    children = [r for r in runs if r.data.tags["gansweep.role"] == "trial"]
    assert len(children) == len(done) and all(r.info.status == "FAILED" for r in children)
    (parent,) = [r for r in runs if r.data.tags["gansweep.role"] == "parent"]
    assert parent.info.status == "FAILED"

    monkeypatch.undo()
    monkeypatch.chdir(here)
    again = run_study(load_spec(here / "studies" / "tiny.toml"), StudyOptions(device="cpu", progress=False))
    assert again.ran == 2 and not again.failed  # retried afresh once the cause is gone


def test_a_bug_in_a_trial_is_recorded_as_failed_and_shown_in_full(here, monkeypatch):
    import gansweep.runs

    def bug(*args, **kwargs):
        raise RuntimeError("an unexpected bug")

    monkeypatch.setattr(gansweep.runs, "train_population", bug)
    with pytest.raises(RuntimeError, match="an unexpected bug"):
        run_study(load_spec(here / "studies" / "tiny.toml"), StudyOptions(device="cpu", progress=False))
    (trial,) = optuna.load_study(study_name="tiny", storage=resolve_store().optuna()).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "RuntimeError: an unexpected bug"
    client = MlflowClient(resolve_store().tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]  # the trial's run and the parent


# -- fuzz: anything a study file can hold is refused in one line or makes trials that can all start ----------------

VALUES = st.one_of(st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=5), st.booleans(), st.lists(st.integers(-2, 70), max_size=3),
                   st.lists(st.floats(-1, 2), max_size=3), st.dictionaries(st.sampled_from(["low", "high", "log"]),
                                                                           st.floats(-1, 2), max_size=3))
KEYS = ["epochs", "batch_size", "seeds", "best_seeds", "trials", "n_eval", "collapse_window", "sampler", "pruner",
        "dataset", "variants", "objective", "budget_unit", "config.lr", "config.hidden", "config.dropout",
        "config.n_critic", "config.label_smoothing", "config.epochs", "config.betas", "config.seed",
        "space.lr", "space.dropout", "space.n_critic", "space.label_smoothing", "space.beta1", "space.batch_size"]


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_fuzzed_study_files_are_refused_in_one_line_or_every_point_can_start(tmp_path, changes):
    from gansweep.data import get_source
    from gansweep.trainer import g_steps_per_epoch
    from gansweep.variants import get_variant

    top = {k: v for k, v in changes.items() if "." not in k}
    config = {k.split(".")[1]: v for k, v in changes.items() if k.startswith("config.")}
    space = {k.split(".")[1]: v for k, v in changes.items() if k.startswith("space.")}
    lines = [line for line in STUDY.format(top="", config="").splitlines()
             if line.split(" = ")[0] not in top and line.split(" = ")[0] not in config]
    text = "\n".join(lines).replace("[config]", "\n".join(f"{k} = {_toml(v)}" for k, v in top.items()) + "\n[config]")
    text = text.replace("[space]", "\n".join(f"{k} = {_toml(v)}" for k, v in config.items()) + "\n[space]")
    text += "\n".join(f"{k} = {_toml(v)}" for k, v in space.items() if k != "lr") + "\n"
    if "lr" in space:
        text = text.replace("lr = [1e-4, 1e-3]", f"lr = {_toml(space['lr'])}")
    path = tmp_path / "studies" / "tiny.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    try:
        spec = load_spec(path)
    except ConfigError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    points = spec.grid_points() if spec.sampler == "grid" else [
        {"variant": v, **{k: (r["low"] if isinstance(r, dict) else r[0]) for k, r in spec.space.items()},
         "seed": spec.seeds[0]} for v in spec.variants]
    for point in points:
        config = get_variant(point["variant"]).config(**spec.changes(point))
        g_steps_per_epoch(config, get_source(spec.dataset).n_train)


# -- a read-only store is read by every reading command -----------------------------------------------------------

def _read_only(folder, cwd, command):
    """Run `gansweep COMMAND` with `folder` read-only: a read-only bind mount in a private mount namespace when
    running as root (whom file modes do not stop), else file modes."""
    import os
    import subprocess
    import sys

    cli = [sys.executable, "-m", "gansweep", *command]
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            return subprocess.run(cli, cwd=cwd, capture_output=True, text=True, timeout=600)
        finally:
            for p in paths:
                p.chmod(modes[p])
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && ! touch "$0/.probe" 2>/dev/null && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), *cli], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _snapshot(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [
    ["export", "--study", "tiny", "--format", "csv"],
    ["report", "tiny", "-o", "{out}/report"],
    ["sample", "tiny", "--best", "-o", "{out}/grid.png"],
    ["interpolate", "{run}", "-o", "{out}/lines.png"],
    ["evaluate", "{run}", "--n", "200", "--device", "cpu"],
])
def test_a_read_only_store_is_read_by_every_reading_command(finished, tmp_path, command):
    import os
    import shutil

    folder, run = finished
    if os.geteuid() == 0 and not shutil.which("unshare"):
        pytest.skip("running as root without unshare(1): no way to make the store read-only")
    store = folder / "mlruns"
    before = _snapshot(store)
    result = _read_only(store, tmp_path, [a.format(run=run, out=tmp_path) for a in command] + ["--store", store])
    if result.returncode != 0 and "mount" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"no read-only mount here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _snapshot(store) == before  # nothing written, nothing changed
    if command[0] == "report":
        assert "read-only: not logged" in result.stdout and (tmp_path / "report" / "report.html").is_file()
    if command[0] == "export":
        assert len(result.stdout.strip().splitlines()) == 2


def test_a_read_only_store_refuses_what_would_write_it(finished, tmp_path):
    folder, run = finished
    store = folder / "mlruns"
    result = _read_only(store, tmp_path, ["evaluate", run, "--n", "200", "--device", "cpu", "--log",
                                          "--store", str(store)])
    if "mount" in result.stderr and "Error" not in result.stderr:
        pytest.skip(f"no read-only mount here: {result.stderr.strip()}")
    assert result.returncode == 2 and "cannot be written" in result.stderr, result.stderr
    result = _read_only(store, tmp_path, ["report", "tiny", "--store", str(store)])
    assert result.returncode == 2 and "read-only; give the report a folder with -o DIR" in result.stderr


def test_an_unreachable_storage_is_refused_before_anything_is_created(here):
    assert_refused(invoke("study", "tiny", "--device", "cpu", "--storage", "postgresql://nobody@127.0.0.1:9/x"),
                   "cannot open the Optuna storage postgresql://nobody@127.0.0.1:9/x")
    assert not (here / "mlruns").exists()


@pytest.mark.parametrize("uri", ["bogus://x", "http://127.0.0.1:9", "postgresql://nobody@127.0.0.1:9/x"])
def test_an_unusable_tracking_uri_is_refused_before_anything_is_created(here, uri):
    """A scheme MLflow has no store for, or a server that refuses: one line, not MLflow's minutes of retries."""
    assert_refused(invoke("study", "tiny", "--device", "cpu", "--tracking-uri", uri),
                   f"cannot use the MLflow tracking URI {uri}")
    assert not (here / "mlruns").exists()


OPTION_VALUES = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e300", "", " ", "x", "0.5", "2",
                                           "1e-3", "99999999999"]), st.text(max_size=4),
                          st.integers(-5, 10**12).map(str), st.floats(allow_nan=True).map(str))
TRAIN_OPTIONS = ["--epochs", "--batch-size", "--lr", "--lr-g", "--lr-d", "--dropout", "--label-smoothing",
                 "--n-critic", "--seed", "--n-eval", "--device", "--dataset", "--experiment"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(TRAIN_OPTIONS), value=OPTION_VALUES)
def test_fuzzed_train_options_end_in_one_line_or_a_finished_run(here, option, value):
    """Whatever one option holds, `gansweep train` either refuses it in one line (exit 2, nothing created) or
    trains a short run to its end (exit 0, or 1 when it diverged): never a traceback, never a RUNNING run."""
    assume(not (option == "--epochs" and value.strip().isdigit() and int(value) > 2))  # valid, and long
    budget = {"--epochs": "1", "--batch-size": "2000", "--n-eval": "200", "--device": "cpu"}
    budget.pop(option, None)
    args = [a for pair in budget.items() for a in pair]
    store = here / f"store-{abs(hash((option, value)))}"
    result = invoke("train", "gan", *args, option, value, "--store", store)
    if result.exit_code == 2:
        assert_refused(result)
        assert not store.exists()
        return
    assert result.exit_code in (0, 1) and result.exception is None or isinstance(result.exception, SystemExit), \
        result.output
    client = MlflowClient(resolve_store(str(store)).tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
