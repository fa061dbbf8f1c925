"""Which runs can train together in one population, and how many of them fit on a CUDA device."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gansweep.config import TrainConfig
from gansweep.variants import Variant

__all__ = ["MEMBER_FIELDS", "member_key", "members_that_fit"]

# What may differ between the members of one population; every other field (architecture, widths, z size,
# n_critic, batch size, optimizer, epochs, whether D has dropout at all) shapes the shared step.
MEMBER_FIELDS = ("lr", "lr_g", "lr_d", "betas", "dropout", "label_smoothing", "clip_value", "gp_weight",
                 "r1_gamma", "seed", "divergence_window", "g_loss_limit", "n_samples")


def member_key(config: TrainConfig) -> tuple[Any, ...]:
    """Configs with equal keys can train in one population."""
    values = config.to_dict()
    return tuple(v for k, v in sorted(values.items()) if k not in MEMBER_FIELDS) + (config.dropout > 0,)


def members_that_fit(variant: Variant, config: TrainConfig, image_shape: tuple[int, int, int], n_classes: int,
                     device: torch.device) -> int:
    """How many members of `config` fit in half of the CUDA device's free memory, by a generous estimate: per
    member, parameters with their gradients and two moments (4 copies), and every layer's output for the step's
    batches kept for the backward pass and its gradient (a D update sees 2 batches, G's update 1; 4 copies)."""
    g, d = variant.build(config, image_shape, n_classes)
    outputs = [0]

    def layer(name: str, module: nn.Module) -> bool:  # a leaf, or a layer whose weight is parametrized
        return "parametrizations" not in name and (not list(module.children()) or hasattr(module, "parametrizations"))

    hooks = [m.register_forward_hook(lambda _, __, out: outputs.__setitem__(0, outputs[0] + out.numel()))
             for net in (g, d) for name, m in net.named_modules() if layer(name, m)]
    with torch.no_grad():
        labels = torch.zeros(2, dtype=torch.long) if variant.conditioning_part.conditional else None
        d(g(torch.zeros(2, config.z_dim), labels), labels)
    for hook in hooks:
        hook.remove()
    params = sum(p.numel() for net in (g, d) for p in net.parameters())
    per_member = 4 * 4 * params + 4 * 4 * 3 * config.batch_size * outputs[0] // 2
    torch.cuda.empty_cache()  # what the allocator still holds from an earlier population is free to use
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, free // 2 // per_member)
