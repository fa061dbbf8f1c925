"""Adversarial losses as pure functions of D's raw outputs.

Every D here outputs one unbounded score per image. For the probabilistic losses the score is a logit and
D(x) = sigmoid(score); for the others it is the critic value itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Loss", "LOSSES"]


@dataclass(frozen=True)
class Loss:
    """A pair of objectives to minimise: D's, given real and fake scores and the real target, and G's."""

    name: str
    summary: str
    d_loss: Callable[[Tensor, Tensor, Tensor | float], Tensor]  # the real target is a tensor in the step
    g_loss: Callable[[Tensor], Tensor]
    has_real_target: bool  # False: label smoothing has no meaning and is rejected
    probabilistic: bool  # scores are logits: D(x) is reported as sigmoid(score), else the raw critic value
    wasserstein_estimate: bool  # mean D(x) - mean D(G(z)) estimates the Wasserstein distance

    def d_of(self, score: Tensor) -> Tensor:
        """D's output as reported in the metrics: a probability for the probabilistic losses."""
        return torch.sigmoid(score) if self.probabilistic else score


def _bce_d(real: Tensor, fake: Tensor, real_target: Tensor | float) -> Tensor:
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real) * real_target)
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def _minimax_g(fake: Tensor) -> Tensor:
    # minimise log(1 - D(G(z))) = -softplus(score); saturates when D rejects fakes confidently
    return -F.softplus(fake).mean()


def _non_saturating_g(fake: Tensor) -> Tensor:
    # minimise -log D(G(z)) = softplus(-score); strong gradients early in training (Goodfellow et al. 2014)
    return F.softplus(-fake).mean()


def _wasserstein_d(real: Tensor, fake: Tensor, real_target: Tensor | float) -> Tensor:
    return fake.mean() - real.mean()


def _critic_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _least_squares_d(real: Tensor, fake: Tensor, real_target: Tensor | float) -> Tensor:
    # a-b-c coding with a = 0, b = real_target, c = 1 (Mao et al. 2017)
    return 0.5 * ((real - real_target) ** 2).mean() + 0.5 * (fake ** 2).mean()


def _least_squares_g(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1) ** 2).mean()


def _hinge_d(real: Tensor, fake: Tensor, real_target: Tensor | float) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (
    Loss("minimax", "saturating log(1 - D(G(z))) of the original GAN paper", _bce_d, _minimax_g,
         has_real_target=True, probabilistic=True, wasserstein_estimate=False),
    Loss("non-saturating", "G maximises log D(G(z)) (Goodfellow et al. 2014)", _bce_d, _non_saturating_g,
         has_real_target=True, probabilistic=True, wasserstein_estimate=False),
    Loss("wasserstein", "critic difference of means (Arjovsky et al. 2017)", _wasserstein_d, _critic_g,
         has_real_target=False, probabilistic=False, wasserstein_estimate=True),
    Loss("least-squares", "squared error to the targets (Mao et al. 2017)", _least_squares_d, _least_squares_g,
         has_real_target=True, probabilistic=False, wasserstein_estimate=False),
    Loss("hinge", "margin loss for D, critic mean for G (Lim & Ye 2017)", _hinge_d, _critic_g,
         has_real_target=False, probabilistic=False, wasserstein_estimate=False),
)}
