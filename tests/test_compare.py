"""Comparison: export tables, the study report, sampling and interpolation, all read back from a real store."""

import base64
import io
import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image

from gansweep.cli import main
from gansweep.config import DataConfig
from gansweep.errors import ConfigError
from gansweep.export import comparison_table, find_runs, group_table, render
from gansweep.report import write_report
from gansweep.spec import load_spec
from gansweep.study import StudyOptions, run_study
from gansweep.store import resolve_store

STUDY = """
name = "small"
description = "two learning rates of a tiny conditional MLP GAN, two seeds"
variants = ["cgan"]
epochs = 2
batch_size = 200
n_eval = 200
seeds = [0, 1]

[config]
hidden = [32]
z_dim = 8
n_samples = 20
log_every = 5

[space]
lr = [1e-4, 1e-3]
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def study_store(tmp_path_factory, mnist5k_classifier):
    """A finished four-trial study in its own working directory, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "studies").mkdir()
        (root / "studies" / "small.toml").write_text(STUDY)
        run_study(load_spec(root / "studies" / "small.toml"), StudyOptions(device="cpu", progress=False))
        yield root


@pytest.fixture
def in_store(study_store, monkeypatch):
    monkeypatch.chdir(study_store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return study_store


def test_export_round_trips_against_mlflow(in_store):
    result = invoke("export", "--study", "small", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    client = MlflowClient(resolve_store().tracking_uri)
    runs, parent, _ = find_runs(client, study="small")
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {r.info.run_id for r in runs}
    for row in rows:
        run = client.get_run(row["run_id"])
        chosen = client.get_metric_history(row["run_id"], "score/fid_proxy")  # the validation slice
        reported = {m.step: m.value for m in client.get_metric_history(row["run_id"], "test/fid_proxy")}
        best = min(chosen, key=lambda m: m.value)
        assert row["fid_proxy"] == reported[2]
        assert row["fid_proxy_best"] == reported[best.step] and row["fid_proxy_best_epoch"] == best.step
        assert row["lr"] == float(run.data.params["swept.lr"]) and row["seed"] == int(run.data.tags["gansweep.seed"])
        assert row["trial"] == int(run.data.tags["gansweep.trial"]) and row["variant"] == "cgan"
        assert row["status"] == "finished" and row["epochs"] == 2
        assert row["cond_accuracy"] == run.data.metrics["test/cond_accuracy"]
        assert row["fid_proxy_se"] == run.data.metrics["test_se/fid_proxy"] > 0
        assert row["wall_s"] == run.data.metrics["perf/wall_time_s"] and row["images_per_s"] > 0
    assert [r["fid_proxy"] for r in rows] == sorted(r["fid_proxy"] for r in rows)  # the objective, best first


def _cells(md: str) -> tuple[list[str], list[list[str]], str]:
    header, rule, *lines = md.strip().splitlines()
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return split(header), [split(line) for line in lines], rule


def test_markdown_and_latex_are_ready_to_paste(in_store):
    md = invoke("export", "--study", "small", "--format", "md", "--metrics", "fid_proxy").output
    header, rows, rule = _cells(md)
    # a page's columns by default: who, what was swept, the final score, how it ended
    assert header == ["trial", "variant", "lr", "seed", "fid_proxy", "status", "epochs", "run_id"]
    assert len(rows) == 4 and set(rule.replace("|", "").replace(" ", "")) <= {"-", ":"}
    fid = [float(r[header.index("fid_proxy")]) for r in rows]
    assert fid == sorted(fid)  # the study's objective, best (lowest) first
    assert all(len(r[header.index("fid_proxy")].replace(".", "").lstrip("0")) <= 4 for r in rows)  # 4 digits
    assert {r[header.index("lr")] for r in rows} == {"1e-4", "1e-3"}  # one style for the whole column
    assert rule.split("|")[header.index("fid_proxy") + 1].strip().endswith(":")  # numbers right-aligned
    everything = _cells(invoke("export", "--study", "small", "--format", "md", "--metrics", "fid_proxy",
                               "--columns", "run_id,fid_proxy,fid_proxy_best_epoch", "--sort", "-fid_proxy").output)
    assert everything[0] == ["run_id", "fid_proxy", "fid_proxy_best_epoch"]
    assert [float(r[1]) for r in everything[1]] == sorted(fid, reverse=True)
    latex = invoke("export", "--study", "small", "--format", "latex", "--metrics", "fid_proxy").output
    assert "\\toprule" in latex and "fid\\_proxy" in latex and latex.count("\\\\") == 5
    assert "\\begin{tabular}{rlrrrlrl}" in latex  # numeric columns right-aligned, text left
    for bad in (["--sort", "nope"], ["--columns", "run_id,nope"]):
        result = invoke("export", "--study", "small", *bad)
        assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output


def test_numbers_keep_one_plain_format_per_column():
    from gansweep.export import render

    table = pd.DataFrame({"lr": [1e-4, 3e-4, 1e-3], "images": [132800.0, 5000.0, 64.0],
                          "big": [132800.0, 250000.0, 10000.0], "fid": [301.234, 45.6789, 1.5],
                          "recall": [0.0, 6e-3, 2.5e-3]})
    header, rows, _ = _cells(render(table, "md"))
    assert [r[0] for r in rows] == ["1e-4", "3e-4", "1e-3"]
    assert [r[4] for r in rows] == ["0", "6e-3", "2.5e-3"]  # never 0e0
    assert [r[1] for r in rows] == ["132800", "5000", "64"]  # never 1.328e+05
    assert [r[2] for r in rows] == ["132800", "250000", "10000"]
    assert [r[3] for r in rows] == ["301.2", "45.68", "1.5"]


def test_figures_write_a_swept_value_as_the_tables_and_run_names_do():
    from gansweep.figures import label

    row = pd.Series({"trial": 3, "variant": "gan", "lr": 1e-4, "seed": 0, "fid_proxy": 12.345, "status": "finished"})
    assert label(row, "lr", "fid_proxy") == "#3 gan lr=1e-4 s0\nfid_proxy 12.3"  # not lr=0.0001


def test_the_study_s_printed_table_writes_numbers_as_export_does():
    from gansweep.study_table import format_table

    table = pd.DataFrame({"trial": [0, 1], "lr": [3e-5, 3e-4], "fid_proxy": [16059.2, math.nan],
                          "status": ["finished", "interrupted"], "run_id": ["a" * 32, "b" * 32]})
    header, *rows = [line.split() for line in format_table(table).splitlines()]
    assert header == ["trial", "lr", "fid_proxy", "status", "run"]
    assert rows == [["0", "3e-5", "16059", "finished", "aaaaaaaa"], ["1", "3e-4", "-", "interrupted", "bbbbbbbb"]]
    assert [r[1:3] for r in _cells(render(table, "md"))[1]] == [["3e-5", "16059"], ["3e-4", ""]]


def test_grouped_export_on_a_hand_made_store(tmp_path):
    """Four runs made by hand: variant a at lr 0.1 with fid 1 and 3 (standard errors 0.3 and 0.4), at lr 0.2
    with 5 (0.5); variant b with 10 and no standard error, as an earlier gansweep's run."""
    uri = f"sqlite:///{tmp_path}/hand.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("hand")
    runs = [("a", 0.1, 1.0, 0.3), ("a", 0.1, 3.0, 0.4), ("a", 0.2, 5.0, 0.5), ("b", 0.1, 10.0, None)]
    for seed, (variant, lr, fid, se) in enumerate(runs):
        run = client.create_run(experiment)
        errors = [] if se is None else [Metric("test_se/fid_proxy", 9.0, 0, 1), Metric("test_se/fid_proxy", se, 0, 2),
                                        Metric("se/fid_proxy", 8.0, 0, 2)]
        client.log_batch(run.info.run_id, metrics=[Metric(f"{s}/fid_proxy", fid + 7, 0, 1) for s in ("score", "test")]
                         + [Metric(f"{s}/fid_proxy", fid, 0, 2) for s in ("score", "test")] + errors,
                         params=[Param("swept.lr", str(lr))],
                         tags=[RunTag("gansweep.variant", variant), RunTag("gansweep.seed", str(seed))])
    table = comparison_table(client, find_runs(client, experiment="hand")[0], ["fid_proxy"])
    by_fid = table.set_index("fid_proxy")["fid_proxy_se"]  # the final test value's own error, not validation's
    assert by_fid[1.0] == 0.3 and by_fid[3.0] == 0.4 and by_fid[5.0] == 0.5 and math.isnan(by_fid[10.0])
    grouped = group_table(table, ["variant", "lr"], ["fid_proxy"])
    expected = pd.DataFrame({"variant": ["a", "a", "b"], "lr": [0.1, 0.2, 0.1], "n": [2, 1, 1],
                             "not_finished": [2, 1, 1], "fid_proxy_n": [2, 1, 1],
                             "fid_proxy_mean": [2.0, 5.0, 10.0], "fid_proxy_std": [math.sqrt(2), math.nan, math.nan],
                             "fid_proxy_se": [math.sqrt(0.3 ** 2 + 0.4 ** 2) / 2, 0.5, math.nan]})
    pd.testing.assert_frame_equal(grouped, expected)  # hand-made runs have no gansweep status: not finished
    result = invoke("export", "--experiment", "hand", "--group-by", "variant,lr", "--metrics", "fid_proxy",
                    "--format", "csv", "--tracking-uri", uri)
    assert result.output.splitlines()[0] == \
        "variant,lr,n,not_finished,fid_proxy_n,fid_proxy_mean,fid_proxy_std,fid_proxy_se"
    assert result.output.splitlines()[1].startswith("a,0.1,2,2,2,2.0,1.414")  # sorted by the mean, best first
    assert [line.split(",")[3 + 2] for line in result.output.splitlines()[1:]] == ["2.0", "5.0", "10.0"]


def test_a_point_run_again_shows_only_its_latest_run(tmp_path):
    """Hand-made trial runs: lr 0.1 interrupted as trial 0, then finished as trial 2 in a new run; lr 0.2 lost
    as trial 1 and not yet run again; lr 0.3 finished as trial 3; lr 0.1 of another study interrupted as trial 1.
    The table leaves out trial 0 alone, and says so; the run stays in MLflow."""
    uri = f"sqlite:///{tmp_path}/hand.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("hand")
    made = {}
    for study, trial, lr, status in [("s", 0, 0.1, "interrupted"), ("s", 1, 0.2, "lost"), ("s", 2, 0.1, "finished"),
                                     ("s", 3, 0.3, "finished"), ("other", 1, 0.1, "interrupted")]:
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id,
                         metrics=[Metric(f"{s}/fid_proxy", 10 * lr, 0, 1) for s in ("score", "test")],
                         params=[Param("swept.lr", str(lr))],
                         tags=[RunTag(k, v) for k, v in (
                             ("gansweep.optuna_study", study), ("gansweep.trial", str(trial)),
                             ("gansweep.variant", "gan"), ("gansweep.seed", "0"), ("gansweep.status", status))])
        made[study, trial] = run.info.run_id
    found = find_runs(client, experiment="hand")
    assert found.replaced == 1
    assert sorted(r.info.run_id for r in found.runs) == sorted(v for k, v in made.items() if k != ("s", 0))
    assert client.get_run(made["s", 0]).info.status == "RUNNING"  # as it was made: nothing changed in the store
    table = comparison_table(client, found.runs, ["fid_proxy"])
    assert sorted(zip(table["trial"], table["lr"], table["status"])) == [
        (1, 0.1, "interrupted"), (1, 0.2, "lost"), (2, 0.1, "finished"), (3, 0.3, "finished")]
    result = invoke("export", "--experiment", "hand", "--group-by", "lr", "--metrics", "fid_proxy,recall",
                    "--format", "csv", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    assert "1 run(s) that stopped early and whose point was run again are left out" in result.stderr
    assert "no run here has recall, so the table has no column for it" in result.stderr
    rows = [line.split(",") for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["lr", "n", "not_finished"]
    assert {(r[0], r[1], r[2]) for r in rows[1:]} == {("0.1", "2", "1"), ("0.2", "1", "1"), ("0.3", "1", "0")}


def test_the_best_epoch_is_chosen_on_validation_and_its_test_score_reported(tmp_path):
    """Validation fid 5, 3, 4 and test fid 6, 4.5, 3.9 over three epochs: the best epoch is 2 (validation), and
    the table reports 4.5 there, not the test slice's own minimum 3.9, which is the final value."""
    client = MlflowClient(f"sqlite:///{tmp_path}/hand.db")
    experiment = client.create_experiment("hand")
    run = client.create_run(experiment)
    client.log_batch(run.info.run_id, metrics=[
        Metric(f"{s}/fid_proxy", v, 0, epoch) for s, values in (("score", (5, 3, 4)), ("test", (6, 4.5, 3.9)))
        for epoch, v in enumerate(values, 1)])
    (row,) = comparison_table(client, find_runs(client, experiment="hand")[0], ["fid_proxy"]).to_dict("records")
    assert (row["fid_proxy"], row["fid_proxy_best"], row["fid_proxy_best_epoch"]) == (3.9, 4.5, 2)


def test_export_refuses_bad_input_in_one_line(in_store):
    for args, message in [(["--study", "nope"], "no study 'nope'"), (["--study", "smal"], "did you mean 'small'?"),
                          (["--study", "zzzz"], "it holds small"), ([], "exactly one of"),
                          (["--study", "small", "--group-by", "colour"], "cannot group by colour"),
                          (["--study", "small", "--metrics", "fid"], "unknown score 'fid'")]:
        result = invoke("export", *args)
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_report_writes_the_page_and_logs_it_to_the_parent(in_store, tmp_path):
    out = tmp_path / "report"
    outcome = write_report(resolve_store(), "small", out)
    page = (out / "report.html").read_text()
    # self-contained: every picture is in the page itself, byte for byte the file written beside it
    sources = __import__("re").findall(r'src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/") for src in sources)
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in sources]
    for name in ("sensitivity.png", "scores.png", "losses.png", "contact_sheet.png", "best.gif"):
        assert (out / name).read_bytes() in embedded, name
    assert Image.open(out / "sensitivity.png").size == (700, 420)
    assert Image.open(out / "best.gif").n_frames == 2
    for picture in embedded:
        Image.open(io.BytesIO(picture)).verify()
    grids = json.loads(page.split("const grids = ")[1].split(";\n")[0])
    assert len(grids) == 4 and all(len(g["frames"]) == len(g["captions"]) == 2 for g in grids.values())
    client = MlflowClient(resolve_store().tracking_uri)
    for run_id8, grid in grids.items():  # the slider's captions follow the epoch, with that epoch's test score
        (run,) = [r for r in find_runs(client, study="small")[0] if r.info.run_id.startswith(run_id8)]
        scores = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/fid_proxy")}
        assert [c.rsplit("fid_proxy ", 1)[1] for c in grid["captions"]] == [f"{scores[e]:.3g}" for e in (1, 2)]
        assert [c.split(", epoch ")[1].split(":")[0] for c in grid["captions"]] == ["1", "2"]
    # both pages show the table export prints, in its order: best first, its columns
    md_header, md_rows, _ = _cells((out / "report.md").read_text().split("\n\n")[2])
    exported_header, exported_rows, _ = _cells(invoke("export", "--study", "small", "--format", "md").stdout)
    assert (md_header, md_rows) == (exported_header, exported_rows) and "run_id" in md_header
    assert all(f"<th>{name}</th>" in page for name in exported_header)
    logged = {a.path for a in client.list_artifacts(outcome.parent_run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/sensitivity.png"} <= logged
    again = invoke("report", "small", "-o", out)
    assert again.exit_code == 2 and "not empty" in again.output


def test_the_report_draws_losses_against_images_seen_and_each_loss_on_its_own_axes(in_store, tmp_path):
    from gansweep.report import _by_loss, _images_per_step

    client = MlflowClient(resolve_store().tracking_uri)
    runs = find_runs(client, study="small")[0]
    table = comparison_table(client, runs, ["fid_proxy"])
    assert _images_per_step(runs) == {r.info.run_id: 200.0 for r in runs}  # batch 200, one D step per G step
    assert _by_loss(runs, table) == {}  # one loss: one row of axes
    other = MlflowClient(f"sqlite:///{tmp_path}/mixed.db")
    experiment = other.create_experiment("mixed")
    made = {}
    for loss in ("wasserstein", "non-saturating", "wasserstein"):
        run = other.create_run(experiment)
        other.log_param(run.info.run_id, "loss", loss)
        made[run.info.run_id] = loss
    mixed = other.search_runs([experiment])
    groups = _by_loss(mixed, pd.DataFrame({"run_id": list(made)}))
    assert groups == {f"{loss} loss": [rid for rid, other_loss in made.items() if other_loss == loss]
                      for loss in ("wasserstein", "non-saturating")}


def test_sample_and_interpolate_from_the_best_trial(in_store, tmp_path):
    from gansweep.generate import best_run

    client = MlflowClient(resolve_store().tracking_uri)
    table = comparison_table(client, find_runs(client, study="small")[0], ["fid_proxy"])
    best = table.sort_values("fid_proxy").iloc[0]["run_id"]
    sampled = invoke("sample", "small", "--best", "--n", "20", "-o", tmp_path / "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert f"the best finished trial of small: run {best_run(client.tracking_uri, 'small')}" in sampled.output
    assert Image.open(tmp_path / "s.png").size == (10 * 30 + 2, 2 * 30 + 2)  # one column per class
    path = tmp_path / "i.png"
    result = invoke("interpolate", best[:8], "--steps", "5", "--pairs", "3", "-o", path)  # as tables print it
    assert result.exit_code == 0, result.output
    assert Image.open(path).size == (5 * 30 + 2, 6 * 30 + 2)  # conditional: 3 noise rows and 3 class rows
    assert invoke("interpolate", best, "-o", path).exit_code == 2  # never overwritten
    for ref, says in (("0000abcd", "no run id begins with '0000abcd'"), ("xyz", "its name and --best"),
                      ("", "is not a run id")):
        refused = invoke("sample", ref, "-o", tmp_path / "never.png")
        assert refused.exit_code == 2 and says in refused.output and "Traceback" not in refused.output, ref
    assert not (tmp_path / "never.png").exists()


def test_render_html_has_no_index(in_store):
    client = MlflowClient(resolve_store().tracking_uri)
    table = comparison_table(client, find_runs(client, study="small")[0], ["fid_proxy"])
    page = render(table, "html")
    assert page.count("</tr>") == 5 and "<th>run_id</th>" in page and "<th></th>" not in page


def _browser():
    """Headless Chromium through Selenium, or the reason it cannot run here."""
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return None, "no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options), ""


def _wait_for(predicate, timeout=90.0, every=0.5):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout} s")


def test_the_mlflow_ui_shows_the_study_in_a_real_browser(in_store, tmp_path):
    """`gansweep ui` on the study's store, driven by headless Chromium: the parent run and its children are
    listed, the link a study prints sorts them by the objective, a child run shows its loss metrics and its
    sample-grid artifact, and the report logged to the parent shows every picture when MLflow serves it."""
    import socket
    import subprocess
    import sys
    import urllib.request

    from gansweep.run_table import experiment_url, view_key

    browser, reason = _browser()
    if browser is None:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By  # after the skip: without selenium the test says why
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gansweep", "ui", "--port", str(port)], cwd=in_store,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        _wait_for(up, timeout=120)
        client = MlflowClient(resolve_store().tracking_uri)
        runs, parent, _ = find_runs(client, study="small")
        experiment = parent.info.experiment_id
        # the link a study prints: sorted by the objective, best first, with the objective and the swept value
        # as columns, each run showing its score
        browser.get(experiment_url("127.0.0.1", port, experiment, view_key("small")))
        _wait_for(lambda: "Sort: score/fid_proxy" in browser.find_element(By.TAG_NAME, "body").text)
        shown = str(runs[0].data.metrics["score/fid_proxy"])
        _wait_for(lambda: shown in browser.find_element(By.TAG_NAME, "body").text)
        text = browser.find_element(By.TAG_NAME, "body").text
        by_score = sorted(runs, key=lambda r: r.data.metrics["score/fid_proxy"])
        assert [text.index(r.info.run_name) for r in by_score] == sorted(text.index(r.info.run_name) for r in runs)
        assert [text.index(str(r.data.metrics["score/fid_proxy"])) for r in by_score] == \
            sorted(text.index(str(r.data.metrics["score/fid_proxy"])) for r in runs)  # each run's score, in order
        headers = {h.text for h in browser.find_elements(By.XPATH, "//*[@role='columnheader']")}
        assert {"score/fid_proxy", "test/fid_proxy", "swept.lr", "seed"} <= headers, headers
        browser.execute_script("window.localStorage.clear()")  # the UI keeps a sort; the plain link nests runs
        browser.get("about:blank")  # a fresh page: the UI does not reload its runs on a change of the hash alone

        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning")

        def parent_link():
            return [a for a in browser.find_elements(By.XPATH, "//a[normalize-space()='small']")
                    if "/runs/" in (a.get_attribute("href") or "")]

        link = _wait_for(parent_link)[0]
        link.find_elements(By.XPATH, "./preceding::*[self::button or @role='button'][1]")[0].click()  # expand
        names = [r.info.run_name for r in runs]
        _wait_for(lambda: all(name in browser.find_element(By.TAG_NAME, "body").text for name in names))
        assert browser.find_element(By.TAG_NAME, "body").text.count("mnist-5k") == 5  # the Dataset column

        write_report(resolve_store(), "small", tmp_path / "report")  # logged under report/ of the parent
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{parent.info.run_id}"
                    f"/artifacts/report/report.html")  # MLflow's artifact view shows the page in a frame
        browser.switch_to.frame(_wait_for(lambda: browser.find_elements(By.TAG_NAME, "iframe"))[0])
        loaded = _wait_for(lambda: browser.execute_script(
            "const i = Array.from(document.images); return i.length && i.every(x => x.complete && x.naturalWidth > 0)"
            " ? i.length : 0"))
        assert loaded == 5 + 4  # the four figures, the best trial's GIF, every trial's grid: all shown
        browser.switch_to.default_content()

        child = runs[0].info.run_id
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{child}")
        _wait_for(lambda: "loss/d" in browser.find_element(By.TAG_NAME, "body").text)
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{child}/artifacts")
        folder = _wait_for(lambda: browser.find_elements(By.XPATH, "//*[normalize-space()='samples']"))
        folder[0].click()
        _wait_for(lambda: "epoch_001.png" in browser.find_element(By.TAG_NAME, "body").text)
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)


def test_stopping_gansweep_ui_stops_the_whole_mlflow_server(in_store):
    """SIGTERM (a scheduler, `kill`) to `gansweep ui` leaves nothing serving the port: MLflow's web server and
    job workers go with it."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "gansweep", "ui", "--port", str(port)], cwd=in_store,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait_for(up, timeout=120)
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        _wait_for(lambda: not up(), timeout=30)
        with socket.socket() as again:  # the port is free: no worker of the old server listens on it
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger
            again.bind(("127.0.0.1", port))
    finally:
        ui.kill()


def test_evaluate_recomputes_the_scores_the_run_logged(in_store):
    """Same checkpoint, same evaluation noise, same N and feature network: the same numbers as during training."""
    client = MlflowClient(resolve_store().tracking_uri)
    run = client.get_run(find_runs(client, study="small")[0][0].info.run_id)
    result = invoke("evaluate", run.info.run_id, "--n", "200", "--device", "cpu", "--parzen", "--log")
    assert result.exit_code == 0, result.output
    logged = client.get_run(run.info.run_id).data.metrics
    for name in ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy"):
        assert logged[f"eval/{name}"] == pytest.approx(run.data.metrics[f"score/{name}"], rel=1e-9, abs=1e-12)
        assert f"{name} " in result.output
    assert math.isfinite(logged["eval/parzen_ll"]) and logged["eval/parzen_ll_stderr"] > 0
    parent = find_runs(client, study="small")[1]
    assert f"{parent.data.metrics['floor/fid_proxy']:.4g}" in result.output  # the floor beside the score
    capped = invoke("evaluate", run.info.run_id, "--n", "100000", "--device", "cpu")  # mnist-5k holds 1,000
    assert capped.exit_code == 0, capped.output
    assert "--n 100000 is more than mnist-5k allows" in capped.stderr and "n=500," in capped.stdout


def test_a_run_logs_what_it_used_and_the_study_its_constants_once(in_store):
    """Params are the fields the variant reads, each once; the data and the source fill MLflow's Dataset and
    Source columns; D's output is named a probability; the floors sit once on the parent."""
    from gansweep.data import load_dataset

    client = MlflowClient(resolve_store().tracking_uri)
    runs, parent, _ = find_runs(client, study="small")
    record = load_dataset(DataConfig(dataset="mnist-5k")).record
    for run in runs:
        params = run.data.params
        assert {"hidden", "z_dim", "dropout", "label_smoothing", "swept.lr", "seed", "variant"} <= set(params)
        # an MLP without clipping, penalty or maxout; lr is swept, lr_g and lr_d unset
        assert not {"width", "clip_value", "gp_weight", "r1_gamma", "maxout_pieces", "lr", "lr_g", "lr_d",
                    "swept.seed", "swept.variant"} & set(params)
        assert "None" not in params.values()
        (used,) = run.inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest) == ("mnist-5k", record.checksum[:8])
        assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "training")]
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.user"]
        assert 0 < run.data.metrics["d_prob/real"] <= 1 and "d/real" not in run.data.metrics
        assert not any(k.startswith("floor") for k in run.data.metrics)
    floor = client.get_metric_history(parent.info.run_id, "floor/fid_proxy")
    assert len(floor) == 1 and floor[0].value > 0
    assert client.get_metric_history(parent.info.run_id, "floor/cond_accuracy")  # a conditional study's too
    # the study's view of the run table: its own runs, best first, the objective and the swept value as columns
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.gansweep-small"])
    optuna_study = parent.data.tags["gansweep.optuna_study"]
    assert view["searchFilter"] == f"tags.`gansweep.optuna_study` = '{optuna_study}'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`score/fid_proxy`", True)
    assert {"metrics.`score/fid_proxy`", "params.`swept.lr`", "params.`seed`"} <= set(view["selectedColumns"])
    matching = client.search_runs([parent.info.experiment_id], view["searchFilter"])  # MLflow's own syntax
    assert {r.info.run_id for r in matching} == {r.info.run_id for r in runs} | {parent.info.run_id}


THREADED_EVALUATION = """
import sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from gansweep.generate import evaluate_run
report = evaluate_run(sys.argv[2], sys.argv[3], device="cpu")
print(repr([sorted(report.scores.items()), sorted(report.test.items()), sorted(report.test_se.items())]))
"""


def test_scores_are_bit_identical_across_thread_counts(in_store):
    """The same checkpoint scored with 1, 2, 5 and 16 threads, each in its own process, gives the same bits on both
    slices and in the standard errors, and they are the bits the run logged during training: scores do not depend
    on how a machine splits its sums (test_metrics holds FID's eigenvalues to that on larger matrices)."""
    import ast
    import subprocess
    import sys

    client = MlflowClient(resolve_store().tracking_uri)
    run = client.get_run(find_runs(client, study="small")[0][0].info.run_id)
    outputs = [subprocess.run([sys.executable, "-c", THREADED_EVALUATION, str(k), run.info.run_id,
                               client.tracking_uri], capture_output=True, text=True, check=True).stdout
               for k in (1, 2, 5, 16)]
    assert all(output == outputs[0] for output in outputs[1:]), outputs
    scores, test, _ = (dict(part) for part in ast.literal_eval(outputs[0]))
    for name in ("fid_proxy", "kid_proxy", "precision"):
        assert scores[name] == run.data.metrics[f"score/{name}"] and test[name] == run.data.metrics[f"test/{name}"]


def test_the_study_pins_its_scoring_on_the_parent_and_refuses_another_n(in_store, tmp_path):
    client = MlflowClient(resolve_store().tracking_uri)
    runs, parent, _ = find_runs(client, study="small")
    pinned = {k: parent.data.params[k] for k in ("feature_net.checksum", "eval.n")}
    assert pinned["eval.n"] == "200"
    assert all({k: r.data.params[k] for k in pinned} == pinned for r in runs)
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "feature_net")] == [
        f"feature_net/{pinned['feature_net.checksum']}.pt"]
    other = tmp_path / "small.toml"
    other.write_text(STUDY.replace("n_eval = 200", "n_eval = 100"))
    before = client.get_run(parent.info.run_id).info
    with pytest.raises(ConfigError, match="scored on 200 images, now asked for 100"):
        run_study(load_spec(other), StudyOptions(device="cpu", progress=False))
    after = client.get_run(parent.info.run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
