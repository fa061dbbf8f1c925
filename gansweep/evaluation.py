"""Scoring a run while it trains: G's samples against the held-out split after every epoch."""

from __future__ import annotations

import torch
from torch import Tensor

from gansweep.metrics import SCORES, GaussianStats, gaussian_stats
from gansweep.trainer import Hook, TrainState

__all__ = ["ScoreHook", "EVAL_NOISE_SEED"]

EVAL_NOISE_SEED = 4321  # the same evaluation noise every epoch, so a score's change is G's change
_CHUNK = 500  # images generated per forward pass while scoring


class ScoreHook(Hook):
    """Puts `score/NAME` into `state.scores` after every epoch, for each name in metrics.SCORES.

    The real statistics are computed once, at the start; each epoch only generates and featurises n images.
    """

    def __init__(self, real_images: Tensor, n: int):
        self.real = real_images[:n]
        self.n = len(self.real)
        self.reference: dict[str, GaussianStats] = {}

    def on_start(self, state: TrainState) -> None:
        for name, (features, _) in SCORES.items():
            self.reference[name] = gaussian_stats(features(self.real))
        rng = torch.Generator(device="cpu").manual_seed(EVAL_NOISE_SEED)
        self.z = torch.randn(self.n, state.config.z_dim, generator=rng).to(state.device)
        self.labels = (torch.arange(self.n, device=state.device) % state.data.n_classes
                       if state.conditional else None)

    def on_epoch_end(self, state: TrainState) -> None:
        fake = torch.cat([state.sample(self.z[i:i + _CHUNK],
                                       None if self.labels is None else self.labels[i:i + _CHUNK])
                          for i in range(0, self.n, _CHUNK)])
        for name, (features, score) in SCORES.items():
            state.scores[f"score/{name}"] = score(gaussian_stats(features(fake)), self.reference[name])
