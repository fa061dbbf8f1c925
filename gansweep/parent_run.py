"""Where a study is recorded: its Optuna study and its MLflow parent run, continued or created (by one of
several workers that start together), described (the run table's view, the Dataset column) and ended with each
invocation."""

from __future__ import annotations

import secrets
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from gansweep.config import MAX_SEED
from gansweep.errors import ConfigError, first_line
from gansweep.scoring import pin
from gansweep.spec import StudySpec

__all__ = ["open_study", "continued_parent", "describe", "end_parent", "PARENT_WAIT_S"]


def describe(client: Any, spec: StudySpec, study_name: str, experiment: str, parent_id: str, record: Any) -> None:
    """The study's view of its run table, and its data on the parent run (the Dataset column). Every worker
    that starts writes them; of two at once on a database or a server, one may find the other's row there
    first, which is as good as its own."""
    from mlflow.exceptions import MlflowException

    from gansweep.mlflow_hook import dataset_input
    from gansweep.run_table import share_study_view

    objective = spec.objective
    try:
        share_study_view(client, experiment, spec.name, study_name, objective.metric,
                         objective.direction == "minimize", list(spec.space))
        if not client.get_run(parent_id).inputs.dataset_inputs:
            client.log_inputs(parent_id, [dataset_input(record)])
    except MlflowException as e:
        print(f"warning: the study's run-table view or data could not be recorded: "
              f"{first_line(e)}", file=sys.stderr)


def end_parent(client: Any, parent_id: str, status: str) -> None:
    """The parent ends with this invocation; recording that may fail (a full disk, a server gone), and must
    not hide why the invocation ended. A parent left RUNNING is taken over by the next invocation."""
    try:
        client.set_terminated(parent_id, status)
    except Exception as e:
        print(f"warning: could not record the parent run {parent_id} as {status}: "
              f"{first_line(e)}", file=sys.stderr)


def open_study(client: Any, storage: Any, spec: StudySpec, fresh: bool, experiment_name: str | None,
               local: Callable[[], Any]) -> tuple[Any, str, str, Any]:
    """The Optuna study, its parent run and experiment: continued, or new; and, for a new parent, the evaluator
    it was pinned to (`local`'s), else None. Of several workers that start a new study together, the one whose
    create_study succeeds makes the parent run; the others wait for it."""
    parent = continued_parent(client, spec, fresh, experiment_name)
    if parent is not None:
        name = parent.data.tags["gansweep.optuna_study"]
    else:
        name = spec.name if not fresh else f"{spec.name}@{time.strftime('%Y%m%d-%H%M%S')}"
    study, created = _optuna_study(storage, spec, name)
    if parent is None and not created:
        parent = _awaited_parent(client, study)
    if parent is None:
        from gansweep.tracking import experiment_id

        experiment = experiment_id(client, experiment_name or spec.name)
        parent_id = _new_parent(client, experiment, spec, name)
        evaluator = local()
        pin(client, parent_id, evaluator)  # before the parent is named on the study: no worker scores unpinned
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        study.set_user_attr("mlflow_experiment_id", experiment)
        return study, parent_id, experiment, evaluator
    client.update_run(parent.info.run_id, status="RUNNING")
    return study, parent.info.run_id, parent.info.experiment_id, None


def _optuna_study(storage: Any, spec: StudySpec, name: str) -> tuple[Any, bool]:
    """The study, and whether this process created it. The creator samples with the study's `sampler_seed`, so
    a study run by one process is reproducible; every other process draws its own seed, so parallel workers
    and a resume do not repeat the creator's points."""
    from optuna.exceptions import DuplicatedStudyError

    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(spec, spec.sampler_seed),
                                    pruner=_pruner(spec), direction=spec.objective.direction)
    except DuplicatedStudyError:
        seed = secrets.randbelow(MAX_SEED + 1)
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec, seed),
                                 pruner=_pruner(spec)), False
    study.set_user_attr("sampler_seed", spec.sampler_seed)
    with warnings.catch_warnings():  # experimental since optuna 3.2, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.objective.metric])  # what optuna-dashboard names the objective
    return study, True


PARENT_WAIT_S = 60  # how long a worker waits for the worker that created the study to make its parent run


def _awaited_parent(client: Any, study: Any) -> Any:
    """The parent run that the study's creator records on it, once it is there; None if it never comes (the
    creator died before making it) or names a run this MLflow store does not hold."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + PARENT_WAIT_S
    while "mlflow_parent_run_id" not in study.user_attrs:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    try:
        return client.get_run(study.user_attrs["mlflow_parent_run_id"])
    except MlflowException:
        return None


def continued_parent(client: Any, spec: StudySpec, fresh: bool, experiment_name: str | None) -> Any:
    """The parent run this invocation continues, or None for a new study; refused when continuing would mix
    trials that do not compare (another objective, budget or dataset) or hide them (another experiment)."""
    if fresh:
        return None
    from gansweep.tracking import study_parents

    parents = study_parents(client, spec.name)
    if not parents:
        return None
    parent = parents[0]
    recorded = parent.data.params
    asked = {"objective": _objective_text(spec), "epochs": str(spec.epochs), "dataset": spec.dataset,
             "batch_size": str(spec.batch_size)}
    for key, value in asked.items():
        if key in recorded and recorded[key] != value:
            raise ConfigError(f"study {spec.name!r} in this store was run with {key} {recorded[key]}, now asked "
                              f"for {value}: its trials would not compare. Add --fresh to run a new study beside "
                              f"it, or copy the study file under a new name")
    where = client.get_experiment(parent.info.experiment_id).name
    if experiment_name is not None and experiment_name != where:
        raise ConfigError(f"study {spec.name!r} is in experiment {where!r} of this store; leave out --experiment "
                          f"to continue it there, or add --fresh to start a new study in {experiment_name!r}")
    return parent


def _objective_text(spec: StudySpec) -> str:
    return f"{spec.objective.direction} {spec.objective.key}"


def _new_parent(client: Any, experiment: str, spec: StudySpec, study_name: str) -> str:
    from mlflow.entities import Param

    from gansweep.tracking import run_tags

    run = client.create_run(experiment, run_name=study_name, tags=run_tags({
        "gansweep.study": spec.name, "gansweep.role": "parent", "gansweep.optuna_study": study_name,
        "mlflow.note.content": spec.description}))
    params = {"study": spec.name, "description": spec.description, "dataset": spec.dataset,
              "variants": ",".join(spec.variants), "budget_unit": spec.budget_unit, "epochs": spec.epochs,
              "batch_size": spec.batch_size, "objective": _objective_text(spec), "sampler": spec.sampler,
              "pruner": spec.pruner, "sampler_seed": spec.sampler_seed, "seeds": ",".join(map(str, spec.seeds)),
              "space": dict(spec.space), "config": dict(spec.config), "study_file": spec.path}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def _sampler(spec: StudySpec, seed: int) -> Any:
    if spec.sampler == "tpe":  # constant_liar: workers sampling at once see each other's running trials
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)  # a grid study's is never asked: grid.py enqueues each point


def _pruner(spec: StudySpec) -> Any:
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner]()
