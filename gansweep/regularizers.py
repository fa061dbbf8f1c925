"""Constraints on D, each acting at one of three moments: when D is built, inside its loss, after its step.

They are written for the trainer's step, which runs under torch.func transforms (vmap over the members of a
population, grad for the update): a penalty takes its interpolation draw and its strength as tensors, a
constraint acts in place on D's stacked parameters with one bound per member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gansweep.config import TrainConfig

__all__ = ["Regularizer", "REGULARIZERS", "input_gradient"]

Critic = Callable[[Tensor], Tensor]  # images -> one score per image, labels already bound


class Regularizer:
    """No constraint; the base whose hooks the others override."""

    name = "none"
    summary = "no constraint on D"
    draws_alpha = False  # the penalty needs one uniform draw per image (interpolation weights)
    critic_calls = 0  # extra calls of D the penalty makes per D step (each takes its dropout masks)
    reads: tuple[str, ...] = ()  # the TrainConfig fields it uses

    def prepare(self, d: nn.Module) -> None:
        """Called once on the freshly built D, before its optimizer sees its parameters."""

    def strength(self, config: TrainConfig) -> float:
        """The penalty's weight in this config (the tensor `penalty` is given holds one per member)."""
        return 0.0

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, alpha: Tensor | None,
                strength: Tensor) -> Tensor | None:
        """A term added to D's loss, or None; `alpha`, when `draws_alpha`, holds one U(0, 1) per image."""
        return None

    def constrain(self, params: Sequence[Tensor], clip_value: Tensor) -> None:
        """Called after every D update on D's parameters, stacked over members, with one bound per member."""


class WeightClipping(Regularizer):
    name = "weight-clipping"
    summary = "clamp D's weights to [-c, c] after each step (Arjovsky et al. 2017)"
    reads = ("clip_value",)

    def constrain(self, params: Sequence[Tensor], clip_value: Tensor) -> None:
        with torch.no_grad():
            for p in params:
                bound = clip_value.view(-1, *(1,) * (p.dim() - 1))
                p.copy_(torch.minimum(torch.maximum(p, -bound), bound))


class GradientPenalty(Regularizer):
    name = "gradient-penalty"
    summary = "lambda * (||grad D(x_hat)|| - 1)^2 on real/fake interpolates (Gulrajani et al. 2017)"
    draws_alpha, critic_calls = True, 1
    reads = ("gp_weight",)

    def strength(self, config: TrainConfig) -> float:
        return config.gp_weight

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, alpha: Tensor | None,
                strength: Tensor) -> Tensor:
        alpha = alpha.view(-1, *(1,) * (real.dim() - 1))
        interpolates = alpha * real + (1 - alpha) * fake
        norms = input_gradient(critic, interpolates).flatten(1).norm(dim=1)
        return strength * ((norms - 1) ** 2).mean()


class R1(Regularizer):
    name = "r1"
    summary = "gamma / 2 * ||grad D(x)||^2 on real images (Mescheder et al. 2018)"
    critic_calls = 1
    reads = ("r1_gamma",)

    def strength(self, config: TrainConfig) -> float:
        return config.r1_gamma

    def penalty(self, critic: Critic, real: Tensor, fake: Tensor, alpha: Tensor | None,
                strength: Tensor) -> Tensor:
        squared = input_gradient(critic, real).flatten(1).pow(2).sum(dim=1)
        return strength / 2 * squared.mean()


class _SpectralNormOf(nn.Module):
    """W / sigma(W), sigma by one power iteration per training-mode call, as torch's spectral_norm computes it
    (same buffers `_u`, `_v`, so checkpoints load either way). Its own because torch's writes the iteration with
    `out=`, which vmap cannot batch."""

    def __init__(self, weight: Tensor, eps: float = 1e-12):
        super().__init__()
        matrix = weight.flatten(1)
        self.eps = eps
        u = F.normalize(matrix.new_empty(matrix.shape[0]).normal_(0, 1), dim=0, eps=eps)
        v = F.normalize(matrix.new_empty(matrix.shape[1]).normal_(0, 1), dim=0, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self._power_iteration(matrix.detach(), 15)  # start near the top singular vectors, as torch does

    @torch.no_grad()
    def _power_iteration(self, matrix: Tensor, n: int) -> None:
        for _ in range(n):
            self._u.copy_(F.normalize(matrix @ self._v, dim=0, eps=self.eps))
            self._v.copy_(F.normalize(matrix.mT @ self._u, dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.flatten(1)
        if self.training:
            self._power_iteration(matrix.detach(), 1)
        # copies: the next call's iteration changes the buffers in place, and this call's backward needs them
        sigma = torch.dot(self._u.clone(), matrix @ self._v.clone())
        return weight / sigma


class SpectralNorm(Regularizer):
    name = "spectral-norm"
    summary = "every linear and conv layer of D divided by its spectral norm (Miyato et al. 2018)"

    def prepare(self, d: nn.Module) -> None:
        layers = [m for m in d.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        for layer in layers:
            parametrize.register_parametrization(layer, "weight", _SpectralNormOf(layer.weight))


def input_gradient(critic: Critic, x: Tensor) -> Tensor:
    """d(sum of scores)/dx, kept in the graph so that a penalty on it trains D (torch.func's grad: it nests
    inside vmap and inside the step's own gradient, torch.func's or autograd's)."""
    return torch.func.grad(lambda images: critic(images).sum())(x)


REGULARIZERS: dict[str, Regularizer] = {r.name: r for r in (
    Regularizer(), WeightClipping(), GradientPenalty(), R1(), SpectralNorm(),
)}
