"""Looking at a trained generator: image grids from a tracked run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from gansweep.checkpoint import load_checkpoint
from gansweep.errors import ConfigError, GansweepError
from gansweep.samples import grid_columns, save_grid

__all__ = ["CHECKPOINTS", "sample_run"]

CHECKPOINTS = ("last", "best")  # artifacts checkpoints/last.pt and checkpoints/best.pt of a trial's run


def sample_run(run_id: str, out: Path, tracking_uri: str, n: int = 64, label: int | None = None, seed: int = 0,
               which: str = "last") -> Path:
    """Write a grid of `n` images from the run's checkpoint; conditional runs take `label`, else cycle classes."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if out.exists():
        raise GansweepError(f"{out} exists; choose another path with -o (nothing is overwritten)")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{which}.pt",
                                                    tracking_uri=tracking_uri)
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GansweepError(f"no {which} checkpoint for run {run_id!r} in {tracking_uri} ({first})") from None
    checkpoint = load_checkpoint(Path(local))
    n_classes = checkpoint.n_classes
    if label is not None and not 0 <= label < max(n_classes, 1):
        raise ConfigError(f"label must be in [0, {n_classes}) for {checkpoint.variant.name}, got {label}"
                          if n_classes else f"{checkpoint.variant.name} is unconditional; leave out --label")
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, checkpoint.config.z_dim, generator=rng)
    labels = None
    if n_classes:
        labels = torch.full((n,), label) if label is not None else torch.arange(n) % n_classes
    with torch.no_grad():
        images = checkpoint.g(z, labels)
    return save_grid(images, out, grid_columns(n, n_classes if label is None else 0))
