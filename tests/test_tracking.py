"""Step metrics as MLflow holds them: one point per window of G steps, read back through MLflow's own client and
checked against the values the loop handed its hooks."""

import functools
import statistics
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gansweep.hooks import Hook
from gansweep.mlflow_hook import EXTREMES, MlflowHook
from gansweep.tracking import client_for, end_run, experiment_id
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY


class Recorder(Hook):
    def __init__(self):
        self.logs = []

    def on_log(self, state, log):
        self.logs.append(log)


class StoreReader(Hook):
    """At each epoch's end, after the tracking hook's, what the store already holds of a step curve of the run
    `run_id` (set once the run exists)."""

    def __init__(self, client):
        self.client, self.run_id, self.seen = client, None, []

    def on_epoch_end(self, state):
        self.seen.append(len(self.client.get_metric_history(self.run_id, "loss/g")))


def _tracked_training(tmp_path, client, data, log_every, extra_hooks):
    """A 3-epoch `gan` run of 6 G steps an epoch, tracked through `client`, its hooks after the tracking hook's:
    (run id, a call that trains it)."""
    run_id = client.create_run(experiment_id(client, "windows")).info.run_id
    (tmp_path / "work").mkdir()
    variant = get_variant("gan")
    hooks = [MlflowHook(client, run_id, tmp_path / "work", "fid_proxy", {}), *extra_hooks]
    config = variant.config(**{**TINY, "epochs": 3, "log_every": log_every})
    return run_id, functools.partial(train, variant, config, data, hooks)


@pytest.fixture
def tracked(tiny_data, tmp_path):
    """Logged every 4: windows of 4 and 2 steps."""
    client = client_for(f"sqlite:///{tmp_path}/store.db")
    recorder, reader = Recorder(), StoreReader(client)
    run_id, run = _tracked_training(tmp_path, client, tiny_data, 4, [recorder, reader])
    reader.run_id = run_id
    result = run()
    assert result.status == "finished" and result.steps == 18
    return client, run_id, recorder.logs, reader.seen


def test_a_step_curve_point_is_its_window_s_mean_at_the_window_s_last_step(tracked):
    client, run_id, logs, _ = tracked
    assert [log.steps[-1] for log in logs] == [4, 6, 10, 12, 16, 18]
    logged = {"d/real": "d_prob/real", "d/fake": "d_prob/fake"}  # gan's D outputs a probability
    for name in logs[0].metrics:
        points = sorted(client.get_metric_history(run_id, logged.get(name, name)), key=lambda m: m.step)
        assert [m.step for m in points] == [4, 6, 10, 12, 16, 18], name
        assert [m.value for m in points] == pytest.approx(
            [statistics.fmean(log.metrics[name]) for log in logs], rel=1e-12), name
    assert not {"d/real", "d/fake"} & set(client.get_run(run_id).data.metrics)
    assert len(client.get_metric_history(run_id, "perf/images_per_s")) == 6


def test_spiky_curves_carry_each_window_s_minimum_and_maximum(tracked):
    client, run_id, logs, _ = tracked
    assert set(EXTREMES) <= set(logs[0].metrics)
    metrics = client.get_run(run_id).data.metrics
    for name in logs[0].metrics:
        assert (f"{name}/min" in metrics) == (name in EXTREMES), name
    for name in EXTREMES:
        for bound, pick in (("min", min), ("max", max)):
            points = sorted(client.get_metric_history(run_id, f"{name}/{bound}"), key=lambda m: m.step)
            assert [m.value for m in points] == [pick(log.metrics[name]) for log in logs], (name, bound)
        means = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        low = {m.step: m.value for m in client.get_metric_history(run_id, f"{name}/min")}
        high = {m.step: m.value for m in client.get_metric_history(run_id, f"{name}/max")}
        assert all(low[s] <= means[s] <= high[s] for s in means), name


def test_every_point_of_an_epoch_is_in_the_store_when_the_epoch_ends(tracked):
    client, run_id, _, seen = tracked
    assert seen == [2, 4, 6]  # logged asynchronously, yet waited for before scores and checkpoints
    assert client.get_run(run_id).info.status == "FINISHED"



class SlowStore(MlflowClient):
    """The real sqlite store, slow to take step metrics, and refusing those of the G steps in `refuse`."""

    def __init__(self, uri, refuse=()):
        super().__init__(uri)
        self.refuse = set(refuse)

    def log_batch(self, run_id, metrics=(), **kwargs):
        if any(m.key == "loss/g" for m in metrics):
            time.sleep(0.2)
            if any(m.step in self.refuse for m in metrics):
                raise MlflowException("the store is full")
        return super().log_batch(run_id, metrics=metrics, **kwargs)


class Breaks(Hook):
    def on_log(self, state, log):
        if state.step >= 10:
            raise RuntimeError("a bug in a hook")


def test_a_refused_step_metric_fails_the_run_at_the_epoch_s_end_after_every_other_write(tmp_path, tiny_data):
    """Windows of 2 G steps: points at 2, 4, 6 in the first epoch. The store refuses the point at 2; the error is
    raised at the epoch's end, once the points at 4 and 6 are written too, not while they are still queued."""
    client = SlowStore(f"sqlite:///{tmp_path}/store.db", refuse={2})
    run_id, run = _tracked_training(tmp_path, client, tiny_data, 2, [])
    with pytest.raises(MlflowException, match="the store is full"):
        run()
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss/g"))
    assert steps == [4, 6]


def test_a_run_ended_on_a_failure_path_gets_no_step_metric_after_its_end(tmp_path, tiny_data):
    """A hook after the tracking hook raises at G step 10: the run stops with points still queued and its hook
    never drains them. Ending the run waits for the writer first: what the store holds when the run has ended
    is all it will ever hold of it."""
    client = SlowStore(f"sqlite:///{tmp_path}/store.db")
    run_id, run = _tracked_training(tmp_path, client, tiny_data, 2, [Breaks()])
    with pytest.raises(RuntimeError, match="a bug in a hook"):
        run()
    end_run(client, run_id, "failed", "RuntimeError: a bug in a hook")
    at_end = sorted(m.step for m in client.get_metric_history(run_id, "loss/g"))
    time.sleep(0.5)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss/g")) == at_end == [2, 4, 6, 8, 10]
    assert client.get_run(run_id).info.status == "FAILED"
