"""The one training loop, shared by every variant and every population size; the variant's parts decide what
each step computes, `Population` computes it for all members at once, and on CUDA the step is captured once in a
CUDA graph and replayed (`step_graph.StepGraph`).

A step is: n_critic D updates (loss part + regularizer part, each on a fresh batch), then one G update. A single
run is a population of one. Step metrics stay on the device in a small buffer and reach the host in one copy every
`log_every` G steps, so the loop itself never waits on the device; divergence is judged on that copy
(`DivergenceCheck`, per member) and on G's and D's weights once per epoch. Members end one by one (diverged,
pruned, ...): an ended member is no longer updated and its run is closed while the others go on; so is a member
whose hook raised an error, which `train_population` raises once the others are done (`MemberErrors`, each
member's own, where several did). Everything around the loop
(tracking, pruning, progress, sample grids, checkpoints) is a `Hook` (hooks.py), one set per member; this module
imports neither mlflow nor optuna.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gansweep import step_graph
from gansweep.checkpoint import restore
from gansweep.config import TrainConfig
from gansweep.data import Dataset
from gansweep.divergence import DivergenceCheck, first_non_finite
from gansweep.errors import ConfigError
from gansweep.grouping import MEMBER_FIELDS, member_key
from gansweep.hooks import Hook, MemberErrors, StepLog, StopTraining, TrainResult, TrainState
from gansweep.population import DROPOUT_SEED_OFFSET, Population
from gansweep.variants import Variant

__all__ = ["train", "train_population", "resolve_device", "g_steps_per_epoch", "FIXED_NOISE_SEED"]

FIXED_NOISE_SEED = 1234  # one z for the sample grids of every run, so grids compare across trials and seeds


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


def _weights(state: TrainState) -> dict[str, Tensor]:
    """G's and D's parameters and buffers: BatchNorm's running statistics shape G's samples as much as weights."""
    return {f"{net}.{name}": t for net, module in (("g", state.g), ("d", state.d))
            for name, t in module.state_dict().items()}


def _fixed_z(config: TrainConfig) -> Tensor:
    return torch.randn(config.n_samples, config.z_dim, generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))


def _generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@dataclass
class _Member:
    """One run inside the loop: its state and hooks, and where it stands."""

    state: TrainState
    hooks: Sequence[Hook]
    divergence: DivergenceCheck
    index: int
    stopped: list[str] | None = None  # (status, reason): stopped before its first step (at on_start, or resumed
    # from a checkpoint of a run that a hook had already stopped)
    result: TrainResult | None = None
    error: Exception | None = None  # raised by one of its hooks: it trains no further, and has no result

    @property
    def live(self) -> bool:
        return self.result is None and self.error is None


def _checkpoint(member: _Member, started: float, stopped: StopTraining | None = None) -> None:
    """Fill `state.resume` and call every hook's on_checkpoint; `stopped`: the run ends here, and a resume of
    this checkpoint ends the same way at once."""
    state, hooks = member.state, member.hooks
    state.resume = {"divergence": member.divergence.state_dict(), "wall_time_s": _wall_time(state, started),
                    "scores": dict(state.scores), "notes": dict(state.notes), "last": dict(state.last),
                    "stopped": None if stopped is None else [stopped.status, stopped.reason],
                    "hooks": {type(h).__name__: h.state_dict() for h in hooks if h.state_dict()}}
    for hook in hooks:
        hook.on_checkpoint(state)


def _check_members(configs: Sequence[TrainConfig], hooks: Sequence[Sequence[Hook]],
                   resumes: Sequence[dict[str, Any] | None]) -> None:
    if not configs or len(hooks) != len(configs) or len(resumes) != len(configs):
        raise ValueError("a population needs one config, one hook list and one resume (or None) per member")
    if len({member_key(c) for c in configs}) > 1:
        raise ConfigError("the members of one population may differ only in " + ", ".join(MEMBER_FIELDS))
    epochs = {0 if r is None else r["epoch"] for r in resumes}
    if len(epochs) > 1:
        raise ConfigError(f"the members of one population must resume from the same epoch, got {sorted(epochs)}")


def train(variant: Variant, config: TrainConfig, data: Dataset, hooks: Sequence[Hook] = (),
          resume: dict[str, Any] | None = None) -> TrainResult:
    """Train `variant` on `data` (already on its device) for `config.epochs` and report how it ended;
    `resume`, a resumable checkpoint of the same run, continues it from that checkpoint's epoch."""
    return train_population(variant, [config], data, [hooks], [resume])[0]


def train_population(variant: Variant, configs: Sequence[TrainConfig], data: Dataset,
                     hooks: Sequence[Sequence[Hook]], resumes: Sequence[dict[str, Any] | None]
                     ) -> list[TrainResult]:
    """Train one run per config together, each exactly as `train` would alone, and report how each ended.
    The configs must share `member_key`; `hooks[k]` and `resumes[k]` belong to member k. An error raised by a
    member's hook (not StopTraining) stops that member where it is, leaving its run to the caller as a failure
    (its last checkpoint is whole); the others train on, and once they end the error is raised (`MemberErrors`,
    holding each one's, where several members' hooks raised)."""
    _check_members(configs, hooks, resumes)
    config = configs[0]
    device = data.train_images.device
    n_train = data.train_images.shape[0]
    steps_per_epoch = g_steps_per_epoch(config, n_train)
    conditional = variant.conditioning_part.conditional
    modules = []
    for c in configs:
        torch.manual_seed(c.seed)
        g, d = variant.build(c, data.record.image_shape, data.record.n_classes)
        modules.append((g.to(device), d.to(device)))
    population = Population(variant, configs, [g for g, _ in modules], [d for _, d in modules],
                            data.record.image_shape, data.record.n_classes, device)
    members = []
    for k, (c, (g, d)) in enumerate(zip(configs, modules)):
        opt_g, opt_d = population.optimizer_views(k)
        fixed_labels = (torch.arange(c.n_samples, device=device) % data.record.n_classes) if conditional else None
        state = TrainState(variant=variant, config=c, data=data.record, device=device, g=g, d=d, opt_g=opt_g,
                           opt_d=opt_d, rng=_generator(device, c.seed),
                           dropout_rng=_generator(device, c.seed + DROPOUT_SEED_OFFSET),
                           fixed_z=_fixed_z(c).to(device), fixed_labels=fixed_labels)
        member = _Member(state, hooks[k], DivergenceCheck(c, variant.loss_part.probabilistic), k)
        if resumes[k] is not None:
            restore(state, resumes[k], member.hooks, member.divergence)
            member.stopped = resumes[k]["resume"]["stopped"]
        members.append(member)
    names = population.metric_names
    buffer = torch.zeros(config.log_every, population.k, len(names), device=device)
    pending: list[int] = []  # G step numbers (of the live members) in the buffer
    clock = {"time": time.perf_counter(), "images": members[0].state.images_seen}
    started = time.perf_counter()

    rngs = [m.state.rng for m in members]
    dropout_rngs = [m.state.dropout_rng for m in members]
    step = step_graph.StepGraph(population, data.train_images, data.train_labels if conditional else None, rngs,
                                dropout_rngs, capture=step_graph.captures(device))

    def stop(member: _Member) -> None:
        population.end(member.index)
        # the step still draws for every member: an ended one's own generators are left as they ended
        rngs[member.index], dropout_rngs[member.index] = _generator(device, 0), _generator(device, 0)

    def fail(member: _Member, error: Exception) -> None:
        if member.live:
            stop(member)
        member.error = error

    def end(member: _Member, status: str, reason: str) -> None:
        stop(member)
        try:
            for hook in member.hooks:
                hook.on_stop(member.state, status)
            result = _result(member.state, status, reason, started)
            member.result = result
            for hook in member.hooks:
                hook.on_end(member.state, result)
        except Exception as e:
            member.result, member.error = None, e

    def flush() -> None:
        if not pending:
            return
        rows = buffer[:len(pending)].tolist()  # the loop's one host sync
        now = time.perf_counter()
        live = [m for m in members if m.live]
        images = live[0].state.images_seen if live else clock["images"]
        rate = (images - clock["images"]) / max(now - clock["time"], 1e-9)
        clock.update(time=now, images=images)
        steps = list(pending)
        pending.clear()
        for member in live:
            metrics = {name: [row[member.index][i] for row in rows] for i, name in enumerate(names)}
            reason = member.divergence.update(steps, metrics)
            if reason is not None:
                end(member, "diverged", reason)
                continue
            member.state.last = {name: values[-1] for name, values in metrics.items()}
            log = StepLog(steps=steps, metrics=metrics, images_per_s=rate)
            try:
                for hook in member.hooks:
                    hook.on_log(member.state, log)
            except StopTraining as e:
                end(member, e.status, e.reason)
            except Exception as e:
                fail(member, e)

    def epoch_end(member: _Member) -> None:
        state = member.state
        # an update after the epoch's last logged loss can still overflow: no score or checkpoint may see it
        bad = first_non_finite(_weights(state))
        if bad is not None:
            end(member, "diverged", f"non-finite weight {bad} at step {state.step}")
            return
        state.epoch += 1
        try:
            for hook in member.hooks:
                hook.on_epoch_end(state)
            _checkpoint(member, started)
        except StopTraining as e:  # the epoch is whole: checkpoint it, and a resume ends the same way
            try:
                _checkpoint(member, started, e)
            except Exception as error:
                fail(member, error)
                return
            end(member, e.status, e.reason)
        except Exception as e:
            fail(member, e)

    try:
        for member in members:
            try:
                for hook in member.hooks:
                    hook.on_start(member.state)
            except StopTraining as e:
                member.stopped = [e.status, e.reason]
            except Exception as e:
                fail(member, e)
        for member in members:
            if not member.live:
                continue
            if member.stopped is not None:
                end(member, *member.stopped)
            elif member.state.epoch >= member.state.config.epochs:
                end(member, "finished", f"completed {member.state.config.epochs} epochs")
        per_step = config.n_critic * config.batch_size
        while any(m.live for m in members):
            orders = torch.stack([torch.randperm(n_train, device=device, generator=r) for r in rngs])
            for g_step in range(steps_per_epoch):  # every live member is at the same step
                idx = orders[:, g_step * per_step:(g_step + 1) * per_step].reshape(
                    population.k, config.n_critic, config.batch_size)
                buffer[len(pending)] = step(idx)
                for member in members:
                    if member.live:
                        member.state.step += 1
                        member.state.d_steps += config.n_critic
                        member.state.images_seen += per_step
                pending.append(next(m for m in members if m.live).state.step)
                if len(pending) == config.log_every:
                    flush()
                if not any(m.live for m in members):
                    break
            flush()
            for member in members:
                if member.live:
                    epoch_end(member)
            for member in members:
                if member.live and member.state.epoch >= member.state.config.epochs:
                    end(member, "finished", f"completed {member.state.config.epochs} epochs")
    except KeyboardInterrupt as e:
        for member in members:
            if not member.live:
                continue
            result = _result(member.state, "interrupted", str(e) or "interrupted by the user", started)
            for hook in member.hooks:
                try:
                    hook.on_end(member.state, result)
                except Exception:  # a store gone as well: the interrupt is what ends the run, and what is raised
                    pass
        raise
    errors = {m.index: m.error for m in members if m.error is not None}
    if len(errors) == 1:
        raise next(iter(errors.values()))
    if errors:
        raise MemberErrors(errors)
    return [m.result for m in members]


def _wall_time(state: TrainState, started: float) -> float:
    return state.wall_time_s + time.perf_counter() - started


def _result(state: TrainState, status: str, reason: str, started: float) -> TrainResult:
    return TrainResult(status=status, reason=reason, epochs=state.epoch, steps=state.step,
                       images_seen=state.images_seen, wall_time_s=_wall_time(state, started),
                       last=dict(state.last), scores=dict(state.scores), notes=dict(state.notes))
