"""Scores of generated images as pure functions of features, logits and labels.

No model loading, file I/O or logging here, so every function can be checked against numbers worked out by hand
and against torchmetrics. Features come from the dataset's classifier (see classifier.py); the names end in
`_proxy` where a published score (FID, KID, IS) is meant but measured in that feature space instead of Inception's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GaussianStats", "gaussian_stats", "frechet_distance", "kid", "classifier_score", "class_coverage",
           "digit_predictions", "neighbour_radii", "precision_recall", "conditional_accuracy", "parzen_log_likelihood"]


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
    Non-finite statistics are refused: they have no distance, and LAPACK's eigenvalue routine may crash on them.
    The eigenvalues are taken on one thread (`_one_thread`).
    """
    for side, stats in (("a", a), ("b", b)):
        if not (torch.isfinite(stats.mean).all() and torch.isfinite(stats.cov).all()):
            raise ValueError(f"frechet_distance needs finite statistics; {side} has a non-finite mean or covariance")
    with _one_thread():
        eigenvalues = torch.linalg.eigvals(a.cov @ b.cov).real.clamp(min=0)
    trace_sqrt = eigenvalues.sqrt().sum()
    distance = (a.mean - b.mean).square().sum() + a.cov.trace() + b.cov.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch's CPU threads set to one for the block. LAPACK's general eigenvalue routine splits its work by the
    thread count and rounds differently at some counts (measured on a 2-core AMD EPYC: at every count from 4 to 16
    for one matrix, at 5, 12 and 16 for another), so a score taken on one thread is the same whatever the
    machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cubic_kernel(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None, memo: dict[tuple, Tensor] | None = None) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3: mean and std over random subsets.

    Subsets are drawn as torchmetrics draws them (a permutation of the real set, then of the fake set, per
    subset), so the same generator state gives the same subsets. The three kernel matrices are computed once;
    a subset's sum over a matrix is u^T K v for the subsets' 0/1 indicator vectors u and v, all subsets in one
    matrix product, rather than a copy of each m x m block. Every sum runs along rows of a fixed length, so the
    result does not depend on how many threads split the work.

    `memo`, a dict the caller keeps for this one real set, holds the real subsets' own sums, keyed by the
    subsets drawn: they depend on nothing else, so a real set scored against many fake ones with the same draws
    works out its kernel matrix once (a third of the work), to the same result.
    """
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    x, y = real.to(torch.float64), fake.to(torch.float64)
    drawn = [(torch.randperm(len(x), generator=generator)[:m], torch.randperm(len(y), generator=generator)[:m])
             for _ in range(subsets)]
    i = torch.stack([a for a, _ in drawn])
    j = torch.stack([b for _, b in drawn]).to(x.device)
    key = (tuple(i.shape), i.numpy().tobytes())
    i = i.to(x.device)
    u = torch.zeros(subsets, len(x), dtype=torch.float64, device=x.device).scatter_(1, i, 1.0)
    v = torch.zeros(subsets, len(y), dtype=torch.float64, device=x.device).scatter_(1, j, 1.0)

    def block_sums(left: Tensor, matrix: Tensor, right: Tensor) -> Tensor:
        return ((left @ matrix) * right).sum(dim=1)

    within_real = None if memo is None else memo.get(key)
    if within_real is None:
        k_xx = _cubic_kernel(x, x)
        within_real = block_sums(u, k_xx, u) - k_xx.diagonal()[i].sum(dim=1)
        if memo is not None:
            memo[key] = within_real
    k_yy, k_xy = _cubic_kernel(y, y), _cubic_kernel(x, y)
    within = (within_real + block_sums(v, k_yy, v) - k_yy.diagonal()[j].sum(dim=1)) / (m * (m - 1))
    scores = within - 2 * block_sums(u, k_xy, v) / m**2
    return float(scores.mean()), float(scores.std(unbiased=False))


def classifier_score(logits: Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), the Inception Score's formula on the classifier: 1 to the number of classes."""
    log_p = torch.log_softmax(logits.to(torch.float64), dim=1)
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
    return float((log_p.exp() * (log_p - log_marginal)).sum(dim=1).mean().exp())


def digit_predictions(logits: Tensor, confidence: float = 0.5) -> tuple[Tensor, float]:
    """(the class of each sample called a digit with probability at least `confidence`, the share called "not a
    digit"). The last logit is the rejection class; a sample between classes counts in neither."""
    probabilities = torch.softmax(logits.to(torch.float64), dim=1)
    top, cls = probabilities.max(dim=1)
    rejected = cls == logits.shape[1] - 1
    return cls[~rejected & (top >= confidence)], float(rejected.to(torch.float64).mean())


def class_coverage(classes: Tensor, n_classes: int, fair_share: float = 0.5) -> tuple[float, float]:
    """(fraction of classes that get at least `fair_share` of a uniform share of `classes`, KL(histogram ||
    uniform)). A generator collapsed onto one digit of ten scores (0.1, log 10); with no sample to count, the
    histogram is no better than that: (0, log n_classes)."""
    if len(classes) == 0:
        return 0.0, math.log(n_classes)
    histogram = torch.bincount(classes, minlength=n_classes).to(torch.float64) / len(classes)
    covered = int((histogram >= fair_share / n_classes).sum())
    nonzero = histogram[histogram > 0]
    return covered / n_classes, float((nonzero * (nonzero * n_classes).log()).sum())


def neighbour_radii(x: Tensor, k: int = 3) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    x = x.float()
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the first is the point itself, at 0


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, real_radii: Tensor | None = None
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
    reaching each point's k-th neighbour; precision is the share of fake points inside the real manifold,
    recall the share of real points inside the fake one. `real_radii`, `neighbour_radii(real, k)` where the
    caller holds it already: a real set scored against many fake ones needs it once."""
    real, fake = real.float(), fake.float()
    if real_radii is None:
        real_radii = neighbour_radii(real, k)
    distances = torch.cdist(real, fake)  # (n_real, n_fake)
    precision = (distances <= real_radii[:, None]).any(dim=0).float().mean()
    recall = (distances <= neighbour_radii(fake, k)[None, :]).any(dim=1).float().mean()
    return float(precision), float(recall)


def conditional_accuracy(logits: Tensor, labels: Tensor) -> float:
    """How often the classifier names the label a conditional generator was asked for."""
    return float((logits.argmax(dim=1) == labels).float().mean())


def parzen_log_likelihood(samples: Tensor, points: Tensor, sigma: float, chunk: int = 500) -> Tensor:
    """Per-point log-likelihood of `points` under a Gaussian Parzen window of bandwidth sigma centred on each
    sample (Goodfellow et al. 2014), in float64; inputs are flattened."""
    s, p = samples.flatten(1).to(torch.float64), points.flatten(1).to(torch.float64)
    dim = s.shape[1]
    normaliser = math.log(len(s)) + dim / 2 * math.log(2 * math.pi * sigma**2)
    out = [torch.logsumexp(-torch.cdist(p[i:i + chunk], s).square() / (2 * sigma**2), dim=1) - normaliser
           for i in range(0, len(p), chunk)]
    return torch.cat(out)
