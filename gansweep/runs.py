"""One tracked training run: the hooks every run gets (scores, sample grids, checkpoints, MLflow), in one place.

A study's trials (`tracked_population`, one run per member) and `gansweep train` (`tracked_training`, a population
of one) get the same hooks, so a run looks the same in MLflow whichever started it and however it was trained.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gansweep.checkpoint import CheckpointHook
from gansweep.config import DataConfig, TrainConfig
from gansweep.data import Dataset
from gansweep.errors import ConfigError, failure_reason, reason
from gansweep.evaluation import Evaluator, ScoreHook
from gansweep.hooks import Hook, MemberErrors, TrainResult
from gansweep.samples import SampleGridHook
from gansweep.scores import SCORES, check_eval_size
from gansweep.store import Store
from gansweep.trainer import train_population
from gansweep.variants import Variant

__all__ = ["RunOutcome", "tracked_training", "tracked_population", "TrackedMember",
           "run_training", "TRAIN_EXPERIMENT", "TRAIN_OBJECTIVE"]

TRAIN_EXPERIMENT = "train"  # where `gansweep train` records its runs, unless told otherwise
TRAIN_OBJECTIVE = "fid_proxy"  # what "best" means for the best.pt checkpoint of a run outside a study


def tracked_training(client: Any, run_id: str, variant: Variant, config: TrainConfig, data: Dataset,
                     evaluator: Evaluator, objective: str, extra_params: dict[str, Any],
                     hooks: Sequence[Hook] = (), label: str | None = None,
                     resume: dict[str, Any] | None = None) -> TrainResult:
    """Train into the existing MLflow run `run_id` (from `resume`, a resumable checkpoint of that run, when
    given); sample grids and checkpoints pass through a temporary folder on their way to the run's artifacts.
    `hooks` come after the standard ones (they see this epoch's scores)."""
    member = TrackedMember(run_id, config, extra_params, hooks, label, resume)
    return tracked_population(client, variant, data, evaluator, objective, [member])[0]


@dataclass(frozen=True)
class TrackedMember:
    """One run of a population, as `tracked_training` takes it."""

    run_id: str
    config: TrainConfig
    extra_params: dict[str, Any]
    hooks: Sequence[Hook] = ()
    label: str | None = None
    resume: dict[str, Any] | None = None


def tracked_population(client: Any, variant: Variant, data: Dataset, evaluator: Evaluator, objective: str,
                       members: Sequence[TrackedMember]) -> list[TrainResult]:
    """`tracked_training` for runs trained together as one population: each member gets the standard hooks
    and its own temporary folder, exactly as it would alone; every other temporary file of the process goes
    into a folder of the population's meanwhile."""
    _remove_dead_work_dirs()
    with contextlib.ExitStack() as folders:
        try:
            folders.enter_context(_temporary_files_in(_work_dir(folders)))
            hooks = [_standard_hooks(client, member, _work_dir(folders), evaluator, objective) for member in members]
            return train_population(variant, [m.config for m in members], data, hooks, [m.resume for m in members])
        except BaseException as e:
            own = e.errors if isinstance(e, MemberErrors) else {}  # members whose hooks raised: their own
            for k, member in enumerate(members):
                _end_if_running(client, member.run_id, own.get(k, e))
            raise


def _standard_hooks(client: Any, member: TrackedMember, work: Path, evaluator: Evaluator, objective: str
                    ) -> list[Hook]:
    from gansweep.progress import ProgressHook
    from gansweep.mlflow_hook import MlflowHook

    tracking = MlflowHook(client, member.run_id, work, f"score/{objective}",
                          {**evaluator.params(), **member.extra_params})
    standard: list[Hook] = [
        ScoreHook(evaluator), SampleGridHook(work / "samples"),
        CheckpointHook(work / "checkpoints", f"score/{objective}", SCORES[objective].direction == "minimize",
                       tracking.checkpoints_saved), tracking]
    # first, so that its epoch line and the bar's "scoring" come before the scores are computed
    progress = [ProgressHook(member.label, scoring=evaluator.n)] if member.label else []
    if member.resume is not None:  # the grids of the epochs before, for the run's GIF
        client.download_artifacts(member.run_id, "samples", str(work))
    return [*progress, *standard, *member.hooks]


_WORK_PREFIX = "gansweep-run-"


def _work_dir(folders: contextlib.ExitStack) -> Path:
    """A temporary folder of this process's, named for its pid, removed when `folders` closes."""
    return Path(folders.enter_context(tempfile.TemporaryDirectory(prefix=f"{_WORK_PREFIX}{os.getpid()}-")))


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """Every temporary file of the process goes into `folder` meanwhile, libraries' too (MLflow writes each
    logged sample image through a temporary folder of its own): a process killed in the middle of one leaves it
    inside its work folder, which the next run on the machine removes, rather than in /tmp for ever."""
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def _remove_dead_work_dirs() -> None:
    """A killed process cannot remove its temporary folder (sample grids, a checkpoint not yet copied to its
    run); the next run on the machine does, for every such folder whose process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORK_PREFIX}*-*"):
        pid = folder.name.removeprefix(_WORK_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and folder.stat().st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)


def _end_if_running(client: Any, run_id: str, error: BaseException) -> None:
    """A run that training left open (an error before its hooks could end it) is ended with the error."""
    from gansweep.tracking import end_run

    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        if isinstance(error, KeyboardInterrupt):
            end_run(client, run_id, "interrupted", reason(error))
        else:  # as the study tells Optuna
            end_run(client, run_id, "failed", failure_reason(error))
    except Exception:  # the store cannot take it now (a full disk): the caller's error is what the user sees
        pass


@dataclass(frozen=True)
class RunOutcome:
    result: TrainResult
    run_id: str
    experiment_id: str
    tracking_uri: str
    config: TrainConfig


def run_training(variant_name: str, data_config: DataConfig, store: Store, experiment: str | None = None,
                 n_eval: int | None = None, progress: bool = True, **changes: Any) -> RunOutcome:
    """Train one variant with `changes` over its defaults (None = not given) as a new MLflow run. Every value,
    the device, the data and the store are checked before the run is created."""
    from gansweep.classifier import get_classifier
    from gansweep.data import get_source, load_dataset
    from gansweep.trainer import g_steps_per_epoch, resolve_device
    from gansweep.tracking import client_for, experiment_id, run_tags
    from gansweep.variants import get_variant

    variant = get_variant(variant_name)
    config = variant.config(**changes)
    g_steps_per_epoch(config, get_source(data_config.dataset).n_train)
    check_eval_size(n_eval, "--n-eval")
    if experiment is not None and not experiment.strip():
        raise ConfigError("--experiment must not be empty")
    device = resolve_device(config.device)
    store.for_writing()
    data = load_dataset(data_config, device)
    evaluator = Evaluator(get_classifier(data), data, n_eval)
    client = client_for(store.tracking_uri)
    experiment_key = experiment_id(client, experiment or TRAIN_EXPERIMENT)
    run = client.create_run(experiment_key, run_name=f"{variant.name} seed {config.seed}", tags=run_tags({
        "gansweep.role": "run", "gansweep.variant": variant.name, "gansweep.dataset": data.record.name,
        "gansweep.seed": str(config.seed)}))
    result = tracked_training(client, run.info.run_id, variant, config, data, evaluator, TRAIN_OBJECTIVE, {},
                              label=variant.name if progress else None)
    return RunOutcome(result, run.info.run_id, experiment_key, store.tracking_uri, config)
