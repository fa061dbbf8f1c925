"""When a run is lost: judged on the host copy of its step metrics and on its weights once per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gansweep.config import TrainConfig

__all__ = ["DivergenceCheck", "first_non_finite", "SATURATED_REAL", "SATURATED_FAKE"]

# A saturated D: mean D(x) above SATURATED_REAL and mean D(G(z)) below SATURATED_FAKE, i.e. D tells real from
# fake with near certainty and has won the game. Healthy runs pass through it for a few G steps at a time (at
# most 6 in a row measured on mnist-5k, dcgan at lr 3e-3); only a run that stays there is lost.
SATURATED_REAL, SATURATED_FAKE = 0.99, 0.01


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
