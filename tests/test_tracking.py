"""Step metrics as MLflow holds them: one point per window of G steps, read back through MLflow's own client and
checked against the values the loop handed its hooks."""

import statistics

import pytest

from gansweep.hooks import Hook
from gansweep.mlflow_hook import EXTREMES, MlflowHook
from gansweep.tracking import client_for, experiment_id
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY


class Recorder(Hook):
    def __init__(self):
        self.logs = []

    def on_log(self, state, log):
        self.logs.append(log)


class StoreReader(Hook):
    """At each epoch's end, after the tracking hook's, what the store already holds of a step curve."""

    def __init__(self, client, run_id):
        self.client, self.run_id, self.seen = client, run_id, []

    def on_epoch_end(self, state):
        self.seen.append(len(self.client.get_metric_history(self.run_id, "loss/g")))


@pytest.fixture
def tracked(tiny_data, tmp_path):
    """A 3-epoch `gan` run of 6 G steps an epoch, logged every 4: windows of 4 and 2 steps."""
    client = client_for(f"sqlite:///{tmp_path}/store.db")
    run_id = client.create_run(experiment_id(client, "windows")).info.run_id
    (tmp_path / "work").mkdir()
    recorder, reader = Recorder(), StoreReader(client, run_id)
    hooks = [recorder, MlflowHook(client, run_id, tmp_path / "work", "fid_proxy", {}), reader]
    variant = get_variant("gan")
    result = train(variant, variant.config(**{**TINY, "epochs": 3, "log_every": 4}), tiny_data, hooks)
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

