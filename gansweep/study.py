"""Studies: a study file says what to sweep, Optuna chooses the trials, each trial is an MLflow child run.

A study is one Optuna study and one MLflow parent run. Running it again continues it: grid points with a
finished (complete or pruned) trial are not run again, and points whose trial failed, was interrupted or was lost
with its process are, from their last checkpoint where one was left (see `trials` and `resume`). `parent_run`
opens, continues and ends the study's records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from gansweep.config import DEVICES, check_types
from gansweep.errors import ConfigError, first_line
from gansweep.parent_run import continued_parent, describe, end_parent, open_study
from gansweep.scoring import pinned_evaluator
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
        outside = [v for v in self.variants or () if v not in spec.variants]
        if outside:
            from gansweep.variants import get_variant

            for name in outside:  # a misspelled name is told the closest registered one first
                get_variant(name)
            raise ConfigError(f"--variant {','.join(outside)}: study {spec.name!r} compares "
                              f"{', '.join(spec.variants)}; --variant picks among them (another variant needs a "
                              f"study file of its own)")
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
    table: Any  # pandas.DataFrame, one row per point (its latest trial), best first
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
        continued = continued_parent(client_for(store.tracking_uri, create=False), spec, options.fresh,
                                     options.experiment)
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
            study, parent_id, experiment, pinned = open_study(client, storage, spec, options.fresh,
                                                              options.experiment, local)
            describe(client, spec, study.study_name, experiment, parent_id, data.record)
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
            end_parent(client, parent_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    table = ranked_table(study, spec)
    try:
        record_summary(client, parent_id, study, spec, table)
    except Exception as e:  # every trial is recorded already: a summary that cannot be written costs nothing else
        print(f"warning: the study's summary could not be logged to its parent run: "
              f"{first_line(e)}", file=sys.stderr)
    end_parent(client, parent_id, "FAILED" if failed else "FINISHED")  # FAILED: points are left to retry
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
