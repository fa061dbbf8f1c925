"""Checkpoints: `last.pt`, everything needed to continue a run, and `best.pt`, the generator to sample from; each
written atomically and whole (a full disk is an OSError, never half a file)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.atomic import atomic_path
from gansweep.config import TrainConfig
from gansweep.data import DataRecord
from gansweep.divergence import DivergenceCheck, first_non_finite
from gansweep.errors import GansweepError
from gansweep.hooks import Hook, TrainState
from gansweep.variants import Variant, get_variant

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "restore", "Checkpoint", "CheckpointHook",
           "sha256"]

CHECKPOINT_FORMAT = 3  # raise when the layout below changes, so that old files are refused with a clear reason
# format 1 lacks what resuming needs (its generator still samples); format 2 drew dropout from torch's global RNG
# (a resume starts a fresh dropout stream)
READABLE_FORMATS = (1, 2, 3)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _own(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copies: a member's tensors are views of its population's stack, and torch.save would write the stack."""
    return {name: t.detach().clone() for name, t in tensors.items()}


def save_checkpoint(state: TrainState, path: Path, resumable: bool = True) -> Path:
    """Write `path` atomically. A resumable checkpoint holds everything the run needs to go on exactly as if
    never stopped (networks, optimizers, RNGs, counters, every hook's state); the other kind holds only the
    generator and what it needs to be rebuilt, for sampling and scoring."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "resumable": resumable,
        "variant": state.variant.name,
        "config": state.config.to_dict(),
        "data": state.data.to_dict(),
        "epoch": state.epoch, "step": state.step, "d_steps": state.d_steps, "images_seen": state.images_seen,
        "g": _own(state.g.state_dict()),
    }
    if resumable:
        payload.update({
            "d": _own(state.d.state_dict()), "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
            "rng": {"loop": state.rng.get_state(), "dropout": state.dropout_rng.get_state()},
            "resume": state.resume,
        })
    buffer = io.BytesIO()  # torch.save into a file hides a full disk in a RuntimeError; a plain write says ENOSPC
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def restore(state: TrainState, saved: dict[str, Any], hooks: Sequence[Hook], divergence: DivergenceCheck) -> None:
    """Put a resumable checkpoint (`save_checkpoint`'s, as loaded) back into a run's state, its hooks and its
    divergence check: after it the training loop goes on as if it had never stopped."""
    with torch.no_grad():
        for module, key in ((state.g, "g"), (state.d, "d")):
            module.load_state_dict(saved[key])  # copies into the member's slice of the population
    state.opt_g.load_state_dict(saved["opt_g"])
    state.opt_d.load_state_dict(saved["opt_d"])
    state.rng.set_state(saved["rng"]["loop"])
    if "dropout" in saved["rng"]:  # older checkpoints drew dropout from torch's global RNG: start a fresh stream
        state.dropout_rng.set_state(saved["rng"]["dropout"])
    state.epoch, state.step, state.d_steps = saved["epoch"], saved["step"], saved["d_steps"]
    state.images_seen, state.wall_time_s = saved["images_seen"], saved["resume"]["wall_time_s"]
    state.scores, state.notes, state.last = (dict(saved["resume"][k]) for k in ("scores", "notes", "last"))
    divergence.load_state_dict(saved["resume"]["divergence"])
    saved_hooks = saved["resume"]["hooks"]
    for hook in hooks:
        name = type(hook).__name__  # the study's hooks were once named _OptunaReport and _CollapseStop
        for key in (name, f"_{name}"):
            if key in saved_hooks:
                hook.load_state_dict(saved_hooks[key])
                break


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


def load_checkpoint(path: Path, device: torch.device | str = "cpu", expected_sha256: str | None = None) -> Checkpoint:
    """The checkpoint's generator, rebuilt; a file that is missing, foreign, of another format, not the one
    its run recorded (`expected_sha256`: truncated or altered) or holding non-finite weights (nothing can be
    sampled or scored from those) is refused with one line."""
    if not path.is_file():
        raise GansweepError(f"no checkpoint at {path}")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise GansweepError(f"{path.name} is not the checkpoint its run recorded (SHA-256 differs: truncated or "
                            f"altered since it was written); try the run's other checkpoint")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not how pickle failed
        raise GansweepError(f"{path} is not a readable gansweep checkpoint ({type(e).__name__})") from None
    if raw.get("format") not in READABLE_FORMATS:
        raise GansweepError(f"{path} has checkpoint format {raw.get('format')!r}; "
                            f"this gansweep reads formats {', '.join(map(str, READABLE_FORMATS))}")
    bad = first_non_finite({f"{net}.{name}": t for net in ("g", "d") for name, t in raw.get(net, {}).items()})
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
    """Replaces `last.pt` at every checkpoint (each epoch's end) with a resumable checkpoint, and writes
    `best.pt` (the generator alone) whenever the objective improves; either file stays intact until its
    successor is whole. `on_saved(state, paths)` is told which files changed (best.pt first), to copy them where
    they are kept."""

    def __init__(self, directory: Path, objective: str, minimize: bool,
                 on_saved: Callable[[TrainState, list[Path]], None] | None = None):
        self.directory, self.objective, self.minimize, self.on_saved = directory, objective, minimize, on_saved
        self.best: float | None = None
        self.best_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.best, self.best_epoch = saved["best"], saved["best_epoch"]

    def on_epoch_end(self, state: TrainState) -> None:
        value = state.scores.get(self.objective)
        if value is not None and (self.best is None or (value < self.best if self.minimize else value > self.best)):
            self.best, self.best_epoch = value, state.epoch

    def on_checkpoint(self, state: TrainState) -> None:
        saved = []
        if self.best_epoch == state.epoch:
            saved.append(save_checkpoint(state, self.directory / "best.pt", resumable=False))
        saved.append(save_checkpoint(state, self.directory / "last.pt"))
        if self.on_saved is not None:
            self.on_saved(state, saved)
