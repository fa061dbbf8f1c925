"""Resuming: a trial that stopped before its end (interrupted, its process lost, or failed by the machine) is
continued by the next trial of the same point from its last checkpoint, into the same MLflow run, so a death costs
at most the epoch under way.

A checkpoint is read back only when its run is still there, the file is the one its run recorded (SHA-256), of
the resumable kind, made with the very configuration the new trial asks for, and scored in the same way on the
same kind of device (the feature network, the evaluation size); anything else starts the point over, saying why.
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
from gansweep.errors import GansweepError, first_line
from gansweep.liveness import is_lost

__all__ = ["Resume", "resumable_attempt", "stopped_early", "fetch_checkpoint", "RESUMABLE_ATTR", "CHECKPOINT_TAG"]

CHECKPOINT_TAG = "gansweep.checkpoint_epoch"  # on a run: the epoch its last.pt holds, once it holds one
RESUMABLE_ATTR = "resumable"  # on a trial failed by something other than its values: the machine, or a bug


@dataclass(frozen=True)
class Resume:
    trial: int  # the earlier trial's number
    run_id: str
    saved: dict[str, Any]  # its resumable checkpoint, loaded


def fetch_checkpoint(client: Any, run_id: str, name: str, directory: Path) -> tuple[Path, str | None]:
    """The run's checkpoints/`name` downloaded into `directory`, with the SHA-256 the run recorded for it
    (None for runs made before checksums were recorded). A process that died after uploading the file and
    before tagging its checksum left it described by the digest tagged before the upload: that one then."""
    from mlflow.exceptions import MlflowException

    from gansweep.checkpoint import sha256
    from gansweep.tracking import checksum_tag, upload_tag

    tags: dict[str, str] = {}
    try:
        tags = client.get_run(run_id).data.tags
        path = Path(client.download_artifacts(run_id, f"checkpoints/{name}", str(directory)))
    except (MlflowException, OSError) as e:
        # a gansweep run that never recorded one (since checkpoints are tagged: an older run's file is only missing)
        if name == "last.pt" and tags.get("gansweep.role") in ("trial", "run") and CHECKPOINT_TAG not in tags \
                and checksum_tag(name) not in tags:
            raise GansweepError(_missing(run_id, tags)) from None
        raise GansweepError(f"no {name} for run {run_id!r} ({first_line(e)})") from None
    recorded, uploaded = tags.get(checksum_tag(name)), tags.get(upload_tag(name))
    if uploaded not in (None, recorded) and sha256(path) == uploaded:
        return path, uploaded
    return path, recorded


def _missing(run_id: str, tags: Mapping[str, str]) -> str:
    status = tags.get("gansweep.status")
    if status is None:
        return f"run {run_id[:8]} has no checkpoint: its first epoch has not ended yet"
    why = f": {tags['gansweep.reason']}" if "gansweep.reason" in tags else ""
    return f"run {run_id[:8]} has no checkpoint: it ended ({status}{why}) before its first epoch did"


def _params(trial: FrozenTrial) -> dict[str, Any]:
    return {**trial.params, "seed": trial.params.get("seed", trial.user_attrs.get("seed"))}


def stopped_early(trial: FrozenTrial) -> bool:
    """Stopped before its end by something other than its values: its point runs again, from its checkpoint."""
    status = trial.user_attrs.get("status")
    return is_lost(trial) or status == "interrupted" or bool(trial.user_attrs.get(RESUMABLE_ATTR))


def resumable_attempt(study: Any, client: Any, trial: Any, params: Mapping[str, Any], config: TrainConfig,
                      variant: str, environment: Mapping[str, str]) -> Resume | None:
    """The latest earlier trial of the same point that stopped early and left a checkpoint `trial` can continue
    from, claimed for it (`resumed_from`) before anything is read, or None (the point starts over).
    `environment`: run params that must not have changed (the scoring, the device)."""
    from mlflow.exceptions import MlflowException

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumed_from") for t in trials if t.state != TrialState.FAIL}
    earlier = [t for t in trials if t.state == TrialState.FAIL and stopped_early(t)
               and _params(t) == dict(params) and t.number not in taken]
    for earlier_trial in sorted(earlier, key=lambda t: t.number, reverse=True):
        run_id = earlier_trial.user_attrs.get("mlflow_run_id")
        if run_id is None:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            _say(earlier_trial, "its MLflow run is gone")
            return None
        if run.info.lifecycle_stage != "active":
            _say(earlier_trial, "its MLflow run was deleted")
            return None
        if CHECKPOINT_TAG not in run.data.tags:
            return None  # it stopped before its first epoch ended: nothing to continue from
        changed = sorted(k for k, v in environment.items() if run.data.params.get(k, v) != v)
        if changed:
            _say(earlier_trial, f"it was scored or trained otherwise: {', '.join(changed)} changed")
            return None
        trial.set_user_attr("resumed_from", earlier_trial.number)  # no other trial takes it from now on
        saved = _load(client, run_id, earlier_trial)
        if saved is not None and (not saved.get("resumable") or saved.get("variant") != variant
                                  or saved.get("config") != config.to_dict()):
            _say(earlier_trial, "its checkpoint was made with other settings")
            saved = None
        if saved is None:
            trial.set_user_attr("resumed_from", None)
            return None
        return Resume(earlier_trial.number, run_id, saved)
    return None


def _load(client: Any, run_id: str, trial: FrozenTrial) -> dict[str, Any] | None:
    import torch

    from gansweep.checkpoint import sha256

    with tempfile.TemporaryDirectory(prefix="gansweep-resume-") as directory:
        try:
            path, recorded = fetch_checkpoint(client, run_id, "last.pt", Path(directory))
            if recorded is None or sha256(path) != recorded:
                raise GansweepError("its last.pt is not the file the run recorded (SHA-256 differs)")
            return torch.load(path, map_location="cpu", weights_only=True)
        except GansweepError as e:
            _say(trial, str(e))
        except Exception as e:  # a file torch cannot read is the same as none
            _say(trial, f"its last.pt cannot be read ({type(e).__name__})")
    return None


def _say(trial: FrozenTrial, why: str) -> None:
    print(f"warning: trial {trial.number} cannot be resumed ({why}); its point starts over", file=sys.stderr)
