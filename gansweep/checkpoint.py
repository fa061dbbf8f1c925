"""Checkpoints: everything needed to sample from a run, or to continue it, in one atomically written file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gansweep.atomic import atomic_path
from gansweep.config import TrainConfig
from gansweep.data import DataRecord
from gansweep.errors import GansweepError
from gansweep.trainer import Hook, TrainState, first_non_finite
from gansweep.variants import Variant, get_variant

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointHook"]

CHECKPOINT_FORMAT = 1  # raise when the layout below changes, so that old files are refused with a clear reason


def save_checkpoint(state: TrainState, path: Path) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "variant": state.variant.name,
        "config": state.config.to_dict(),
        "data": state.data.to_dict(),
        "epoch": state.epoch, "step": state.step, "d_steps": state.d_steps, "images_seen": state.images_seen,
        "g": state.g.state_dict(), "d": state.d.state_dict(),
        "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "loop": state.rng.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's generator rebuilt from its variant's parts, in inference mode."""

    variant: Variant
    config: TrainConfig
    data: DataRecord
    g: nn.Module
    epoch: int
    step: int
    raw: dict[str, Any]

    @property
    def n_classes(self) -> int:
        return self.variant.conditioning_part.n_classes(self.data.n_classes)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """The checkpoint's generator, rebuilt; a file that is missing, foreign, of another format or holding
    non-finite weights (nothing can be sampled or scored from those) is refused with one line."""
    if not path.is_file():
        raise GansweepError(f"no checkpoint at {path}")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not how pickle failed
        raise GansweepError(f"{path} is not a readable gansweep checkpoint ({type(e).__name__})") from None
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise GansweepError(f"{path} has checkpoint format {raw.get('format')!r}; "
                            f"this gansweep reads format {CHECKPOINT_FORMAT}")
    bad = first_non_finite({f"{net}.{name}": t for net in ("g", "d") for name, t in raw[net].items()})
    if bad is not None:
        raise GansweepError(f"{path} holds non-finite values in tensor {bad} (damaged, or saved by a run that had "
                            f"diverged): nothing can be sampled or scored from it; try --checkpoint best or last")
    variant = get_variant(raw["variant"])
    config = TrainConfig().replace(**raw["config"])
    data = DataRecord(**{**raw["data"], "image_shape": tuple(raw["data"]["image_shape"])})
    g, _ = variant.build(config, data.image_shape, data.n_classes)
    g.load_state_dict(raw["g"])
    g.to(device).eval()
    return Checkpoint(variant, config, data, g, raw["epoch"], raw["step"], raw)


class CheckpointHook(Hook):
    """Replaces `checkpoint.pt` after every epoch; the previous one stays intact until the new one is whole."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, state: TrainState) -> None:
        save_checkpoint(state, self.path)
