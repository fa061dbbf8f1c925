"""K runs of one variant trained as one: their networks stacked along a leading member axis, one step for all.

The step is a function of the stacked state (G's and D's parameters and buffers, the optimizers' moments) and of
per-member hyperparameter tensors (learning rates, betas, real target, dropout rate, penalty strength, clip value),
applied with `torch.func.functional_call` under `torch.func.vmap` over the members on CUDA, where one batched kernel
instead of K small ones is the point. On the CPU the same function is called on each member's slice in turn
(`VECTORIZE_ON_CPU`): there vmap gains little or nothing and its batched kernels round differently, while a member
stepped alone is bit for bit the run alone, so a study gives the same table whatever its population size. A
population of one is never vmapped. A member stepped alone takes its gradients from plain autograd
(`_autograd_grad_and_value`), the same function as torch.func's `grad_and_value`, which only vmap needs: on the CPU
torch.func's transform costs about a fifth of an MLP step; and it is updated on its own slices, by torch's fused
Adam kernel where the optimizer is Adam (`MemberOptimizer.step_each`). Every random draw is made outside vmap from each
member's own generators, in the order a run alone makes it, so a member trains the same network, step for step,
as the same run trained alone. Nothing in the step syncs with the host or changes shape from step to step.

Each member keeps a plain G and D (`Population.g[k]`, `.d[k]`) whose tensors are views of its slice of the stack
while it trains: hooks, checkpoints and scores see an ordinary module, always current. A member that ends gets copies
of its own, which the others' steps no longer reach.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from gansweep.config import TrainConfig
from gansweep.nets import dropout_masks, dropout_shapes
from gansweep.optim import Adam, MemberOptimizer, RMSprop
from gansweep.variants import Variant

__all__ = ["Population", "MemberOptimizerView", "METRICS", "DROPOUT_SEED_OFFSET", "VECTORIZE_ON_CPU"]

METRICS = ("loss/d", "loss/g", "d/real", "d/fake", "grad_norm/d", "grad_norm/g")  # + wasserstein/estimate
# Dropout masks come from a generator of their own, seeded with seed + this offset: above every trial seed
# (MAX_SEED = 2**32 - 1), so a run's masks never repeat another run's noise.
DROPOUT_SEED_OFFSET = 2**32
# Measured on 2 CPU cores (2026-12-02): vmap over 4 members gains 1.07-1.3x for the MLP gan and nothing for the
# convolutional variants, and moves results by float rounding; the tests set this to hold the vmapped step, the
# one CUDA runs, to each member's run alone.
VECTORIZE_ON_CPU = False

Tensors = dict[str, Tensor]


def _member_of(value: Any, k: int) -> Any:
    """Member k's slice of a stacked tensor, of each tensor in a dict or list; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {n: t[k] for n, t in value.items()}
    if isinstance(value, list):
        return [t[k] for t in value]
    return value[k]


def _stack(modules: Sequence[nn.Module]) -> tuple[Tensors, Tensors]:
    """Members' parameters and buffers stacked (K, ...), then each module's tensors pointed at its slice."""
    own_params = [dict(m.named_parameters()) for m in modules]
    own_buffers = [dict(m.named_buffers()) for m in modules]
    params = {name: torch.stack([p[name].detach() for p in own_params]) for name in own_params[0]}
    buffers = {name: torch.stack([b[name] for b in own_buffers]) for name in own_buffers[0]}
    for k, module in enumerate(modules):
        _point(module, {n: t[k] for n, t in params.items()}, {n: t[k] for n, t in buffers.items()})
    return params, buffers


def _point(module: nn.Module, params: Tensors, buffers: Tensors) -> None:
    for name, tensor in params.items():
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    for name, tensor in buffers.items():
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = tensor


def _optimizer(configs: Sequence[TrainConfig], params: Tensors, lr: Tensor, device: torch.device
               ) -> MemberOptimizer:
    if configs[0].optimizer == "rmsprop":
        return RMSprop(list(params.values()), lr)
    return Adam(list(params.values()), lr, torch.tensor([c.betas for c in configs], dtype=torch.float64,
                                                        device=device))


def _call(module: nn.Module, tensors: tuple[Tensors, Tensors], args: tuple[Any, ...]) -> Tensor:
    """`module` run on a member's own tensors. No net here ties weights, so functional_call's search for tied
    ones, a walk over every submodule at every call, is skipped."""
    return functional_call(module, tensors, args, tie_weights=False)


def _autograd_grad_and_value(objective: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """torch.func.grad_and_value (gradient with respect to the first argument, a dict of tensors) by
    torch.autograd.grad, for a step that is not vmapped."""
    def run(params: Tensors, *rest: Any) -> tuple[Tensors, Any]:
        leaves = {n: t.detach().requires_grad_() for n, t in params.items()}
        out = objective(leaves, *rest)
        value = out[0] if has_aux else out
        grads = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()), allow_unused=True,
                                                     materialize_grads=True)))  # zeros where unused, as torch.func
        return grads, ((value.detach(), out[1]) if has_aux else value.detach())

    return run


def _norm(grads: Tensors) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))


class MemberOptimizerView:
    """One member's share of a MemberOptimizer, with torch.optim's state_dict/load_state_dict."""

    def __init__(self, optimizer: MemberOptimizer, member: int):
        self.optimizer, self.member = optimizer, member

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict(self.member)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(self.member, saved)


class Population:
    """The members' stacked state and the step that trains them; `configs` differ only where a member may."""

    def __init__(self, variant: Variant, configs: Sequence[TrainConfig], gs: Sequence[nn.Module],
                 ds: Sequence[nn.Module], image_shape: tuple[int, int, int], n_classes: int, device: torch.device):
        self.k, self.device = len(configs), device
        config = configs[0]
        self.batch, self.z_dim, self.n_critic = config.batch_size, config.z_dim, config.n_critic
        self.loss, self.regularizer = variant.loss_part, variant.regularizer_part
        self.conditional, self.n_classes = variant.conditioning_part.conditional, n_classes
        self.g_shape, self.d_shape = copy.deepcopy(gs[0]), copy.deepcopy(ds[0])  # structure for functional_call
        self.g, self.d = list(gs), list(ds)
        self.g_params, self.g_buffers = _stack(gs)
        self.d_params, self.d_buffers = _stack(ds)

        def per_member(values: Sequence[float], dtype: torch.dtype | None = None) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.real_target = per_member([1.0 - c.label_smoothing for c in configs])
        self.strength = per_member([self.regularizer.strength(c) for c in configs])
        self.clip_value = per_member([c.clip_value for c in configs])
        self.dropout = per_member([c.dropout for c in configs])
        self.opt_g = _optimizer(configs, self.g_params, per_member([c.g_lr for c in configs], torch.float64), device)
        self.opt_d = _optimizer(configs, self.d_params, per_member([c.d_lr for c in configs], torch.float64), device)
        self.active = torch.ones(self.k, device=device)  # 0: the member has ended and is no longer updated
        self.open = list(range(self.k))  # those not ended: the host knows without asking the device

        def shapes(n: int) -> list[torch.Size]:  # the masks one call of D on n images takes
            labels = torch.zeros(n, dtype=torch.long, device=device) if self.conditional else None
            return dropout_shapes(ds[0], torch.zeros(n, *image_shape, device=device), labels)

        # per D update: one call on real and fake together, then the penalty's calls; then G's update, one call
        self.d_mask_shapes = shapes(2 * self.batch) + shapes(self.batch) * self.regularizer.critic_calls
        self.g_mask_shapes = shapes(self.batch)
        self.metric_names = list(METRICS) + (["wasserstein/estimate"] if self.loss.wasserstein_estimate else [])

    def optimizer_views(self, member: int) -> tuple[MemberOptimizerView, MemberOptimizerView]:
        return MemberOptimizerView(self.opt_g, member), MemberOptimizerView(self.opt_d, member)

    def end(self, member: int) -> None:
        """Stop updating `member` and give its G and D tensors of their own: what it ended with stays as it is."""
        self.active[member] = 0.0
        self.open.remove(member)
        for module in (self.g[member], self.d[member]):
            _point(module, {n: p.detach().clone() for n, p in module.named_parameters()},
                   {n: b.clone() for n, b in module.named_buffers()})

    @property
    def _vectorized(self) -> bool:
        return self.k > 1 and (self.device.type != "cpu" or VECTORIZE_ON_CPU)

    def _grad_and_value(self, objective: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
        return (grad_and_value if self._vectorized else _autograd_grad_and_value)(objective, has_aux=has_aux)

    def _map(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn` over the member axis of every tensor in `args` (None and dicts of tensors allowed): vmapped, or
        called on each member's slice and the results stacked."""
        if self._vectorized:
            return vmap(fn, in_dims=tuple(None if a is None else 0 for a in args))(*args)
        outs = [fn(*(_member_of(a, k) for a in args)) for k in range(self.k)]
        if self.k == 1:  # a member axis of views, not copies
            return tuple({n: t.unsqueeze(0) for n, t in o.items()} if isinstance(o, dict) else o.unsqueeze(0)
                         for o in outs[0])
        return tuple({n: torch.stack([o[i][n] for o in outs]) for n in outs[0][i]} if isinstance(outs[0][i], dict)
                     else torch.stack([o[i] for o in outs]) for i in range(len(outs[0])))

    def _update(self, optimizer: MemberOptimizer, grads: list[Tensor]) -> None:
        """Vmapped: one masked step of the stack (unmasked while no member has ended). Otherwise each open member
        on its own slices, as it would be alone."""
        if not self._vectorized:
            optimizer.step_each(grads, self.open)
        else:
            optimizer.step(grads, self.active if len(self.open) < self.k else None)

    def _masks(self, dropout_rngs: Sequence[torch.Generator]) -> list[Tensor]:
        """Every dropout mask of one step, (K, *shape) each, in call order; drawn from each member's generator."""
        shapes = self.d_mask_shapes * self.n_critic + self.g_mask_shapes
        if not shapes:
            return []
        sizes = [s.numel() for s in shapes]
        u = torch.stack([torch.rand(sum(sizes), device=self.device, generator=r) for r in dropout_rngs])
        p = self.dropout.view(-1, 1)
        masks = u.ge_(p).div_(1 - p)  # in place: (u >= p) / (1 - p), without three tensors the size of u
        return [m.view(self.k, *s) for m, s in zip(masks.split(sizes, dim=1), shapes)]

    def step(self, real: Tensor, labels: Tensor | None, rngs: Sequence[torch.Generator],
             dropout_rngs: Sequence[torch.Generator]) -> Tensor:
        """One G step of every member: n_critic D updates on real[:, c], then one G update. `real` is
        (K, n_critic, B, ...), `labels` (K, n_critic, B) or None. Returns the step metrics, (K, len(metric_names))."""
        masks = self._masks(dropout_rngs)
        per_d = len(self.d_mask_shapes)

        def each(draw: Callable[[torch.Generator], Tensor]) -> Tensor:  # one draw per member, from its generator
            return torch.stack([draw(r) for r in rngs])

        def noise(r: torch.Generator) -> Tensor:
            return torch.randn(self.batch, self.z_dim, device=self.device, generator=r)

        for c in range(self.n_critic):
            z = each(noise)
            alpha = (each(lambda r: torch.rand(self.batch, device=self.device, generator=r))
                     if self.regularizer.draws_alpha else None)
            d_masks = masks[c * per_d:(c + 1) * per_d] if per_d else None
            grads, loss_d, d_real, d_fake, grad_d, estimate = self._map(
                self._d_grads, self.d_params, self.d_buffers, self.g_params, self.g_buffers, real[:, c],
                None if labels is None else labels[:, c], z, alpha, d_masks, self.real_target, self.strength)
            self._update(self.opt_d, [grads[n] for n in self.d_params])
            self.regularizer.constrain(list(self.d_params.values()), self.clip_value)
        g_labels = (each(lambda r: torch.randint(0, self.n_classes, (self.batch,), device=self.device, generator=r))
                    if self.conditional else None)
        z = each(noise)
        grads, loss_g, grad_g = self._map(self._g_grads, self.g_params, self.g_buffers, self.d_params,
                                          self.d_buffers, g_labels, z, masks[per_d * self.n_critic:] or None)
        self._update(self.opt_g, [grads[n] for n in self.g_params])
        values = [loss_d, loss_g, d_real, d_fake, grad_d, grad_g] + ([estimate] if self.loss.wasserstein_estimate
                                                                     else [])
        return torch.stack(values, dim=1)

    def _d_grads(self, d_params: Tensors, d_buffers: Tensors, g_params: Tensors, g_buffers: Tensors, real: Tensor,
                 labels: Tensor | None, z: Tensor, alpha: Tensor | None, masks: list[Tensor] | None,
                 real_target: Tensor, strength: Tensor) -> tuple[Any, ...]:
        """One member's D gradient and metrics (the function vmapped over members)."""
        with torch.no_grad():
            fake = _call(self.g_shape, (g_params, g_buffers), (z, labels))

        def objective(params: Tensors, buffers: Tensors) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            def critic(x: Tensor) -> Tensor:  # the penalty's calls
                return _call(self.d_shape, (params, buffers), (x, labels))

            with dropout_masks(iter(masks or ())):
                # one pass over real and fake together: fewer, larger kernels (D has no BatchNorm to mix them)
                both = _call(self.d_shape, (params, buffers), (torch.cat([real, fake]),
                                                               None if labels is None else
                                                               torch.cat([labels, labels])))
                real_score, fake_score = both[:len(real)], both[len(real):]
                loss_d = self.loss.d_loss(real_score, fake_score, real_target)
                penalty = self.regularizer.penalty(critic, real, fake, alpha, strength)
            if penalty is not None:
                loss_d = loss_d + penalty
            return loss_d, (real_score.detach(), fake_score.detach())

        grads, (loss_d, (real_score, fake_score)) = self._grad_and_value(objective, has_aux=True)(d_params, d_buffers)
        return (grads, loss_d.detach(), self.loss.d_of(real_score).mean(), self.loss.d_of(fake_score).mean(),
                _norm(grads), real_score.mean() - fake_score.mean())

    def _g_grads(self, g_params: Tensors, g_buffers: Tensors, d_params: Tensors, d_buffers: Tensors,
                 labels: Tensor | None, z: Tensor, masks: list[Tensor] | None) -> tuple[Any, ...]:
        """One member's G gradient and loss."""
        def objective(params: Tensors, buffers: Tensors, critic_buffers: Tensors) -> Tensor:
            fake = _call(self.g_shape, (params, buffers), (z, labels))
            with dropout_masks(iter(masks or ())):
                return self.loss.g_loss(_call(self.d_shape, (d_params, critic_buffers), (fake, labels)))

        grads, loss_g = self._grad_and_value(objective)(g_params, g_buffers, d_buffers)
        return grads, loss_g.detach(), _norm(grads)
