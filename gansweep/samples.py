"""Sample grids: fixed-noise images of a generator laid out as one picture."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor
from torchvision.utils import save_image

from gansweep.atomic import atomic_path
from gansweep.hooks import Hook, TrainState

__all__ = ["save_grid", "grid_columns", "SampleGridHook"]


def grid_columns(n_images: int, n_classes: int = 0) -> int:
    """One column per class for conditional samples (labels cycle through the classes), else a square."""
    return n_classes if n_classes else max(1, math.isqrt(n_images - 1) + 1)


def save_grid(images: Tensor, path: Path, columns: int) -> Path:
    """Write images in [-1, 1] as one PNG grid, atomically."""
    with atomic_path(path) as tmp:
        save_image(images.detach().float().cpu(), tmp, nrow=columns, normalize=True, value_range=(-1, 1))
    return path


class SampleGridHook(Hook):
    """Writes `epoch_NNN.png` from the run's fixed noise after every epoch, so grids compare across epochs."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: list[Path] = []

    def on_epoch_end(self, state: TrainState) -> None:
        columns = grid_columns(state.config.n_samples, state.data.n_classes if state.conditional else 0)
        path = self.directory / f"epoch_{state.epoch:03d}.png"
        self.paths.append(save_grid(state.fixed_samples(), path, columns))
