"""Constraints on D, each acting at one of three moments: when D is built, inside its loss, after its step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gansweep.config import TrainConfig

__all__ = ["Regularizer", "REGULARIZERS", "input_gradient"]

Critic = Callable[[Tensor], Tensor]  # images -> one score per image, labels already bound


class Regularizer:
    """No constraint; the base whose hooks the others override."""

    name = "none"
    summary = "no constraint on D"

    def prepare(self, d: nn.Module) -> None:
        """Called once on the freshly built D, before its optimizer sees its parameters."""

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, config: TrainConfig,
                generator: torch.Generator) -> Tensor | None:
        """A term added to D's loss, or None."""
        return None

    def after_step(self, d: nn.Module, config: TrainConfig) -> None:
        """Called after every D optimizer step."""


class WeightClipping(Regularizer):
    name = "weight-clipping"
    summary = "clamp D's weights to [-c, c] after each step (Arjovsky et al. 2017)"

    def after_step(self, d: nn.Module, config: TrainConfig) -> None:
        with torch.no_grad():
            for p in d.parameters():
                p.clamp_(-config.clip_value, config.clip_value)


class GradientPenalty(Regularizer):
    name = "gradient-penalty"
    summary = "lambda * (||grad D(x_hat)|| - 1)^2 on real/fake interpolates (Gulrajani et al. 2017)"

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, config: TrainConfig,
                generator: torch.Generator) -> Tensor:
        alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, generator=generator)
        interpolates = alpha * real + (1 - alpha) * fake
        norms = input_gradient(critic, interpolates).flatten(1).norm(dim=1)
        return config.gp_weight * ((norms - 1) ** 2).mean()


class R1(Regularizer):
    name = "r1"
    summary = "gamma / 2 * ||grad D(x)||^2 on real images (Mescheder et al. 2018)"

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, config: TrainConfig,
                generator: torch.Generator) -> Tensor:
        squared = input_gradient(critic, real).flatten(1).pow(2).sum(dim=1)
        return config.r1_gamma / 2 * squared.mean()


class SpectralNorm(Regularizer):
    name = "spectral-norm"
    summary = "every linear and conv layer of D divided by its spectral norm (Miyato et al. 2018)"

    def prepare(self, d: nn.Module) -> None:
        layers = [m for m in d.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        for layer in layers:
            nn.utils.parametrizations.spectral_norm(layer)


def input_gradient(critic: Critic, x: Tensor) -> Tensor:
    """d(sum of scores)/dx, kept in the graph so that a penalty on it trains D."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad


REGULARIZERS: dict[str, Regularizer] = {r.name: r for r in (
    Regularizer(), WeightClipping(), GradientPenalty(), R1(), SpectralNorm(),
)}
