"""A study trained in populations records the same study as one trained a trial at a time: trials, child runs,
their metrics and artifacts, and scores (on the CPU, where members are stepped in turn, exactly). Read back
through Optuna's and MLflow's APIs."""

from __future__ import annotations

import math
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study

from test_study import TINY_STUDY


def _run(folder, monkeypatch, population: str):
    monkeypatch.chdir(folder)
    (folder / "studies").mkdir()
    path = folder / "studies" / "tiny.toml"
    path.write_text(TINY_STUDY.format(extra="").replace("lr = [1e-4, 3e-4, 1e-3]", "lr = [1e-4, 2e-4, 3e-4]"))
    outcome = run_study(load_spec(path), StudyOptions(device="cpu", progress=False, population=population))
    store = resolve_store()
    trials = optuna.load_study(study_name=outcome.optuna_study, storage=store.optuna()).get_trials()
    client = MlflowClient(store.tracking_uri)
    return outcome, trials, client


def _artifacts(client, run_id, path=""):
    """Every artifact path, MLflow's logged images by key and step (their names hold a timestamp and a uuid)."""
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found += _artifacts(client, run_id, item.path)
        elif item.path.startswith("images/"):
            key, _, step, *_ = item.path.split("+")
            found.append(f"{key}+step+{step}" + ("+compressed" if item.path.endswith("compressed.webp") else ""))
        else:
            found.append(item.path)
    return sorted(found)


def test_a_study_in_one_population_records_the_same_study_as_one_trial_at_a_time(tmp_path, monkeypatch):
    alone, together = tmp_path / "alone", tmp_path / "together"
    alone.mkdir(), together.mkdir()
    outcomes = {}
    for folder, population in ((alone, "1"), (together, "4")):
        outcomes[population] = _run(folder, monkeypatch, population)
    (one, one_trials, one_client), (four, four_trials, four_client) = outcomes["1"], outcomes["4"]
    assert one.ran == four.ran == 3

    def by_point(trials):
        return {(t.params["lr"], t.user_attrs["seed"]): t for t in trials}

    one_points, four_points = by_point(one_trials), by_point(four_trials)
    assert one_points.keys() == four_points.keys() and len(one_points) == 3
    for point, trial in one_points.items():
        other = four_points[point]
        assert (other.state, other.user_attrs["status"], other.user_attrs["g_steps"]) == \
            (trial.state, trial.user_attrs["status"], trial.user_attrs["g_steps"])
        assert other.value == trial.value
        run, other_run = (client.get_run(t.user_attrs["mlflow_run_id"])
                          for client, t in ((one_client, trial), (four_client, other)))
        assert other_run.info.status == run.info.status == "FINISHED"
        assert (other.user_attrs["population"], other_run.data.tags["gansweep.population"]) == (3, "3")
        assert (trial.user_attrs["population"], run.data.tags["gansweep.population"]) == (1, "1")
        assert other_run.data.params == run.data.params
        assert other_run.data.metrics.keys() == run.data.metrics.keys()
        for key in ("loss/d", "loss/g", "score/fid_proxy"):
            mine = [m.value for m in one_client.get_metric_history(run.info.run_id, key)]
            theirs = [m.value for m in four_client.get_metric_history(other_run.info.run_id, key)]
            assert theirs == mine, key
        assert _artifacts(four_client, other_run.info.run_id) == _artifacts(one_client, run.info.run_id)
    # trained together: every trial of the population started before any ended; alone, one after another
    assert max(t.datetime_start for t in four_trials) < min(t.datetime_complete for t in four_trials)
    ordered = sorted(one_trials, key=lambda t: t.datetime_start)
    assert all(a.datetime_complete <= b.datetime_start for a, b in zip(ordered, ordered[1:]))
    assert four.table["fid_proxy"].tolist() == one.table["fid_proxy"].tolist()


@pytest.mark.parametrize("value", ["auto", "1", "7"])
def test_population_sizes_are_taken_as_given_and_auto_is_one_on_the_cpu(value):
    import torch

    from gansweep.study import population_size

    expected = {"auto": 1, "1": 1, "7": 7}[value]
    assert population_size(StudyOptions(population=value).population, torch.device("cpu")) == expected
    assert population_size("auto", torch.device("cuda")) == 64


def test_a_member_that_ended_keeps_its_record_when_its_population_is_interrupted_later(tmp_path, monkeypatch):
    """lr 10 diverges within a few steps of epoch 1 and its trial is told at once (pruned: diverged); at the end
    of epoch 2 the population is interrupted. The diverged trial keeps its record; the two others are
    interrupted, their runs ended, nothing left RUNNING."""
    from optuna.trial import TrialState

    from gansweep.evaluation import ScoreHook

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "tiny.toml"
    path.write_text(TINY_STUDY.format(extra="").replace("lr = [1e-4, 3e-4, 1e-3]", "lr = [1e-4, 3e-4, 10.0]")
                    .replace("log_every = 5", "log_every = 5\ndivergence_window = 3"))
    scored = ScoreHook.on_epoch_end

    def interrupt_at_epoch_2(self, state):
        if state.epoch == 2:
            raise KeyboardInterrupt("stopped by the test")
        scored(self, state)

    monkeypatch.setattr(ScoreHook, "on_epoch_end", interrupt_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(path), StudyOptions(device="cpu", progress=False, population="3"))
    store = resolve_store()
    trials = {t.params["lr"]: t for t in optuna.load_study(study_name="tiny", storage=store.optuna()).get_trials()}
    assert trials[10.0].state == TrialState.PRUNED and trials[10.0].user_attrs["status"] == "diverged"
    for lr in (1e-4, 3e-4):
        assert trials[lr].state == TrialState.FAIL and trials[lr].user_attrs["status"] == "interrupted"
    client = MlflowClient(store.tracking_uri)
    statuses = {t.params["lr"]: client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in trials.values()}
    assert statuses == {10.0: "FAILED", 1e-4: "KILLED", 3e-4: "KILLED"}  # MLflow's names for diverged, interrupted


def test_a_member_whose_hook_breaks_fails_alone_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A bug in one member's scoring at epoch 2 (of 2): its two peers finish and are recorded, the broken trial
    fails with the error, resumable, its run FAILED, and the error reaches the user. Run again, the broken point
    alone goes on from its epoch-1 checkpoint and finishes."""
    from optuna.trial import TrialState

    from gansweep.evaluation import ScoreHook
    from gansweep.resume import RESUMABLE_ATTR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "tiny.toml"
    path.write_text(TINY_STUDY.format(extra=""))
    scored = ScoreHook.on_epoch_end

    def broken_for_one(self, state):
        if state.config.lr == 3e-4 and state.epoch == 2:
            raise RuntimeError("a bug in scoring")
        scored(self, state)

    monkeypatch.setattr(ScoreHook, "on_epoch_end", broken_for_one)
    with pytest.raises(RuntimeError, match="a bug in scoring"):
        run_study(load_spec(path), StudyOptions(device="cpu", progress=False, population="3"))
    store = resolve_store()
    client = MlflowClient(store.tracking_uri)
    trials = {t.params["lr"]: t for t in optuna.load_study(study_name="tiny", storage=store.optuna()).get_trials()}
    assert {lr: t.state for lr, t in trials.items()} == \
        {1e-4: TrialState.COMPLETE, 3e-4: TrialState.FAIL, 1e-3: TrialState.COMPLETE}
    broken = trials[3e-4]
    assert broken.user_attrs["status"] == "failed" and broken.user_attrs[RESUMABLE_ATTR] is True
    assert broken.user_attrs["reason"] == "RuntimeError: a bug in scoring"
    assert all(t.user_attrs["epochs"] == 2 for lr, t in trials.items() if lr != 3e-4)
    statuses = {lr: client.get_run(t.user_attrs["mlflow_run_id"]).info.status for lr, t in trials.items()}
    assert statuses == {1e-4: "FINISHED", 3e-4: "FAILED", 1e-3: "FINISHED"}

    monkeypatch.setattr(ScoreHook, "on_epoch_end", scored)
    outcome = run_study(load_spec(path), StudyOptions(device="cpu", progress=False, population="3"))
    assert outcome.ran == 1
    again = [t for t in optuna.load_study(study_name="tiny", storage=store.optuna()).get_trials()
             if t.number not in {t.number for t in trials.values()}]
    assert len(again) == 1 and again[0].params["lr"] == 3e-4 and again[0].state == TrialState.COMPLETE
    assert again[0].user_attrs["resumed_at_epoch"] == 1
    assert again[0].user_attrs["mlflow_run_id"] == broken.user_attrs["mlflow_run_id"]  # the same run goes on
    runs = client.search_runs([client.get_run(broken.user_attrs["mlflow_run_id"]).info.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}  # the parent too: nothing RUNNING, nothing lost


@pytest.mark.parametrize("other", ["bug", "out of memory"])
def test_members_whose_hooks_break_differently_are_each_recorded_with_their_own_reason(tmp_path, monkeypatch, other):
    """Two members' scoring breaks at epoch 2, each with its own error, and the third finishes. A bug fails its
    trial, resumable, with its own reason, and the first bug in the population's order reaches the user; a
    member out of device memory beside it is handed back as a population's would be, not failed with the bug."""
    from optuna.trial import TrialState

    from gansweep.evaluation import ScoreHook
    from gansweep.resume import RESUMABLE_ATTR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra=""))
    scored = ScoreHook.on_epoch_end
    bugs = {3e-4: RuntimeError("a bug in scoring"),
            1e-3: ValueError("another bug") if other == "bug" else torch.OutOfMemoryError("CUDA out of memory")}

    def broken_for_two(self, state):
        if state.config.lr in bugs and state.epoch == 2:
            raise bugs[state.config.lr]
        scored(self, state)

    monkeypatch.setattr(ScoreHook, "on_epoch_end", broken_for_two)
    with pytest.raises(RuntimeError, match="a bug in scoring"):
        run_study(load_spec(tmp_path / "studies" / "tiny.toml"),
                  StudyOptions(device="cpu", progress=False, population="3"))
    store = resolve_store()
    trials = {t.params["lr"]: t for t in optuna.load_study(study_name="tiny", storage=store.optuna()).get_trials()}
    second = ("ValueError: another bug" if other == "bug"
              else "out of memory in a population of 3; run again in populations of at most 1")
    assert {lr: (t.state, t.user_attrs["status"], t.user_attrs.get("reason")) for lr, t in trials.items()} == {
        1e-4: (TrialState.COMPLETE, "finished", "completed 2 epochs"),
        3e-4: (TrialState.FAIL, "failed", "RuntimeError: a bug in scoring"),
        1e-3: (TrialState.FAIL, "failed", second)}
    assert all(trials[lr].user_attrs[RESUMABLE_ATTR] is True for lr in bugs)
    client = MlflowClient(store.tracking_uri)
    runs = {lr: client.get_run(t.user_attrs["mlflow_run_id"]) for lr, t in trials.items()}
    assert {lr: r.info.status for lr, r in runs.items()} == {1e-4: "FINISHED", 3e-4: "FAILED", 1e-3: "FAILED"}
    assert runs[3e-4].data.tags["gansweep.reason"] == "RuntimeError: a bug in scoring"
    assert runs[1e-3].data.tags["gansweep.reason"] == second  # MLflow says what Optuna says


def test_a_population_out_of_memory_is_handed_back_and_trained_in_halves(tmp_path, monkeypatch, capsys):
    """Device memory runs out at the first step of the population of 3 (the estimate was too generous): its
    trials are handed back without counting as failed tries, and the points train in populations of one,
    finished as the same study trained one at a time would be."""
    from optuna.trial import TrialState

    from gansweep.population import Population

    stepped = Population.step

    def out_of_memory_for_many(self, *args, **kwargs):
        if self.k > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return stepped(self, *args, **kwargs)

    monkeypatch.setattr(Population, "step", out_of_memory_for_many)
    outcome, trials, client = _run(tmp_path, monkeypatch, "3")
    assert outcome.ran == 3 and not outcome.failed
    back = [t for t in trials if t.state == TrialState.FAIL]
    assert len(back) == 3 and {t.user_attrs["population"] for t in back} == {3}
    assert {t.user_attrs["reason"] for t in back} == \
        {"out of memory in a population of 3; run again in populations of at most 1"}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [1e-4, 2e-4, 3e-4]
    assert {t.user_attrs["population"] for t in done} == {1}
    assert all(math.isfinite(t.value) for t in done)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in trials} <= {"FINISHED", "FAILED"}
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["gansweep.reason"] for t in back} == \
        {"out of memory in a population of 3; run again in populations of at most 1"}
    assert "out of memory training 3 trials together" not in capsys.readouterr().err  # progress off: quiet


def test_a_sampled_study_asks_for_a_population_of_trials_at_once(tmp_path, monkeypatch):
    """TPE with a constant liar, 3 trials asked at once, then the best one's two re-runs at once: the same trials
    (TPE's first trials are its seeded random start, whatever runs meanwhile) and scores as asked one at a time,
    trained together."""
    runs = {}
    for population in ("1", "3"):
        folder = tmp_path / population
        (folder / "studies").mkdir(parents=True)
        monkeypatch.chdir(folder)
        path = folder / "studies" / "tiny.toml"
        path.write_text(TINY_STUDY.format(extra="trials = 3\nbest_seeds = [5, 6]")
                        .replace('sampler = "grid"', 'sampler = "tpe"'))
        outcome = run_study(load_spec(path), StudyOptions(device="cpu", progress=False, population=population))
        trials = optuna.load_study(study_name=outcome.optuna_study, storage=resolve_store().optuna()).get_trials()
        runs[population] = (outcome, sorted(trials, key=lambda t: t.number))
    (one, alone), (three, together) = runs["1"], runs["3"]
    assert one.ran == three.ran == 5
    assert [(t.params, t.user_attrs["seed"], t.user_attrs["phase"], t.state) for t in together] == \
        [(t.params, t.user_attrs["seed"], t.user_attrs["phase"], t.state) for t in alone]
    assert [t.user_attrs["seed"] for t in together[3:]] == [5, 6]
    assert [t.value for t in together] == [t.value for t in alone]
    for batch in (together[:3], together[3:]):
        assert max(t.datetime_start for t in batch) < min(t.datetime_complete for t in batch)
    assert all(a.datetime_complete <= b.datetime_start for a, b in zip(alone, alone[1:]))
