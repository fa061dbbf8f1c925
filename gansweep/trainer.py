"""The one training loop, shared by every variant; the variant's parts decide what each step computes.

A step is: n_critic D updates (loss part + regularizer part, each on a fresh batch), then one G update. Step
metrics stay on the device in a small buffer and reach the host in one copy every `log_every` G steps, so the
loop itself never waits on the device; divergence is judged on that copy (`DivergenceCheck`) and on G's and D's
weights once per epoch. Everything around the loop (tracking, pruning, progress, sample grids,
checkpoints) is a `Hook`; this module imports neither mlflow nor optuna.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.config import TrainConfig
from gansweep.data import DataRecord, Dataset
from gansweep.errors import ConfigError
from gansweep.nets import generate
from gansweep.variants import Variant

__all__ = ["Hook", "StepLog", "StopTraining", "TrainState", "TrainResult", "train", "resolve_device",
           "g_steps_per_epoch", "DivergenceCheck", "first_non_finite", "FIXED_NOISE_SEED", "SATURATED_REAL",
           "SATURATED_FAKE"]

FIXED_NOISE_SEED = 1234  # one z for the sample grids of every run, so grids compare across trials and seeds
# A saturated D: mean D(x) above SATURATED_REAL and mean D(G(z)) below SATURATED_FAKE, i.e. D tells real from
# fake with near certainty and has won the game. Healthy runs pass through it for a few G steps at a time (at
# most 6 in a row measured on mnist-5k, dcgan at lr 3e-3); only a run that stays there is lost.
SATURATED_REAL, SATURATED_FAKE = 0.99, 0.01


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def g_steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    """G steps in one pass of D over `n_train` images; a budget that allows none is refused."""
    steps = n_train // config.batch_size // config.n_critic
    if steps < 1:
        raise ConfigError(f"batch_size * n_critic must not exceed the {n_train} training images, "
                          f"got {config.batch_size} * {config.n_critic}")
    return steps


@dataclass
class StepLog:
    """Step metrics of the G steps since the last log, fetched from the device in one copy."""

    steps: list[int]  # G step numbers, 1-based
    metrics: dict[str, list[float]]  # name -> one value per step
    images_per_s: float  # images seen by D per second of wall time over these steps


@dataclass
class TrainState:
    """Everything a hook may look at; hooks must not change the networks or optimizers."""

    variant: Variant
    config: TrainConfig
    data: DataRecord
    device: torch.device
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator  # noise, batch order and penalty interpolation; dropout and init use torch's global RNG
    fixed_z: Tensor
    fixed_labels: Tensor | None
    epoch: int = 0  # epochs completed
    step: int = 0  # G updates done
    d_steps: int = 0  # D updates done
    images_seen: int = 0  # real images shown to D
    last: dict[str, float] = field(default_factory=dict)  # latest logged value of each step metric
    scores: dict[str, float] = field(default_factory=dict)  # latest per-epoch scores, filled by scoring hooks
    notes: dict[str, str] = field(default_factory=dict)  # events to record with the run, e.g. mode_collapse
    wall_time_s: float = 0.0  # training time before this process took the run over (a resumed run)
    resume: dict[str, Any] = field(default_factory=dict)  # at a checkpoint: what the loop and each hook need

    @property
    def conditional(self) -> bool:
        return self.fixed_labels is not None

    def fixed_samples(self) -> Tensor:
        return generate(self.g, self.fixed_z, self.fixed_labels)


@dataclass(frozen=True)
class TrainResult:
    status: str  # finished, diverged, or what a hook's StopTraining said (pruned, ...)
    reason: str
    epochs: int
    steps: int
    images_seen: int
    wall_time_s: float
    last: dict[str, float]
    scores: dict[str, float]
    notes: dict[str, str]


class StopTraining(Exception):
    """Raised by a hook to end training cleanly with a status and a reason (pruning, for one)."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class Hook:
    """Called by `train` at named events. Every method is optional; the default does nothing."""

    def on_start(self, state: TrainState) -> None:
        """Before the first step."""

    def on_log(self, state: TrainState, log: StepLog) -> None:
        """Every `log_every` G steps and at each epoch's end, with finite values only."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each epoch, once its metrics are logged and G's and D's weights are found finite; `state.epoch`
        is the number just completed."""

    def on_checkpoint(self, state: TrainState) -> None:
        """At an epoch's end once every hook's on_epoch_end has run (also when one of them stopped the run
        there): the moment `state`, with `state.resume` filled from every hook's state_dict, is whole enough to
        continue from."""

    def on_stop(self, state: TrainState, status: str) -> None:
        """Once training has ended (not when it is interrupted), before its result is made: the last moment a
        hook may add to `state.notes`, for a judgement of the whole run."""

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        """Once, however training ended (KeyboardInterrupt too, with status 'interrupted', before it propagates)."""

    def state_dict(self) -> dict[str, Any]:
        """What this hook needs to go on after a resume (plain values only); empty for a stateless hook."""
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take back what state_dict gave, before on_start of a resumed run."""


class _Diverged(Exception):
    pass


class DivergenceCheck:
    """Judges each host copy of the step metrics, in step order. A non-finite value ends a run at once; a
    saturated D (probabilistic losses only: other critics' values are not probabilities) or |loss/g| above
    `g_loss_limit` ends it once held for `divergence_window` G steps in a row (0: never). A finite loss can
    mean a lost run too, but one bad step is noise, so the rules count; the counts carry across copies."""

    def __init__(self, config: TrainConfig, probabilistic: bool):
        self.window, self.g_loss_limit = config.divergence_window, config.g_loss_limit
        self.probabilistic = probabilistic
        self.saturated = self.g_loss_high = 0  # consecutive G steps breaking each rule, up to the last one seen

    def state_dict(self) -> dict[str, int]:
        return {"saturated": self.saturated, "g_loss_high": self.g_loss_high}

    def load_state_dict(self, saved: dict[str, int]) -> None:
        self.saturated, self.g_loss_high = saved["saturated"], saved["g_loss_high"]

    def update(self, steps: Sequence[int], metrics: dict[str, list[float]]) -> str | None:
        """Why the run diverged at one of `steps`, or None; `metrics` holds one value per step for each name."""
        for i, step in enumerate(steps):
            bad = next((name for name, values in metrics.items() if not math.isfinite(values[i])), None)
            if bad is not None:
                return f"non-finite {bad} at step {step}"
            if not self.window:
                continue
            saturated = (self.probabilistic and metrics["d/real"][i] > SATURATED_REAL
                         and metrics["d/fake"][i] < SATURATED_FAKE)
            self.saturated = self.saturated + 1 if saturated else 0
            self.g_loss_high = self.g_loss_high + 1 if abs(metrics["loss/g"][i]) > self.g_loss_limit else 0
            if self.saturated >= self.window:
                return (f"saturated D at step {step}: mean D(x) > {SATURATED_REAL} and mean D(G(z)) < "
                        f"{SATURATED_FAKE} for {self.window} G steps in a row")
            if self.g_loss_high >= self.window:
                return (f"|loss/g| over g_loss_limit at step {step}: above {self.g_loss_limit:g} for {self.window} "
                        f"G steps in a row")
        return None


def first_non_finite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None; one device sync."""
    named = [(name, t) for name, t in tensors.items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(finite.all()):
        return None
    return next(name for (name, _), ok in zip(named, finite.tolist()) if not ok)


def _weights(state: TrainState) -> dict[str, Tensor]:
    """G's and D's parameters and buffers: BatchNorm's running statistics shape G's samples as much as weights."""
    return {f"{net}.{name}": t for net, module in (("g", state.g), ("d", state.d))
            for name, t in module.state_dict().items()}


def _optimizer(config: TrainConfig, params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, betas=config.betas)


def _grad_norm(params: Sequence[nn.Parameter]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))


def _new_state(variant: Variant, config: TrainConfig, data: Dataset) -> TrainState:
    device = data.train_images.device
    torch.manual_seed(config.seed)
    g, d = variant.build(config, data.record.image_shape, data.record.n_classes)
    g, d = g.to(device), d.to(device)
    rng = torch.Generator(device=device)
    rng.manual_seed(config.seed)
    fixed_rng = torch.Generator(device="cpu")
    fixed_rng.manual_seed(FIXED_NOISE_SEED)
    fixed_z = torch.randn(config.n_samples, config.z_dim, generator=fixed_rng).to(device)
    conditional = variant.conditioning_part.conditional
    fixed_labels = (torch.arange(config.n_samples, device=device) % data.record.n_classes) if conditional else None
    return TrainState(variant=variant, config=config, data=data.record, device=device, g=g, d=d,
                      opt_g=_optimizer(config, list(g.parameters()), config.g_lr),
                      opt_d=_optimizer(config, list(d.parameters()), config.d_lr),
                      rng=rng, fixed_z=fixed_z, fixed_labels=fixed_labels)


def _resume(state: TrainState, saved: dict[str, Any], hooks: Sequence[Hook], divergence: DivergenceCheck) -> None:
    """Put a resumable checkpoint back: after it the loop goes on as if it had never stopped."""
    for module, key in ((state.g, "g"), (state.d, "d"), (state.opt_g, "opt_g"), (state.opt_d, "opt_d")):
        module.load_state_dict(saved[key])
    torch.set_rng_state(saved["rng"]["torch"])
    state.rng.set_state(saved["rng"]["loop"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state.epoch, state.step, state.d_steps = saved["epoch"], saved["step"], saved["d_steps"]
    state.images_seen, state.wall_time_s = saved["images_seen"], saved["resume"]["wall_time_s"]
    state.scores, state.notes, state.last = (dict(saved["resume"][k]) for k in ("scores", "notes", "last"))
    divergence.load_state_dict(saved["resume"]["divergence"])
    for hook in hooks:
        if type(hook).__name__ in saved["resume"]["hooks"]:
            hook.load_state_dict(saved["resume"]["hooks"][type(hook).__name__])


def _checkpoint(state: TrainState, hooks: Sequence[Hook], divergence: DivergenceCheck, started: float,
                stopped: StopTraining | None = None) -> None:
    """Fill `state.resume` and call every hook's on_checkpoint; `stopped`: the run ends here, and a resume of
    this checkpoint ends the same way at once."""
    state.resume = {"divergence": divergence.state_dict(), "wall_time_s": _wall_time(state, started),
                    "scores": dict(state.scores), "notes": dict(state.notes), "last": dict(state.last),
                    "stopped": None if stopped is None else [stopped.status, stopped.reason],
                    "hooks": {type(h).__name__: h.state_dict() for h in hooks if h.state_dict()}}
    for hook in hooks:
        hook.on_checkpoint(state)


def train(variant: Variant, config: TrainConfig, data: Dataset, hooks: Sequence[Hook] = (),
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train `variant` on `data` (already on its device) for `config.epochs` and report how it ended;
    `resume`, a resumable checkpoint of the same run, continues it from that checkpoint's epoch."""
    n_train = data.train_images.shape[0]
    steps_per_epoch = g_steps_per_epoch(config, n_train)
    state = _new_state(variant, config, data)
    loss, regularizer = variant.loss_part, variant.regularizer_part
    real_target = 1.0 - config.label_smoothing
    names = ["loss/d", "loss/g", "d/real", "d/fake", "grad_norm/d", "grad_norm/g"]
    if loss.wasserstein_estimate:
        names.append("wasserstein/estimate")
    buffer = torch.zeros(config.log_every, len(names), device=state.device)
    pending: list[int] = []
    clock = {"time": time.perf_counter(), "images": 0}
    divergence = DivergenceCheck(config, loss.probabilistic)
    stopped: list[str] | None = None  # a resumed checkpoint of a run that a hook had already stopped
    if resume is not None:
        _resume(state, resume, hooks, divergence)
        clock["images"] = state.images_seen
        stopped = resume["resume"]["stopped"]
    checkpointed = state.epoch
    g_params, d_params = list(state.g.parameters()), list(state.d.parameters())
    device = state.device

    def noise(n: int) -> Tensor:
        return torch.randn(n, config.z_dim, device=device, generator=state.rng)

    def flush() -> None:
        if not pending:
            return
        rows = buffer[:len(pending)].tolist()  # the loop's one host sync
        now = time.perf_counter()
        rate = (state.images_seen - clock["images"]) / max(now - clock["time"], 1e-9)
        clock.update(time=now, images=state.images_seen)
        metrics = {name: [row[i] for row in rows] for i, name in enumerate(names)}
        reason = divergence.update(pending, metrics)
        if reason is not None:
            pending.clear()
            raise _Diverged(reason)
        log = StepLog(steps=list(pending), metrics=metrics, images_per_s=rate)
        state.last = {name: values[-1] for name, values in metrics.items()}
        pending.clear()
        for hook in hooks:
            hook.on_log(state, log)

    status, reason = ("finished", f"completed {config.epochs} epochs") if stopped is None else stopped
    started = time.perf_counter()
    try:
        for hook in hooks:
            hook.on_start(state)
        while stopped is None and state.epoch < config.epochs:
            order = torch.randperm(n_train, device=device, generator=state.rng)
            for g_step in range(steps_per_epoch):
                for critic_step in range(config.n_critic):
                    start = (g_step * config.n_critic + critic_step) * config.batch_size
                    idx = order[start:start + config.batch_size]
                    real = data.train_images[idx]
                    labels = data.train_labels[idx] if state.conditional else None
                    with torch.no_grad():
                        fake = state.g(noise(len(idx)), labels)

                    def critic(x: Tensor) -> Tensor:
                        return state.d(x, labels)

                    real_score, fake_score = critic(real), critic(fake)
                    loss_d = loss.d_loss(real_score, fake_score, real_target)
                    penalty = regularizer.penalty(critic, real, fake, config, state.rng)
                    if penalty is not None:
                        loss_d = loss_d + penalty
                    state.opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    grad_d = _grad_norm(d_params)
                    state.opt_d.step()
                    regularizer.after_step(state.d, config)
                    state.d_steps += 1
                    state.images_seen += len(idx)

                g_labels = (torch.randint(0, data.record.n_classes, (config.batch_size,), device=device,
                                          generator=state.rng) if state.conditional else None)
                g_score = state.d(state.g(noise(config.batch_size), g_labels), g_labels)
                loss_g = loss.g_loss(g_score)
                state.opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                grad_g = _grad_norm(g_params)
                state.opt_g.step()
                state.step += 1

                real_score, fake_score = real_score.detach(), fake_score.detach()
                values = [loss_d.detach(), loss_g.detach(), loss.d_of(real_score).mean(),
                          loss.d_of(fake_score).mean(), grad_d, grad_g]
                if loss.wasserstein_estimate:
                    values.append(real_score.mean() - fake_score.mean())
                buffer[len(pending)] = torch.stack(values)
                pending.append(state.step)
                if len(pending) == config.log_every:
                    flush()
            flush()
            # an update after the epoch's last logged loss can still overflow: no score or checkpoint may see it
            bad = first_non_finite(_weights(state))
            if bad is not None:
                raise _Diverged(f"non-finite weight {bad} at step {state.step}")
            state.epoch += 1
            for hook in hooks:
                hook.on_epoch_end(state)
            _checkpoint(state, hooks, divergence, started)
            checkpointed = state.epoch
    except _Diverged as e:
        status, reason = "diverged", str(e)
    except StopTraining as e:
        status, reason = e.status, e.reason
        if state.epoch > checkpointed:  # a hook stopped the run at an epoch's end: that epoch is whole
            _checkpoint(state, hooks, divergence, started, e)
    except KeyboardInterrupt as e:
        result = _result(state, "interrupted", str(e) or "interrupted by the user", started)
        for hook in hooks:
            try:
                hook.on_end(state, result)
            except Exception:  # a store gone as well: the interrupt is what ends the run, and what is raised
                pass
        raise
    for hook in hooks:
        hook.on_stop(state, status)
    result = _result(state, status, reason, started)
    for hook in hooks:
        hook.on_end(state, result)
    return result


def _wall_time(state: TrainState, started: float) -> float:
    return state.wall_time_s + time.perf_counter() - started


def _result(state: TrainState, status: str, reason: str, started: float) -> TrainResult:
    return TrainResult(status=status, reason=reason, epochs=state.epoch, steps=state.step,
                       images_seen=state.images_seen, wall_time_s=_wall_time(state, started),
                       last=dict(state.last), scores=dict(state.scores), notes=dict(state.notes))
