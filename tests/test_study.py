"""Studies end to end: real `gansweep study` runs into a store in tmp_path, read back through MLflow and Optuna."""

import re

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from gansweep.cli import main
from gansweep.errors import ConfigError
from gansweep.evaluation import ScoreHook
from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study
from gansweep.study_table import seed_spread

TINY_STUDY = """
name = "tiny"
description = "three learning rates of a tiny MLP GAN"
variants = ["gan"]
dataset = "mnist-5k"
budget_unit = "images"
epochs = 2
batch_size = 200
n_eval = 200
objective = {{ metric = "fid_proxy", direction = "minimize" }}
sampler = "grid"
pruner = "none"
seeds = [0]
{extra}

[config]
hidden = [32]
z_dim = 8
n_samples = 16
log_every = 5

[space]
lr = [1e-4, 3e-4, 1e-3]
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The local default stores (mlruns/ in the working directory), in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra=""))
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def trials(name="tiny"):
    study = optuna.load_study(study_name=name, storage=resolve_store().optuna())
    return study.get_trials()


def test_a_grid_study_whose_trials_hold_the_seed_as_a_parameter_goes_on_without_running_a_point_twice(store):
    """Studies of an earlier gansweep held the seed as an Optuna parameter: their points are still known as done."""
    assert invoke("study", "tiny", "--trials", "1", "--device", "cpu").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=resolve_store().optuna())
    (first,) = study.get_trials()
    earlier = {"variant": "gan", "lr": next(lr for lr in (1e-4, 3e-4, 1e-3) if lr != first.params["lr"]), "seed": 0}
    study.add_trial(optuna.trial.create_trial(
        params=earlier, value=100.0, distributions={
            k: optuna.distributions.CategoricalDistribution([v]) for k, v in earlier.items()}))
    result = invoke("study", "tiny", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "1 trial(s) run now, 3 in all" in result.output  # only the point neither had run
    points = [(t.params["lr"], t.params.get("seed", t.user_attrs.get("seed"))) for t in trials()]
    assert sorted(points) == [(1e-4, 0), (3e-4, 0), (1e-3, 0)]


def test_one_trial_study_round_trips_through_mlflow_and_optuna(store):
    result = invoke("study", "tiny", "--trials", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "fid_proxy" in result.output and "gansweep ui" in result.output

    client = MlflowClient(resolve_store().tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("gansweep.role") == "parent")
    (child,) = [r for r in runs if r.data.tags.get("gansweep.role") == "trial"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["gansweep.variant"] == "gan" and child.data.tags["gansweep.seed"] == "0"
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"

    (trial,) = trials()
    assert trial.state == TrialState.COMPLETE
    assert optuna.load_study(study_name="tiny", storage=resolve_store().optuna()).metric_names == ["fid_proxy"]
    # the study's parameters are its hyperparameters; the seed is the trial's user attribute
    assert set(trial.params) == {"variant", "lr"} and trial.user_attrs["seed"] == 0
    assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
    # the parent run summarises the study: counts and the best trial as metrics, the table, the key pictures
    summary = client.get_run(parent.info.run_id).data.metrics
    assert summary["trials/finished"] == 1 and summary["trials/diverged"] == summary["trials/failed"] == 0
    assert summary["best/score/fid_proxy"] == trial.value and summary["best/trial"] == trial.number
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert logged == {"summary/trials.csv", "summary/sensitivity.png", "summary/contact_sheet.png"}
    (store / "summary").mkdir()
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "summary/trials.csv", str(store / "summary")))
    assert table["run_id"].tolist() == [child.info.run_id] and table["fid_proxy_val"].tolist() == [trial.value]
    lr = {1e-4: "1e-4", 3e-4: "3e-4", 1e-3: "1e-3"}[trial.params["lr"]]
    assert child.info.run_name == f"gan lr={lr} s0 #{trial.number:03d}"  # what differs first, then seed and trial
    assert child.data.tags["gansweep.trial"] == str(trial.number)

    params = child.data.params
    assert float(params["swept.lr"]) == trial.params["lr"] and "lr" not in params  # a swept value, once
    assert params["hidden"] == "(32,)" and params["batch_size"] == "200" and params["epochs"] == "2"
    assert params["data.name"] == "mnist-5k" and len(params["data.checksum"]) == 16
    assert params["variant"] == "gan" and params["loss"] == "non-saturating" and "torch_version" in params

    g_steps = 2 * (4000 // 200)
    losses = client.get_metric_history(child.info.run_id, "loss/d")
    assert sorted(m.step for m in losses) == list(range(5, g_steps + 1, 5))  # one point per log_every = 5
    scores = client.get_metric_history(child.info.run_id, "score/fid_proxy")
    assert [m.step for m in scores] == [1, 2]
    assert trial.value == pytest.approx(scores[-1].value)
    assert trial.intermediate_values == {1: pytest.approx(scores[0].value), 2: pytest.approx(scores[1].value)}

    artifacts = {a.path for folder in ("samples", "checkpoints", "plots")
                 for a in client.list_artifacts(child.info.run_id, folder)}
    assert artifacts == {"samples/epoch_001.png", "samples/epoch_002.png", "samples/grids.gif",
                         "checkpoints/last.pt", "checkpoints/best.pt", "plots/losses.png"}
    # the same grids through MLflow's image logging, keyed by epoch, which its run comparison lines up
    pngs = {int(a.path.split("+")[2]): a.path for a in client.list_artifacts(child.info.run_id, "images")
            if a.path.startswith("images/samples+step+") and a.path.endswith(".png")}
    assert sorted(pngs) == [1, 2]
    (store / "logged").mkdir(), (store / "grid").mkdir()
    logged = client.download_artifacts(child.info.run_id, pngs[1], str(store / "logged"))
    grid = client.download_artifacts(child.info.run_id, "samples/epoch_001.png", str(store / "grid"))
    assert Image.open(logged).convert("RGB").tobytes() == Image.open(grid).convert("RGB").tobytes()

    out = store / "grid.png"
    sampled = invoke("sample", child.info.run_id, "--n", "16", "-o", out)
    assert sampled.exit_code == 0, sampled.output
    assert Image.open(out).size == (4 * 30 + 2, 4 * 30 + 2)  # 16 images of 28 px, 4 columns, 2 px padding
    again = invoke("sample", child.info.run_id, "-o", out)
    assert again.exit_code == 2 and "exists" in again.output


def test_resume_runs_only_the_remaining_points(store):
    spec = load_spec(store / "studies" / "tiny.toml")
    first = run_study(spec, StudyOptions(trials=1, device="cpu", progress=False))
    assert first.ran == 1
    rest = run_study(spec, StudyOptions(device="cpu", progress=False))
    assert rest.ran == 2 and rest.parent_run_id == first.parent_run_id
    client = MlflowClient(resolve_store().tracking_uri)
    finished = client.get_metric_history(rest.parent_run_id, "trials/finished")  # kept current as trials end
    assert {(m.step, m.value) for m in finished} == {(1, 1), (2, 2), (3, 3)}
    done = [t for t in trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [1e-4, 3e-4, 1e-3]
    assert run_study(spec, StudyOptions(device="cpu", progress=False)).ran == 0
    fresh = run_study(spec, StudyOptions(trials=1, device="cpu", progress=False, fresh=True))
    assert fresh.parent_run_id != first.parent_run_id and fresh.optuna_study != "tiny"
    assert len([t for t in trials() if t.state == TrialState.COMPLETE]) == 3  # the old study is untouched


def test_an_interrupted_trial_is_recorded_and_rerun(store, monkeypatch):
    spec = load_spec(store / "studies" / "tiny.toml")

    def interrupt(self, state):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ScoreHook, "on_epoch_end", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_study(spec, StudyOptions(device="cpu", progress=False))
    (trial,) = trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["status"] == "interrupted"
    run = MlflowClient(resolve_store().tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["gansweep.status"] == "interrupted"

    run_study(spec, StudyOptions(device="cpu", progress=False))
    complete = [t for t in trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in complete) == [1e-4, 3e-4, 1e-3]


@pytest.mark.parametrize("line, error", [
    ('variants = ["gan", "wgan_gp"]', "variants: unknown variant 'wgan_gp'; did you mean 'wgan-gp'?"),
    ('sampler = "grid-search"', "sampler must be one of grid, tpe, random"),
    ("learning_rate = 3", "learning_rate: unknown key"),
])
def test_study_file_errors_name_the_file_and_key(tmp_path, line, error):
    text = TINY_STUDY.format(extra="").replace('variants = ["gan"]', line if "variants" in line else
                                               f'variants = ["gan"]\n{line}')
    if "sampler" in line:
        text = text.replace('sampler = "grid"\n', "")
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {error}".replace("?", "\\?").replace("[", "\\[")):
        load_spec(path)


def test_space_values_are_range_checked(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(extra="").replace("lr = [1e-4, 3e-4, 1e-3]", "dropout = [0.0, 1.0]"))
    with pytest.raises(ConfigError, match="space.dropout: dropout must be in \\[0, 1\\), got 1.0"):
        load_spec(path)


def test_shipped_studies_load_and_are_listed():
    from gansweep.catalog import find_spec

    result = invoke("list", "studies")
    for name in ("lr-sensitivity", "dropout", "label-smoothing", "critic-iterations", "variant-shootout", "tune",
                 "fair-comparison"):
        assert name in result.output
    spec = load_spec(find_spec("lr-sensitivity"))
    assert spec.sampler == "grid" and spec.pruner == "none"
    assert len(spec.grid_points()) == 3 * len(spec.space["lr"]) * len(spec.seeds)
    # the classic questions' studies carry budgets that can answer them on full MNIST: seed bands and p < 0.01
    for name in ("lr-sensitivity", "dropout", "label-smoothing", "critic-iterations", "variant-shootout"):
        spec = load_spec(find_spec(name))
        assert spec.dataset == "mnist" and len(spec.seeds) >= 5 and spec.epochs >= 10, name


def test_unknown_study_is_exit_code_2(store):
    result = invoke("study", "lr-sensitivty")
    assert result.exit_code == 2 and "did you mean 'lr-sensitivity'" in result.output
    assert not (store / "mlruns").exists()


@pytest.mark.parametrize("args, message", [
    (["--variant", "wgan_gp"], "unknown variant 'wgan_gp'; did you mean 'wgan-gp'?"),
    (["--dataset", "mnist5k"], "unknown dataset 'mnist5k'; did you mean 'mnist-5k'?"),
    (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
])
def test_bad_study_overrides_are_exit_code_2(store, args, message):
    result = invoke("study", "tiny", *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_a_collapsed_trial_is_stopped_and_recorded(store, monkeypatch):
    """With collapse_window = 1, the first evaluation judged a collapse ends the trial. The evaluator is the
    real one; only what the classifier says of the samples on the validation slice is scripted: nine classes at
    epoch 1 and two at epoch 2, nine in ten samples confidently digits each time."""
    from gansweep.evaluation import Evaluator

    real_scores = Evaluator._scores
    script = iter([{"coverage": 0.9, "confident": 0.9, "rejected": 0.0},
                   {"coverage": 0.2, "confident": 0.9, "rejected": 0.0}])

    def scripted(self, features, logits, labels, real):
        scores = real_scores(self, features, logits, labels, real)
        return {**scores, **next(script)} if real is self.slices["validation"] else scores

    monkeypatch.setattr(Evaluator, "_scores", scripted)
    (store / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra="collapse_window = 1"))
    spec = load_spec(store / "studies" / "tiny.toml")
    outcome = run_study(spec, StudyOptions(trials=1, device="cpu", progress=False))
    (trial,) = trials()
    assert trial.state == TrialState.PRUNED and trial.user_attrs["status"] == "collapsed"
    assert list(outcome.table["status"]) == ["mode collapse"]  # as export and the report name it
    assert trial.user_attrs["epochs"] == 2 and "mode collapse" in trial.user_attrs["reason"]
    assert trial.user_attrs["mode_collapse"].startswith("epoch 2: 2 of 10 classes among the 90% confident")
    run = MlflowClient(resolve_store().tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["gansweep.status"] == "collapsed"
    assert run.data.tags["gansweep.mode_collapse"] == trial.user_attrs["mode_collapse"]


FAIR = TINY_STUDY.format(extra="trials = 2\nbest_seeds = [5, 6]").replace('name = "tiny"', 'name = "fair"').replace(
    'variants = ["gan"]', 'variants = ["gan", "lsgan"]').replace('sampler = "grid"', 'sampler = "random"').replace(
    "epochs = 2", "epochs = 1").replace("[config]", "[config]\nwidth = 8").replace(
    "lr = [1e-4, 3e-4, 1e-3]", "lr = { low = 1e-4, high = 1e-3, log = true }\nbeta1 = { low = 0.0, high = 0.9 }")


def test_a_fair_comparison_gives_each_variant_the_same_budget_then_reruns_its_best(store):
    (store / "studies" / "fair.toml").write_text(FAIR)
    outcome = run_study(load_spec(store / "studies" / "fair.toml"), StudyOptions(device="cpu", progress=False))
    assert outcome.ran == 2 * 2 + 2 * 2
    done = trials("fair")
    search = [t for t in done if t.user_attrs["phase"] == "search"]
    reruns = [t for t in done if t.user_attrs["phase"] == "rerun"]
    assert sorted(t.params["variant"] for t in search) == ["gan", "gan", "lsgan", "lsgan"]
    for variant in ("gan", "lsgan"):
        best = min((t for t in search if t.params["variant"] == variant), key=lambda t: t.value)
        mine = [t for t in reruns if t.params["variant"] == variant]
        assert sorted(t.user_attrs["seed"] for t in mine) == [5, 6]
        assert all(t.params == best.params and t.user_attrs["rerun_of"] == best.number for t in mine)
        runs = [MlflowClient(resolve_store().tracking_uri).get_run(t.user_attrs["mlflow_run_id"]) for t in mine]
        assert sorted(r.data.params["seed"] for r in runs) == ["5", "6"]
        assert all(float(r.data.params["betas"].strip("()").split(",")[0]) == pytest.approx(best.params["beta1"])
                   for r in runs)
    spread = seed_spread(outcome.table, outcome.spec)
    assert sorted(spread["variant"]) == ["gan", "lsgan"] and list(spread["count"]) == [2, 2]
    gan = [t.user_attrs["final.fid_proxy"] for t in reruns if t.params["variant"] == "gan"]  # the test slice
    row = spread[spread["variant"] == "gan"].iloc[0]
    assert row["mean"] == pytest.approx(sum(gan) / 2) and row["std"] == pytest.approx(abs(gan[0] - gan[1]) / 2**0.5)
    assert run_study(outcome.spec, StudyOptions(device="cpu", progress=False)).ran == 0  # all done: nothing again


def test_two_processes_share_one_grid_without_losing_or_repeating_a_point(store, feature_net_cache):
    """Two `gansweep study` processes at once on the default stores: every point done exactly once."""
    import os
    import subprocess
    import sys

    from gansweep.classifier import get_classifier
    from gansweep.config import DataConfig
    from gansweep.data import load_dataset

    get_classifier(load_dataset(DataConfig(dataset="mnist-5k")), log=False)  # trained once, not by both
    (store / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra="").replace(
        "lr = [1e-4, 3e-4, 1e-3]", "lr = [1e-4, 2e-4, 3e-4, 5e-4, 1e-3]").replace("epochs = 2", "epochs = 1"))
    command = [sys.executable, "-m", "gansweep", "study", "tiny", "--device", "cpu"]
    env = {**os.environ, "GANSWEEP_CACHE": str(feature_net_cache)}
    processes = [subprocess.Popen(command, cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    ran = [int(re.search(r"(\d+) trial\(s\) run now", out).group(1)) for out in outputs]
    assert sum(ran) == 5 and min(ran) >= 1  # both worked on the grid, and no point ran twice
    done = [t for t in trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [1e-4, 2e-4, 3e-4, 5e-4, 1e-3]
    children = [r for r in MlflowClient(resolve_store().tracking_uri).search_runs(
        [MlflowClient(resolve_store().tracking_uri).get_experiment_by_name("tiny").experiment_id])
        if r.data.tags.get("gansweep.role") == "trial" and r.data.tags.get("gansweep.status") == "finished"]
    assert sorted(r.data.params["swept.lr"] for r in children) == sorted(str(t.params["lr"]) for t in done)
    parents = [r for r in MlflowClient(resolve_store().tracking_uri).search_runs(
        [MlflowClient(resolve_store().tracking_uri).get_experiment_by_name("tiny").experiment_id])
        if r.data.tags.get("gansweep.role") == "parent"]
    assert len(parents) == 1  # both processes continued one study under one parent run


def test_a_study_is_not_continued_under_another_objective(store):
    spec = load_spec(store / "studies" / "tiny.toml")
    run_study(spec, StudyOptions(trials=1, device="cpu", progress=False))
    (store / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra="").replace(
        'metric = "fid_proxy", direction = "minimize"', 'metric = "recall", direction = "maximize"'))
    result = invoke("study", "tiny", "--device", "cpu")
    assert result.exit_code == 2 and "was run with objective minimize score/fid_proxy" in result.output
    assert "--fresh" in result.output
    assert len(trials()) == 1  # nothing ran, nothing changed
    fresh = invoke("study", "tiny", "--device", "cpu", "--trials", "1", "--fresh")
    assert fresh.exit_code == 0, fresh.output
