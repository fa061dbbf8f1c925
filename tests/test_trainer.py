import math

import pytest
import torch

from gansweep.errors import ConfigError
from gansweep.hooks import Hook, StopTraining
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY, synthetic_dataset


class Recorder(Hook):
    def __init__(self):
        self.logs, self.epochs, self.results = [], [], []

    def on_log(self, state, log):
        self.logs.append(log)

    def on_epoch_end(self, state):
        self.epochs.append((state.epoch, state.step, state.d_steps, state.images_seen))

    def on_end(self, state, result):
        self.results.append(result)

    def series(self, name):
        return [v for log in self.logs for v in log.metrics[name]]

    def steps(self):
        return [s for log in self.logs for s in log.steps]


def run(name, data, hooks=(), **changes):
    variant = get_variant(name)
    return train(variant, variant.config(**{**TINY, **changes}), data, hooks)


def test_same_seed_same_losses_on_cpu(tiny_data):
    a, b, c = Recorder(), Recorder(), Recorder()
    run("gan", tiny_data, [a], epochs=2, dropout=0.3)
    run("gan", tiny_data, [b], epochs=2, dropout=0.3)
    run("gan", tiny_data, [c], epochs=2, dropout=0.3, seed=1)
    assert a.series("loss/d") == b.series("loss/d") and a.series("loss/g") == b.series("loss/g")
    assert a.series("loss/d") != c.series("loss/d")


@pytest.mark.parametrize("n_critic", [1, 2, 3])
def test_critic_iterations_set_d_updates_per_g_update(tiny_data, n_critic):
    """96 images / batch 16 = 6 D updates per epoch whatever n_critic; G gets 6 // n_critic of them."""
    rec = Recorder()
    result = run("wgan-gp", tiny_data, [rec], n_critic=n_critic, epochs=2)
    epoch, g_steps, d_steps, images = rec.epochs[-1]
    assert (epoch, g_steps, d_steps) == (2, 2 * (6 // n_critic), 2 * (6 // n_critic) * n_critic)
    assert images == d_steps * 16 and result.images_seen == images


def test_every_g_step_is_logged_once_in_order(tiny_data):
    rec = Recorder()
    result = run("gan", tiny_data, [rec], epochs=3, log_every=4)  # 6 steps an epoch: logs of 4 and 2
    assert rec.steps() == list(range(1, 19))
    assert [len(log.steps) for log in rec.logs] == [4, 2] * 3
    assert result.status == "finished" and result.steps == 18


def test_label_smoothing_changes_d_loss(tiny_data):
    plain, smoothed = Recorder(), Recorder()
    run("gan", tiny_data, [plain])
    run("gan", tiny_data, [smoothed], label_smoothing=0.3)
    # the first step starts from identical networks and batches: only D's real target differs
    assert plain.series("loss/d")[0] != pytest.approx(smoothed.series("loss/d")[0], rel=1e-4)


def test_reported_d_outputs_are_probabilities_for_logistic_losses(tiny_data):
    rec = Recorder()
    run("gan", tiny_data, [rec])
    assert all(0 <= v <= 1 for v in rec.series("d/real") + rec.series("d/fake"))
    assert "wasserstein/estimate" not in rec.logs[0].metrics


def test_wasserstein_estimate_is_real_minus_fake(tiny_data):
    rec = Recorder()
    run("wgan", tiny_data, [rec], n_critic=1)
    for real, fake, w in zip(rec.series("d/real"), rec.series("d/fake"), rec.series("wasserstein/estimate")):
        assert w == pytest.approx(real - fake, abs=1e-5)


def test_non_finite_loss_stops_the_run_cleanly():
    data = synthetic_dataset()
    data.train_images[5] = float("nan")
    rec = Recorder()
    result = run("gan", data, [rec], epochs=3)
    assert result.status == "diverged"
    assert "non-finite" in result.reason and "at step" in result.reason
    assert rec.results == [result] and rec.epochs == []
    assert all(math.isfinite(v) for v in result.last.values())


def test_a_hook_can_stop_training(tiny_data):
    class Pruner(Hook):
        def on_epoch_end(self, state):
            if state.epoch == 2:
                raise StopTraining("pruned", "worse than the median at epoch 2")

    result = run("gan", tiny_data, [Pruner()], epochs=5)
    assert (result.status, result.epochs, result.reason) == ("pruned", 2, "worse than the median at epoch 2")


def test_interrupt_reaches_hooks_then_propagates(tiny_data):
    class Interrupt(Hook):
        def on_epoch_end(self, state):
            raise KeyboardInterrupt

    rec = Recorder()
    with pytest.raises(KeyboardInterrupt):
        run("gan", tiny_data, [Interrupt(), rec], epochs=3)
    assert rec.results[0].status == "interrupted"


def test_training_changes_both_networks(tiny_data):
    class Snapshot(Hook):
        def on_start(self, state):
            self.g0 = [p.detach().clone() for p in state.g.parameters()]
            self.d0 = [p.detach().clone() for p in state.d.parameters()]
            self.state = state

    snap = Snapshot()
    run("sngan", tiny_data, [snap])
    for before, net in ((snap.g0, snap.state.g), (snap.d0, snap.state.d)):
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_budget_smaller_than_one_g_step_is_rejected(tiny_data):
    with pytest.raises(ConfigError, match="batch_size \\* n_critic"):
        run("wgan", tiny_data, batch_size=32, n_critic=5)


@pytest.mark.parametrize("name", ["gan", "cgan", "dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "lsgan",
                                  "sngan"])
def test_every_variant_trains_on_real_digits(mnist5k, name):
    """One short epoch of each variant on mnist-5k's first 320 images, at tiny widths."""
    from dataclasses import replace

    small = replace(mnist5k, train_images=mnist5k.train_images[:320], train_labels=mnist5k.train_labels[:320])
    rec = Recorder()
    result = run(name, small, [rec], batch_size=32)
    assert result.status == "finished" and result.epochs == 1
    assert result.images_seen == 320
