"""Studies: a study file says what to sweep, Optuna chooses the trials, each trial is an MLflow child run.

A study is one Optuna study and one MLflow parent run. Running it again continues it: grid points with a
finished (complete or pruned) trial are not run again, and points whose trial failed, was interrupted or was lost
with its process are, from their last checkpoint where one was left (see `trials` and `resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import secrets
import signal
import sys
import warnings
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from gansweep.config import DEVICES, MAX_SEED, check_types
from gansweep.errors import ConfigError
from gansweep.scoring import pin, pinned_evaluator
from gansweep.spec import MAX_TRIALS, StudySpec
from gansweep.store import resolve_store, store_lock
from gansweep.study_table import ranked_table

__all__ = ["StudyOptions", "StudyOutcome", "run_study", "RETRIES", "population_size", "MAX_POPULATION"]

MAX_POPULATION = 1024
# auto on CUDA: a group's points up to this many at once (the throughput measured by `make bench` levels off
# by K = 64 for the MLP gan), fewer where their memory would not fit
AUTO_POPULATION_CUDA = 64
RETRIES = 2  # a point whose trial fails is run again at most this often per invocation, then left failed


@dataclass(frozen=True)
class StudyOptions:
    """Command-line overrides of a study file and where to keep it; None means "as the file says"."""

    variants: tuple[str, ...] | None = None
    dataset: str | None = None
    epochs: int | None = None
    trials: int | None = None  # grid: run at most this many of the remaining points in this invocation
    seeds: tuple[int, ...] | None = None
    device: str = "auto"
    store: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    fresh: bool = False
    progress: bool = True
    population: str = "auto"  # trials trained together in one step: a number, or auto (see population_size)

    def __post_init__(self) -> None:
        check_types(self)
        if self.population != "auto" and not (self.population.isdigit()
                                               and 1 <= int(self.population) <= MAX_POPULATION):
            raise ConfigError(f"--population must be auto or a whole number in [1, {MAX_POPULATION}], "
                              f"got {self.population!r}")
        if self.trials is not None and not 1 <= self.trials <= MAX_TRIALS:
            raise ConfigError(f"--trials must be in [1, {MAX_TRIALS}], got {self.trials}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.experiment is not None and not self.experiment.strip():
            raise ConfigError("--experiment must not be empty")

    def apply(self, spec: StudySpec) -> StudySpec:
        """The study as the file says, with each given option in its place; a bad one is refused by name."""
        changes = {"variants": self.variants, "dataset": self.dataset, "epochs": self.epochs, "seeds": self.seeds}
        if spec.sampler != "grid":
            changes["trials"] = self.trials
        for name, value in changes.items():
            if value is None:
                continue
            try:
                spec = dataclasses.replace(spec, **{name: value})
            except ConfigError as e:
                option = "--variant" if name == "variants" else f"--{name}"
                raise ConfigError(f"{option} {_shown(value)}: {e}") from None
        return spec


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class StudyOutcome:
    spec: StudySpec
    optuna_study: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    table: Any  # pandas.DataFrame, one row per trial, best first
    ran: int  # trials run by this invocation
    failed: tuple[str, ...] = ()  # one line per point that failed in this invocation and is still not done


def run_study(spec: StudySpec, options: StudyOptions) -> StudyOutcome:
    """Run or continue a study. Every value is checked, the device and data made ready, and the stores opened
    before the first run or study is created in them, so bad input costs nothing but one line."""
    from gansweep.classifier import get_classifier
    from gansweep.config import DataConfig
    from gansweep.data import load_dataset
    from gansweep.evaluation import Evaluator
    from gansweep.liveness import Liveness
    from gansweep.tracking import client_for
    from gansweep.trainer import resolve_device
    from gansweep.grid import GridRunner
    from gansweep.search import SearchRunner
    from gansweep.summary import record_summary

    spec = options.apply(spec)
    device = resolve_device(options.device)
    store = resolve_store(options.store, options.tracking_uri, options.storage).for_writing()
    continued = None
    if store.database is None or store.database.exists():
        continued = _continued_parent(client_for(store.tracking_uri, create=False), spec, options)
    database = store.optuna() if "://" in store.storage else None  # a server is reached before the data load
    data = load_dataset(DataConfig(dataset=spec.dataset), device)
    local = functools.cache(lambda: Evaluator(get_classifier(data), data, spec.n_eval))  # may train a network
    if continued is None:  # a new study is pinned to this machine's, made (and checked) before a store is created
        local()
    storage = database or store.optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = client_for(store.tracking_uri)
    evaluator = None
    if continued is not None:  # checked before the parent is touched
        with store_lock(store.tracking_uri):  # an unpinned parent is pinned by one worker, not two
            evaluator = pinned_evaluator(client, client.get_run(continued.info.run_id), local, data, spec.n_eval)
    with _sigterm_interrupts():
        with store_lock(store.tracking_uri):  # two processes starting the same study at once share one parent
            study, parent_id, experiment, pinned = _open_study(client, storage, spec, options, local)
            _describe(client, spec, study.study_name, experiment, parent_id, data.record)
        if pinned is not None:
            evaluator = pinned
        elif evaluator is None or parent_id != continued.info.run_id:
            evaluator = pinned_evaluator(client, client.get_run(parent_id), local, data, spec.n_eval)
        try:
            liveness = Liveness(storage, None if database is not None else Path(store.storage))
            arguments = (spec, study, client, experiment, parent_id, data, evaluator, options.progress, RETRIES,
                         liveness, population_size(options.population, device))
            if spec.sampler == "grid":
                runner = GridRunner(*arguments)
                ran = runner.run(options.trials)
            else:
                runner = SearchRunner(*arguments)
                ran = runner.run()
            failed = runner.failures()
        except BaseException as e:
            _end_parent(client, parent_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    table = ranked_table(study, spec)
    try:
        record_summary(client, parent_id, study, spec, table)
    except Exception as e:  # every trial is recorded already: a summary that cannot be written costs nothing else
        print(f"warning: the study's summary could not be logged to its parent run: "
              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    _end_parent(client, parent_id, "FAILED" if failed else "FINISHED")  # FAILED: points are left to retry
    return StudyOutcome(spec, study.study_name, store.storage, store.tracking_uri, experiment, parent_id, table,
                        ran, failed)


def population_size(population: str, device: Any) -> int:
    """`auto` is 1 on the CPU, where a population does not pay for the convolutional variants (see the README's
    benchmark), and AUTO_POPULATION_CUDA on CUDA; a number is taken as it is. On CUDA, either way, a group's
    points beyond what fits in memory are left to the next population (`GridRunner._same_step`)."""
    if population != "auto":
        return int(population)
    return 1 if device.type == "cpu" else AUTO_POPULATION_CUDA


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`), raised like Ctrl-C so the running trial is recorded as it ends."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated by SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe(client: Any, spec: StudySpec, study_name: str, experiment: str, parent_id: str, record: Any) -> None:
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
              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)


def _end_parent(client: Any, parent_id: str, status: str) -> None:
    """The parent ends with this invocation; recording that may fail (a full disk, a server gone), and must
    not hide why the invocation ended. A parent left RUNNING is taken over by the next invocation."""
    try:
        client.set_terminated(parent_id, status)
    except Exception as e:
        print(f"warning: could not record the parent run {parent_id} as {status}: "
              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)


def _open_study(client: Any, storage: Any, spec: StudySpec, options: StudyOptions,
                local: Callable[[], Any]) -> tuple[Any, str, str, Any]:
    """The Optuna study, its parent run and experiment: continued, or new; and, for a new parent, the evaluator
    it was pinned to (`local`'s), else None. Of several workers that start a new study together, the one whose
    create_study succeeds makes the parent run; the others wait for it."""
    parent = _continued_parent(client, spec, options)
    if parent is not None:
        name = parent.data.tags["gansweep.optuna_study"]
    else:
        name = spec.name if not options.fresh else f"{spec.name}@{time.strftime('%Y%m%d-%H%M%S')}"
    study, created = _optuna_study(storage, spec, name)
    if parent is None and not created:
        parent = _awaited_parent(client, study)
    if parent is None:
        from gansweep.tracking import experiment_id

        experiment = experiment_id(client, options.experiment or spec.name)
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


def _continued_parent(client: Any, spec: StudySpec, options: StudyOptions) -> Any:
    """The parent run this invocation continues, or None for a new study; refused when continuing would mix
    trials that do not compare (another objective, budget or dataset) or hide them (another experiment)."""
    if options.fresh:
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
    if options.experiment is not None and options.experiment != where:
        raise ConfigError(f"study {spec.name!r} is in experiment {where!r} of this store; leave out --experiment "
                          f"to continue it there, or add --fresh to start a new study in {options.experiment!r}")
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
