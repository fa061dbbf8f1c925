"""One training run outside a study, written to its own new folder: config, sample grids, checkpoint, result."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gansweep.atomic import atomic_path
from gansweep.checkpoint import CheckpointHook
from gansweep.config import DataConfig, TrainConfig
from gansweep.data import load_dataset
from gansweep.progress import ProgressHook
from gansweep.samples import SampleGridHook
from gansweep.trainer import Hook, TrainResult, TrainState, resolve_device, train
from gansweep.variants import get_variant

__all__ = ["RunOutcome", "run_training", "new_run_dir"]


@dataclass(frozen=True)
class RunOutcome:
    result: TrainResult
    directory: Path
    config: TrainConfig


def new_run_dir(root: Path, name: str) -> Path:
    """A folder that did not exist before: nothing an earlier run wrote is ever overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name under {root} for {name}-{stamp}")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")


class _RecordHook(Hook):
    """Writes run.json at the start and again with the result at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.record: dict[str, Any] = {}

    def on_start(self, state: TrainState) -> None:
        self.record = {"variant": state.variant.name, "config": state.config.to_dict(),
                       "data": state.data.to_dict(), "device": str(state.device)}
        _write_json(self.path, self.record)

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        _write_json(self.path, {**self.record, "result": asdict(result)})


def run_training(variant_name: str, data_config: DataConfig, out_root: Path, progress: bool = True,
                 **changes: Any) -> RunOutcome:
    """Train one variant with `changes` over its defaults (None = not given) into a new folder under out_root."""
    variant = get_variant(variant_name)
    config = variant.config(**changes)
    device = resolve_device(config.device)
    data = load_dataset(data_config, device)
    directory = new_run_dir(out_root, variant.name)
    hooks: list[Hook] = [_RecordHook(directory / "run.json"), SampleGridHook(directory / "samples"),
                         CheckpointHook(directory / "checkpoint.pt")]
    if progress:
        hooks.append(ProgressHook(variant.name))
    result = train(variant, config, data, hooks)
    return RunOutcome(result, directory, config)
