"""Scores of a generator as pure functions: features(images) -> stats(features) -> score(stats_a, stats_b).

No model loading, file I/O or logging here, so every function can be checked against numbers worked out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GaussianStats", "gaussian_stats", "frechet_distance", "pixel_features", "SCORES"]


@dataclass(frozen=True)
class GaussianStats:
    mean: Tensor  # float64, (d,)
    cov: Tensor  # float64, (d, d)


def gaussian_stats(features: Tensor) -> GaussianStats:
    """Mean and unbiased covariance in float64: float32 loses the trace terms' small differences."""
    x = features.detach().to(torch.float64)
    return GaussianStats(x.mean(dim=0), torch.cov(x.T))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of S_a S_b, which are real and
    non-negative for covariance matrices; taking them directly avoids the unstable general matrix square root.
    """
    eigenvalues = torch.linalg.eigvals(a.cov @ b.cov).real.clamp(min=0)
    trace_sqrt = eigenvalues.sqrt().sum()
    distance = (a.mean - b.mean).square().sum() + a.cov.trace() + b.cov.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))


def pixel_features(images: Tensor) -> Tensor:
    """Images average-pooled to 7x7 per channel and flattened: a feature space that needs no trained network."""
    return F.adaptive_avg_pool2d(images, 7).flatten(1)


# name -> (features, score over stats); the objective of a study is a name in this table.
SCORES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[GaussianStats, GaussianStats], float]]] = {
    "fid_pixel": (pixel_features, frechet_distance),
}
