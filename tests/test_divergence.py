"""Divergence beyond NaN: the two rules on step metrics written out by hand, real runs that break them, and the
scoring and checkpoint paths refusing non-finite weights and samples."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from gansweep.checkpoint import load_checkpoint, save_checkpoint
from gansweep.cli import main
from gansweep.config import TrainConfig
from gansweep.errors import GansweepError
from gansweep.metrics import GaussianStats, frechet_distance
from gansweep.divergence import DivergenceCheck
from gansweep.hooks import Hook
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY

SATURATED = (0.995, 0.005, 5.0)  # (d/real, d/fake, loss/g) of one G step
HEALTHY = (0.7, 0.3, 1.0)
G_LOSS_HIGH = (0.6, 0.4, 1500.0)
G_LOSS_LOW = (0.6, 0.4, -1500.0)  # the bound is on |loss/g|: the minimax and critic G losses are negative
SATURATION = "saturated D at step {}: mean D(x) > 0.99 and mean D(G(z)) < 0.01 for 3 G steps in a row"
G_LOSS = "|loss/g| over g_loss_limit at step {}: above 1000 for 3 G steps in a row"


def step_metrics(rows):
    """Step metrics as a host copy holds them, one (d/real, d/fake, loss/g) row per G step."""
    return {"loss/d": [0.5] * len(rows), "loss/g": [r[2] for r in rows], "d/real": [r[0] for r in rows],
            "d/fake": [r[1] for r in rows], "grad_norm/d": [1.0] * len(rows), "grad_norm/g": [1.0] * len(rows)}


def first_reason(check, rows, per_copy):
    """Feed `rows` as G steps 1, 2, ... in host copies of `per_copy` steps; the first reason given, or None."""
    for start in range(0, len(rows), per_copy):
        chunk = rows[start:start + per_copy]
        reason = check.update(list(range(start + 1, start + 1 + len(chunk))), step_metrics(chunk))
        if reason is not None:
            return reason
    return None


@pytest.mark.parametrize("rows, probabilistic, expected", [
    ([SATURATED] * 5, True, SATURATION.format(3)),
    ([SATURATED, SATURATED, HEALTHY, SATURATED, SATURATED, SATURATED], True, SATURATION.format(6)),
    ([SATURATED] * 5, False, None),  # a critic's values are not probabilities
    ([(0.99, 0.005, 5.0)] * 5, True, None),  # both bounds are strict
    ([(0.995, 0.01, 5.0)] * 5, True, None),
    ([G_LOSS_HIGH, G_LOSS_LOW, G_LOSS_HIGH, G_LOSS_HIGH], False, G_LOSS.format(3)),
    ([G_LOSS_HIGH, G_LOSS_HIGH, (0.6, 0.4, 1000.0), G_LOSS_HIGH, G_LOSS_HIGH, G_LOSS_HIGH], True, G_LOSS.format(6)),
    ([HEALTHY, SATURATED, (0.995, 0.005, 2000.0), G_LOSS_HIGH, G_LOSS_HIGH], True, G_LOSS.format(5)),
])
@pytest.mark.parametrize("per_copy", [1, 2, 4])  # the counts carry across host copies
def test_rules_fire_after_exactly_window_steps_in_a_row(rows, probabilistic, expected, per_copy):
    check = DivergenceCheck(TrainConfig(divergence_window=3, g_loss_limit=1000.0), probabilistic)
    assert first_reason(check, rows, per_copy) == expected


def test_window_zero_turns_the_rules_off_but_not_the_finite_check():
    check = DivergenceCheck(TrainConfig(divergence_window=0, g_loss_limit=1000.0), True)
    assert first_reason(check, [(0.999, 0.001, 1e9)] * 200, 20) is None
    metrics = step_metrics([HEALTHY, HEALTHY])
    metrics["grad_norm/g"][1] = math.inf
    assert check.update([201, 202], metrics) == "non-finite grad_norm/g at step 202"


@pytest.mark.parametrize("lr", [10.0, 100.0])
def test_gan_at_a_huge_lr_ends_as_diverged_within_one_epoch(mnist5k, lr):
    """At lr 10 or 100, |loss/g| is far above the limit within the first steps (measured: 1e6 to 1e13, with
    the odd step at 0 where D takes every fake for real), while no value is ever non-finite: only the G-loss
    rule ends these runs, a window's length after the last step below the limit."""
    variant = get_variant("gan")
    result = train(variant, variant.config(lr=lr, epochs=1, device="cpu"), mnist5k)
    window = TrainConfig().divergence_window
    assert (result.status, result.epochs) == ("diverged", 0) and result.steps < 62  # 4000 // 64 G steps an epoch
    step = int(result.reason.removeprefix("|loss/g| over g_loss_limit at step ").split(":")[0])
    assert window <= step <= result.steps
    off = train(variant, variant.config(lr=lr, epochs=1, device="cpu", divergence_window=0), mnist5k)
    assert off.status == "finished"


POISONED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import torch
from conftest import TINY, synthetic_dataset
from gansweep.feature_training import Recipe, train_classifier
from gansweep.evaluation import Evaluator, ScoreHook
from gansweep.hooks import Hook
from gansweep.trainer import train
from gansweep.variants import get_variant

class Poison(Hook):
    # a NaN in G's first weight, as an overflowing update would leave it
    def poison(self, state):
        with torch.no_grad():
            state.g.body[0].weight[0, 0] = float("nan")

    def on_log(self, state, log):
        if {when!r} == "last update" and log.steps[-1] == 6:
            self.poison(state)

    def on_epoch_end(self, state):
        if {when!r} == "before scoring":
            self.poison(state)

data = synthetic_dataset()
evaluator = Evaluator(train_classifier(data, Recipe(epochs=1)), data, 32)
variant = get_variant("gan")
result = train(variant, variant.config(**TINY), data, [Poison(), ScoreHook(evaluator)])
print(result.status, result.epochs, sorted(k for k in result.scores if k.startswith("score/")), sep="|")
print(result.reason)
"""


@pytest.mark.parametrize("when, epochs, reason", [
    ("last update", 0, "non-finite weight g.body.0.weight at step 6"),  # the trainer's check, before any hook
    ("before scoring", 1, "non-finite generated images (32 of 32) at step 6"),  # ScoreHook's own check
])
def test_non_finite_weights_end_the_run_before_any_score(when, epochs, reason):
    """In a subprocess, so that a crash in the scores' linear algebra fails this test instead of pytest."""
    script = POISONED_RUN.format(tests=str(Path(__file__).parent), when=when)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"diverged|{epochs}|[]", reason]


def test_frechet_distance_refuses_non_finite_statistics():
    finite = GaussianStats(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    cov = torch.eye(2, dtype=torch.float64)
    cov[0, 1] = math.nan
    with pytest.raises(ValueError, match="b has a non-finite mean or covariance"):
        frechet_distance(finite, GaussianStats(torch.zeros(2, dtype=torch.float64), cov))
    assert frechet_distance(finite, finite) == 0.0


class KeepState(Hook):
    def on_end(self, state, result):
        self.state = state


def poisoned_checkpoint(data, path, net):
    """A real checkpoint of one tiny epoch, with one NaN written into `net`'s first weight."""
    keep = KeepState()
    variant = get_variant("gan")
    train(variant, variant.config(**TINY), data, [keep])
    with torch.no_grad():
        getattr(keep.state, net).body[0].weight[0, 0] = float("nan")
    return save_checkpoint(keep.state, path)


@pytest.mark.parametrize("net", ["g", "d"])
def test_a_checkpoint_with_one_nan_weight_is_refused(tmp_path, tiny_data, net):
    path = poisoned_checkpoint(tiny_data, tmp_path / "last.pt", net)
    with pytest.raises(GansweepError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path} holds non-finite values in tensor {net}.body.0.weight ")
    assert len(message.splitlines()) == 1


@pytest.fixture
def poisoned_run(tmp_path, tiny_data):
    """An MLflow run in a sqlite store in tmp_path whose checkpoints/last.pt has one NaN in G."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("poisoned", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    (tmp_path / "checkpoints").mkdir()
    client.log_artifact(run_id, str(poisoned_checkpoint(tiny_data, tmp_path / "checkpoints" / "last.pt", "g")),
                        "checkpoints")
    return uri, run_id


@pytest.mark.parametrize("command", [["sample", "-o", "grid.png"], ["evaluate", "--device", "cpu"]])
def test_sample_and_evaluate_refuse_a_nan_checkpoint_in_one_line(poisoned_run, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    uri, run_id = poisoned_run
    result = CliRunner().invoke(main, [command[0], run_id, *command[1:], "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "non-finite values in tensor g.body.0.weight" in line
    assert not (tmp_path / "grid.png").exists()
