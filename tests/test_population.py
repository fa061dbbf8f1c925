"""A population trains each member exactly as the member's run alone: every logged value and the final weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gansweep import grouping, population
from gansweep.checkpoint import CheckpointHook
from gansweep.errors import ConfigError
from gansweep.hooks import Hook, MemberErrors, StopTraining
from gansweep.trainer import train, train_population
from gansweep.variants import get_variant

from conftest import TINY, synthetic_dataset

# Per variant: three members that differ in everything a member may (learning rates, smoothing, dropout,
# penalty strength, clip value, seed). Losses without a real target take no smoothing.
MEMBERS = {
    "gan": [dict(lr=1e-3, dropout=0.3, label_smoothing=0.0, seed=0),
            dict(lr=3e-4, lr_d=2e-3, dropout=0.1, label_smoothing=0.2, seed=1),
            dict(lr=2e-3, dropout=0.5, label_smoothing=0.1, seed=2, betas=(0.0, 0.9))],
    "cgan": [dict(lr=1e-3, dropout=0.3, seed=0), dict(lr=3e-4, dropout=0.2, label_smoothing=0.3, seed=5),
             dict(lr=2e-3, dropout=0.4, seed=9)],
    "dcgan": [dict(lr=2e-4, seed=0), dict(lr=1e-3, label_smoothing=0.1, seed=1), dict(lr=5e-4, seed=2)],
    "wgan": [dict(lr=5e-5, clip_value=0.01, seed=0), dict(lr=2e-4, clip_value=0.05, seed=1),
             dict(lr=1e-4, clip_value=0.02, seed=2)],
    "wgan-gp": [dict(lr=1e-4, gp_weight=10.0, seed=0), dict(lr=3e-4, gp_weight=1.0, seed=1),
                dict(lr=2e-4, gp_weight=5.0, seed=2, dropout=0.0)],
    "sngan": [dict(lr=2e-4, seed=0), dict(lr=1e-3, seed=1), dict(lr=5e-4, seed=2)],
}


@pytest.fixture(autouse=True)
def vectorized(monkeypatch):
    """The step CUDA runs: the members vmapped, here on the CPU too (which otherwise steps them in turn)."""
    monkeypatch.setattr(population, "VECTORIZE_ON_CPU", True)


@pytest.fixture
def tiny_data(tiny_data):
    """In double precision. A batched kernel rounds differently from a plain one, and in float32 Adam and
    RMSprop turn that rounding into full-size steps wherever a gradient is near zero (a bias feeding BatchNorm
    has a gradient of pure rounding error, ~1e-9, against Adam's eps of 1e-8). In float64 the rounding stays
    far below eps and the tolerance, so what is compared is the arithmetic, not the rounding."""
    torch.set_default_dtype(torch.float64)
    yield dataclasses.replace(tiny_data, train_images=tiny_data.train_images.double(),
                              test_images=tiny_data.test_images.double())
    torch.set_default_dtype(torch.float32)


class Record(Hook):
    """Every logged value by step, and G's and D's weights and the result at the end."""

    def __init__(self):
        self.metrics: dict[tuple[str, int], float] = {}

    def on_log(self, state, log):
        for name, values in log.metrics.items():
            self.metrics.update({(name, step): v for step, v in zip(log.steps, values)})

    def on_end(self, state, result):
        self.weights = {f"{net}.{k}": v.clone() for net, module in (("g", state.g), ("d", state.d))
                        for k, v in module.state_dict().items()}
        self.samples = state.fixed_samples()
        self.result = result


def _configs(name: str, **common):
    variant = get_variant(name)
    epochs = 3 if variant.config().n_critic == 1 else 6
    return variant, [variant.config(**{**TINY, "epochs": epochs, **member, **common}) for member in MEMBERS[name]]


def _alone(variant, config, data) -> Record:
    record = Record()
    train(variant, config, data, [record])
    return record


def _assert_same_run(together: Record, alone: Record) -> None:
    assert (together.result.status, together.result.reason, together.result.steps) == \
        (alone.result.status, alone.result.reason, alone.result.steps)
    assert together.metrics.keys() == alone.metrics.keys()
    for key in alone.metrics:
        assert together.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4, abs=1e-5), key
    assert together.weights.keys() == alone.weights.keys()
    for key, weight in alone.weights.items():
        torch.testing.assert_close(together.weights[key], weight, rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(together.samples, alone.samples, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_each_member_of_a_population_of_three_is_its_run_alone(tiny_data, name):
    variant, configs = _configs(name)
    records = [Record() for _ in configs]
    results = train_population(variant, configs, tiny_data, [[r] for r in records], [None] * len(configs))
    assert [r.status for r in results] == ["finished"] * 3
    for record, config in zip(records, configs):
        _assert_same_run(record, _alone(variant, config, tiny_data))
    # the members really differ: one network per member, not three copies of one
    assert len({float(r.weights["g." + next(iter(records[0].weights)).removeprefix("g.")].sum()) for r in records}) == 3


@pytest.mark.parametrize("name", ["gan", "dcgan", "wgan-gp"])
def test_on_the_cpu_a_member_is_its_run_alone_bit_for_bit_in_float32(monkeypatch, name):
    """Members stepped in turn on their slices of the stack: the same kernels on the same values as alone, so
    every logged value, every weight and the sample grid are equal, not merely close."""
    monkeypatch.setattr(population, "VECTORIZE_ON_CPU", False)
    data = synthetic_dataset()
    variant, configs = _configs(name)
    records = [Record() for _ in configs]
    train_population(variant, configs, data, [[r] for r in records], [None] * len(configs))
    for record, config in zip(records, configs):
        alone = _alone(variant, config, data)
        assert record.result.steps == alone.result.steps and record.metrics == alone.metrics
        assert record.weights.keys() == alone.weights.keys()
        assert all(torch.equal(record.weights[k], w) for k, w in alone.weights.items())
        assert torch.equal(record.samples, alone.samples)


def test_a_member_that_diverges_ends_at_its_step_and_the_others_go_on_as_alone(tiny_data):
    """Member 1's |loss/g| limit is below any loss, so it diverges at G step 3 (its window) exactly; its run,
    frozen there, and the two others are each the same as alone."""
    variant, configs = _configs("gan")
    configs[1] = configs[1].replace(g_loss_limit=1e-9, divergence_window=3)
    records = [Record() for _ in configs]
    results = train_population(variant, configs, tiny_data, [[r] for r in records], [None] * len(configs))
    assert [r.status for r in results] == ["finished", "diverged", "finished"]
    assert results[1].reason.startswith("|loss/g| over g_loss_limit at step 3:")
    assert results[1].epochs == 0 and results[0].epochs == results[2].epochs == 3
    for record, config in zip(records, configs):
        _assert_same_run(record, _alone(variant, config, tiny_data))


class StopAt(Hook):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            raise StopTraining("pruned", f"pruned at epoch {state.epoch}")


def test_a_member_pruned_at_an_epoch_ends_there_while_the_others_finish(tiny_data):
    variant, configs = _configs("dcgan")
    records = [Record() for _ in configs]
    hooks = [[records[0]], [StopAt(1), records[1]], [records[2]]]
    results = train_population(variant, configs, tiny_data, hooks, [None] * 3)
    assert [(r.status, r.epochs) for r in results] == [("finished", 3), ("pruned", 1), ("finished", 3)]
    alone = Record()
    train(variant, configs[1], tiny_data, [StopAt(1), alone])
    _assert_same_run(records[1], alone)
    _assert_same_run(records[2], _alone(variant, configs[2], tiny_data))


class BreakAt(Hook):
    """A hook with a bug that shows at one event of one epoch."""

    def __init__(self, event: str, epoch: int):
        self.event, self.epoch = event, epoch

    def _maybe(self, state, event):
        if event == self.event and state.epoch == self.epoch:
            raise RuntimeError(f"broken at {event} of epoch {state.epoch}")

    def on_start(self, state):
        self._maybe(state, "on_start")

    def on_log(self, state, log):
        self._maybe(state, "on_log")

    def on_epoch_end(self, state):
        self._maybe(state, "on_epoch_end")

    def on_stop(self, state, status):
        self._maybe(state, "on_stop")


@pytest.mark.parametrize("event,epoch", [("on_start", 0), ("on_log", 1), ("on_epoch_end", 2), ("on_stop", 3)])
def test_a_member_whose_hook_breaks_stops_there_and_the_others_finish_as_alone(tiny_data, event, epoch):
    """The error is raised once the others have ended; the broken member has no result and trained no further
    (it saw no later epoch), and the others are each their run alone."""
    variant, configs = _configs("gan")
    records = [Record() for _ in configs]
    seen = Record()

    class Epochs(Hook):
        def on_epoch_end(self, state):
            seen.metrics[("epoch", state.epoch)] = 1.0

    hooks = [[records[0]], [Epochs(), BreakAt(event, epoch), records[1]], [records[2]]]
    with pytest.raises(RuntimeError, match=f"broken at {event} of epoch {epoch}"):
        train_population(variant, configs, tiny_data, hooks, [None] * 3)
    assert not hasattr(records[1], "result")  # never ended as if it had trained well
    assert max((e for _, e in seen.metrics), default=0) == epoch  # the epochs it completed, and none after
    for k in (0, 2):
        _assert_same_run(records[k], _alone(variant, configs[k], tiny_data))


def test_members_whose_hooks_break_differently_are_each_raised_with_their_own_error(tiny_data):
    """Members 0 and 2 break at different events and epochs; member 1 finishes as alone, and the error raised
    holds each broken member's own error by its index."""
    variant, configs = _configs("gan")
    records = [Record() for _ in configs]
    hooks = [[BreakAt("on_log", 0), records[0]], [records[1]], [BreakAt("on_epoch_end", 2), records[2]]]
    with pytest.raises(MemberErrors) as raised:
        train_population(variant, configs, tiny_data, hooks, [None] * 3)
    assert {k: str(e) for k, e in raised.value.errors.items()} == \
        {0: "broken at on_log of epoch 0", 2: "broken at on_epoch_end of epoch 2"}
    assert str(raised.value) == "member 0: broken at on_log of epoch 0; member 2: broken at on_epoch_end of epoch 2"
    assert not hasattr(records[0], "result") and not hasattr(records[2], "result")
    _assert_same_run(records[1], _alone(variant, configs[1], tiny_data))


def test_a_single_run_whose_hook_breaks_raises_its_error(tiny_data):
    variant, configs = _configs("gan")
    record = Record()
    with pytest.raises(RuntimeError, match="broken at on_log of epoch 0"):
        train(variant, configs[0], tiny_data, [BreakAt("on_log", 0), record])
    assert not hasattr(record, "result") and record.metrics == {}


@pytest.mark.parametrize("change", [dict(batch_size=8), dict(hidden=(16,)), dict(dropout=0.0), dict(epochs=2)])
def test_members_that_cannot_share_one_step_are_refused(tiny_data, change):
    variant, configs = _configs("gan")
    configs[2] = configs[2].replace(**change)
    with pytest.raises(ConfigError, match="may differ only in"):
        train_population(variant, configs, tiny_data, [[], [], []], [None] * 3)


class InterruptAt(Hook):
    def __init__(self, step: int):
        self.step = step

    def on_log(self, state, log):
        if state.step >= self.step:
            raise KeyboardInterrupt


def interrupted_and_resumed(tmp_path, variant, configs, data) -> tuple[list[Record], list[Record], list[dict], int]:
    """The population trained whole; then trained again with checkpoints, interrupted in epoch 3 and resumed
    from its members' epoch-2 checkpoints. Returns the whole run's records, the resumed run's, the checkpoints
    and the G steps of an epoch."""
    whole = [Record() for _ in configs]
    train_population(variant, configs, data, [[r] for r in whole], [None] * len(configs))
    steps_per_epoch = whole[0].result.steps // configs[0].epochs
    folders = [tmp_path / f"member{k}" for k in range(len(configs))]
    hooks = [[CheckpointHook(folder, "loss", True)] for folder in folders]
    hooks[0].append(InterruptAt(2 * steps_per_epoch + 1))
    with pytest.raises(KeyboardInterrupt):
        train_population(variant, configs, data, hooks, [None] * len(configs))
    saved = [torch.load(folder / "last.pt", weights_only=True) for folder in folders]
    assert [s["epoch"] for s in saved] == [2] * len(configs)
    resumed = [Record() for _ in configs]
    train_population(variant, configs, data, [[r] for r in resumed], saved)
    return whole, resumed, saved, steps_per_epoch


def test_an_interrupted_population_resumes_from_its_members_checkpoints_as_if_never_stopped(tmp_path, tiny_data):
    """Each member leaves its own checkpoint, holding only its own tensors (not the population's stack); the
    three resumed together go on exactly as the population never stopped."""
    variant, configs = _configs("wgan-gp")
    whole, resumed, saved, steps_per_epoch = interrupted_and_resumed(tmp_path, variant, configs, tiny_data)
    for s, config in zip(saved, configs):
        weight = next(iter(s["g"].values()))
        assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
        assert s["config"]["seed"] == config.seed
    for r, w in zip(resumed, whole):
        assert r.result.steps == w.result.steps
        assert all(torch.equal(r.weights[k], w.weights[k]) for k in w.weights)
        assert r.metrics == {key: v for key, v in w.metrics.items() if key[1] > 2 * steps_per_epoch}


def test_the_memory_estimate_counts_parameters_and_activations(monkeypatch):
    """MLP gan with one hidden layer of 32, z 8, on 1x28x28 at batch 16: G has 8*32+32 + 2*32 + 32*784+784
    parameters and D 784*32+32 + 32+1; each member takes 16 bytes a parameter and 48 bytes an activation value
    per image (3 batches a step, 4 float32 copies); half of the free memory goes to members."""
    variant = get_variant("gan")
    config = variant.config(**{**TINY, "dropout": 0.3})
    params = (8 * 32 + 32 + 2 * 32 + 32 * 784 + 784) + (784 * 32 + 32 + 32 + 1)
    # per image, every layer's output: G: its label layer (z as it is, 8), Linear 32, BatchNorm 32, LeakyReLU 32,
    # Linear 784, Tanh 784; D: its label layer (the flat image, 784), Linear 32, LeakyReLU 32, Dropout 32, Linear 1
    outputs = 8 + 32 * 3 + 784 * 2 + 784 + 32 * 3 + 1
    per_member = 16 * params + 48 * config.batch_size * outputs
    monkeypatch.setattr(grouping.torch.cuda, "empty_cache", lambda: None)
    for free in (10 * per_member, 1000 * per_member):
        monkeypatch.setattr(grouping.torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        assert grouping.members_that_fit(variant, config, (1, 28, 28), 10, "cuda") == free // 2 // per_member
