"""Resuming: a trial that stopped before its end (interrupted, its process lost, or failed by the machine) is
continued by the next trial of the same point from its last checkpoint, into the same MLflow run, so a death costs
at most the epoch under way.

A checkpoint is read back only when it is the file its run recorded (SHA-256), of the resumable kind, and was
made with the very configuration the new trial asks for; anything else starts the point over, saying why.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gansweep.config import TrainConfig
from gansweep.errors import GansweepError
from gansweep.liveness import is_lost

__all__ = ["Resume", "resumable_attempt", "fetch_checkpoint", "RESUMABLE_ATTR"]

RESUMABLE_ATTR = "resumable"  # on a trial failed by the machine (a full disk, memory), not by its values


@dataclass(frozen=True)
class Resume:
    trial: int  # the earlier trial's number
    run_id: str
    saved: dict[str, Any]  # its resumable checkpoint, loaded


def fetch_checkpoint(client: Any, run_id: str, name: str, directory: Path) -> tuple[Path, str | None]:
    """The run's checkpoints/`name` downloaded into `directory`, with the SHA-256 the run recorded for it
    (None for runs made before checksums were recorded)."""
    from mlflow.exceptions import MlflowException

    from gansweep.tracking import checksum_tag

    try:
        path = Path(client.download_artifacts(run_id, f"checkpoints/{name}", str(directory)))
        recorded = client.get_run(run_id).data.tags.get(checksum_tag(name))
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GansweepError(f"no {name} for run {run_id!r} ({first})") from None
    return path, recorded


def _params(trial: FrozenTrial) -> dict[str, Any]:
    return {**trial.params, "seed": trial.params.get("seed", trial.user_attrs.get("seed"))}


def _stopped_early(trial: FrozenTrial) -> bool:
    status = trial.user_attrs.get("status")
    return is_lost(trial) or status == "interrupted" or bool(trial.user_attrs.get(RESUMABLE_ATTR))


def resumable_attempt(study: Any, client: Any, params: Mapping[str, Any], config: TrainConfig,
                      variant: str) -> Resume | None:
    """The latest earlier trial of the same point that stopped early and left a checkpoint this trial can
    continue from, or None (the point starts over)."""
    import torch

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumed_from") for t in trials if t.state != TrialState.FAIL}
    earlier = [t for t in trials if t.state == TrialState.FAIL and _stopped_early(t)
               and _params(t) == dict(params) and t.number not in taken]
    for trial in sorted(earlier, key=lambda t: t.number, reverse=True):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is None:
            continue
        tags = client.get_run(run_id).data.tags
        if "gansweep.checkpoint_epoch" not in tags:
            return None  # it stopped before its first epoch ended: nothing to continue from
        with tempfile.TemporaryDirectory(prefix="gansweep-resume-") as directory:
            try:
                path, recorded = fetch_checkpoint(client, run_id, "last.pt", Path(directory))
                from gansweep.checkpoint import sha256

                if recorded is None or sha256(path) != recorded:
                    raise GansweepError("its last.pt is not the file the run recorded (SHA-256 differs)")
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except GansweepError as e:
                _say(trial, str(e))
                return None
            except Exception as e:  # a file torch cannot read is the same as none
                _say(trial, f"its last.pt cannot be read ({type(e).__name__})")
                return None
        if not saved.get("resumable") or saved.get("variant") != variant or saved.get("config") != config.to_dict():
            _say(trial, "its checkpoint was made with other settings")
            return None
        return Resume(trial.number, run_id, saved)
    return None


def _say(trial: FrozenTrial, why: str) -> None:
    print(f"warning: trial {trial.number} cannot be resumed ({why}); its point starts over", file=sys.stderr)
