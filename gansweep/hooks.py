"""What the training loop shows the code around it: a `Hook` is called at named events with the member's
`TrainState`, may end its run with `StopTraining`, and sees how the run ended as a `TrainResult`; the
errors of several members' hooks come back together as `MemberErrors`. Scores, sample
grids, checkpoints, MLflow, Optuna's pruning and progress are all hooks; none of them is in the loop itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.config import TrainConfig
from gansweep.data import DataRecord
from gansweep.errors import first_line
from gansweep.nets import generate
from gansweep.population import MemberOptimizerView
from gansweep.variants import Variant

__all__ = ["Hook", "StepLog", "StopTraining", "MemberErrors", "TrainState", "TrainResult"]


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
    opt_g: MemberOptimizerView
    opt_d: MemberOptimizerView
    rng: torch.Generator  # noise, batch order and penalty interpolation; init uses torch's global RNG
    dropout_rng: torch.Generator  # D's dropout masks
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


class MemberErrors(Exception):
    """The hooks of several members of one population raised: each member's own error, by its index, so that
    each run can be recorded with its own reason."""

    def __init__(self, errors: dict[int, Exception]):
        super().__init__("; ".join(f"member {k}: {first_line(e)}" for k, e in errors.items()))
        self.errors = errors


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
