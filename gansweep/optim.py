"""Adam and RMSprop over stacked member parameters, with one learning rate (and betas) per member.

torch.optim keeps one scalar learning rate per parameter group, so K members stacked along a leading axis cannot
each have their own. These follow torch.optim's single-tensor arithmetic step for step (a test holds them to it),
with every hyperparameter a float64 tensor of shape (K,) broadcast over the member axis (the per-step scalars are
worked out in float64, as torch.optim does in Python, then cast), and update in place: the tensors keep their
addresses from step to step, as a captured CUDA graph needs. A step that is not vmapped updates each member on
its own slices (`step_each`), where Adam runs the kernel of torch.optim.Adam(fused=True) with the member's own
scalars: one pass over each tensor instead of six, about a third of an MLP GAN's step on the CPU.
`state_dict`/`load_state_dict` speak torch.optim's format for one member, so a checkpoint stays loadable by
torch.optim and older ones resume.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MemberOptimizer", "Adam", "RMSprop"]


def _per_member(values: Tensor, like: Tensor) -> Tensor:
    """(K,) -> (K, 1, ..., 1), broadcastable against a stacked tensor `like` of shape (K, ...)."""
    return values.view(-1, *(1,) * (like.dim() - 1))


def _only_active(grad: Tensor, active: Tensor) -> Tensor:
    """Zero for members that have ended: with a zero weight as well, their parameters and moments stay exactly as
    they are, even where their gradient is not finite (0 * inf would be NaN)."""
    return torch.where(_per_member(active.bool(), grad), grad, 0.0)


class MemberOptimizer(abc.ABC):
    """Steps `params`, a list of stacked tensors (K, ...), given their gradients. A subclass names its moments
    (torch.optim's state keys), the torch.optim class whose format it speaks, and its update."""

    moment_names: tuple[str, ...]
    torch_class: type[torch.optim.Optimizer]

    def __init__(self, params: Sequence[Tensor], lr: Tensor):
        self.params, self.lr = list(params), lr.double()
        self.steps = torch.zeros_like(self.lr, dtype=torch.float32)  # as torch.optim counts: a float32 tensor
        self.every = torch.ones_like(self.lr)  # the mask of a step where no member has ended
        self.moments = {name: [torch.zeros_like(p) for p in self.params] for name in self.moment_names}

    def step(self, grads: Sequence[Tensor], active: Tensor | None = None) -> None:
        """One update of every member whose `active` entry is 1 (a float mask of shape (K,)); others stay as
        they are, their moments too. None: every member, as the caller knows without asking the device, so no
        pass over the gradients masks them."""
        if active is None:
            active = self.every
        else:
            active = active.double()
            grads = [_only_active(g, active) for g in grads]
        self.steps.add_(active)
        self._update(grads, active)

    def step_each(self, grads: Sequence[Tensor], members: Sequence[int]) -> None:
        """One update of each of `members` (the others stay as they are), for a step that is not vmapped. Here:
        the stacked step, masked unless every member is listed; a subclass with a per-member kernel uses it."""
        active = None
        if len(members) < len(self.lr):
            active = torch.zeros_like(self.lr)
            active[list(members)] = 1.0
        self.step(grads, active)

    def _cast(self, *values: Tensor) -> list[Tensor]:
        """Per-step (K,) scalars, worked out in float64, in the parameters' dtype: cast once for all tensors."""
        return [v.to(self.params[0].dtype) for v in values]

    @abc.abstractmethod
    def _update(self, grads: Sequence[Tensor], active: Tensor) -> None:
        """The update itself, given gradients already zero for inactive members and `steps` already counted."""

    @abc.abstractmethod
    def _hyperparameters(self, member: int) -> dict[str, Any]:
        """One member's keyword arguments to `torch_class`."""

    def state_dict(self, member: int) -> dict[str, Any]:
        """torch.optim's state_dict for one member, as its own optimizer over that member's parameters would save."""
        params = [nn.Parameter(p[member].detach()) for p in self.params]
        template = self.torch_class(params, **self._hyperparameters(member)).state_dict()
        step = self.steps[member].detach().float().cpu()  # torch.optim keeps a float32 step
        template["state"] = {i: {"step": step.clone(), **{name: moment[i][member].detach().clone()
                                                         for name, moment in self.moments.items()}}
                             for i in range(len(self.params))} if float(step) > 0 else {}
        return template

    def load_state_dict(self, member: int, saved: dict[str, Any]) -> None:
        """Put back one member's state from torch.optim's state_dict (ours or torch.optim's own)."""
        if not saved["state"]:
            return
        self.steps[member] = float(saved["state"][0]["step"])
        for name, moment in self.moments.items():
            for i, tensor in enumerate(moment):
                tensor[member].copy_(saved["state"][i][name])


class Adam(MemberOptimizer):
    """torch.optim.Adam without weight decay or amsgrad; `betas` has shape (K, 2)."""

    moment_names, torch_class = ("exp_avg", "exp_avg_sq"), torch.optim.Adam
    eps = 1e-8  # torch.optim.Adam's default

    def __init__(self, params: Sequence[Tensor], lr: Tensor, betas: Tensor):
        super().__init__(params, lr)
        self.betas = betas.double()
        self._scalars = list(zip(self.lr.tolist(), self.betas.tolist()))  # per member, for step_each

    def step_each(self, grads: Sequence[Tensor], members: Sequence[int]) -> None:
        """Each member's slices through torch.optim.Adam(fused=True)'s kernel (bit for bit, a test holds it), with
        its own learning rate and betas. The kernel reads the step count, which is counted here as torch.optim
        does before calling it, and takes every tensor as contiguous, as torch.optim's gradients are (autograd's
        through a penalty need not be)."""
        for k in members:
            lr, (beta1, beta2) = self._scalars[k]
            step = self.steps[k]
            step.add_(1)
            torch._fused_adam_([p[k] for p in self.params], [g[k].contiguous() for g in grads],
                               [m[k] for m in self.moments["exp_avg"]], [v[k] for v in self.moments["exp_avg_sq"]],
                               [], [step] * len(self.params), lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=self.eps, amsgrad=False, maximize=False)

    def _update(self, grads: Sequence[Tensor], active: Tensor) -> None:
        beta1, beta2 = self.betas[:, 0], self.betas[:, 1]
        step = self.steps.clamp(min=1)  # an inactive member before its first step: no division by zero
        w1, w2 = (1 - beta1) * active, (1 - beta2) * active
        step_size = self.lr * active / (1 - beta1 ** step)
        inverse_bias_correction2_sqrt = (1 - beta2 ** step).rsqrt()
        w1, w2, step_size, inverse_bias_correction2_sqrt = self._cast(w1, w2, step_size, inverse_bias_correction2_sqrt)
        for p, g, m, v in zip(self.params, grads, self.moments["exp_avg"], self.moments["exp_avg_sq"]):
            m.lerp_(g, _per_member(w1, p))
            v.lerp_(g.square(), _per_member(w2, p))
            denom = v.sqrt().mul_(_per_member(inverse_bias_correction2_sqrt, p)).add_(self.eps)
            p.addcdiv_(m * _per_member(step_size, p), denom, value=-1)

    def _hyperparameters(self, member: int) -> dict[str, Any]:
        return {"lr": float(self.lr[member]), "betas": tuple(float(b) for b in self.betas[member])}


class RMSprop(MemberOptimizer):
    """torch.optim.RMSprop with its defaults: alpha 0.99, no momentum, not centred."""

    moment_names, torch_class = ("square_avg",), torch.optim.RMSprop
    alpha, eps = 0.99, 1e-8

    def _update(self, grads: Sequence[Tensor], active: Tensor) -> None:
        weight, lr = self._cast((1 - self.alpha) * active, self.lr * active)
        for p, g, s in zip(self.params, grads, self.moments["square_avg"]):
            s.lerp_(g.square(), _per_member(weight, p))
            p.addcdiv_(g * _per_member(lr, p), s.sqrt().add_(self.eps), value=-1)

    def _hyperparameters(self, member: int) -> dict[str, Any]:
        return {"lr": float(self.lr[member])}
