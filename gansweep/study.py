"""Studies: a file in studies/ says what to sweep, Optuna chooses the trials, each trial is an MLflow child run.

A study is one Optuna study and one MLflow parent run. Running it again continues it: grid points with a
finished (complete or pruned) trial are not run again, and points whose trial failed or was interrupted are.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from gansweep.config import TrainConfig, field_names
from gansweep.errors import ConfigError, GansweepError, UnknownNameError
from gansweep.trainer import Hook, StepLog, StopTraining, TrainState, resolve_device

__all__ = ["StudySpec", "Objective", "StudyOptions", "StudyOutcome", "load_spec", "find_spec", "list_specs",
           "run_study", "ranked_table", "seed_spread", "format_table", "SAMPLERS", "PRUNERS", "STUDY_DIRS",
           "optuna_storage", "LOCAL_OPTUNA_STORAGE"]

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
BUDGET_UNITS = ("images",)
TABLE_SCORES = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy")
# Where `gansweep study NAME` looks for NAME.toml: the working directory's studies/, then the shipped ones.
STUDY_DIRS = (Path("studies"), Path(__file__).resolve().parent.parent / "studies")
LOCAL_OPTUNA_STORAGE = Path("mlruns") / "optuna.journal"  # a journal file: safe for several local processes
# Trials that hold their work: done, or under way. Failed and interrupted ones give it back, to be run again.
_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
_SPECIAL_AXES = ("variant", "seed", "beta1")  # swept names that are not TrainConfig fields as they stand


@dataclass(frozen=True)
class Objective:
    metric: str = "fid_proxy"  # a name in evaluation.SCORES, logged as score/NAME
    direction: str = ""  # minimize or maximize; empty: the score's own direction

    def __post_init__(self) -> None:
        from gansweep.evaluation import SCORES

        if not self.direction and self.metric in SCORES:
            object.__setattr__(self, "direction", SCORES[self.metric].direction)

    @property
    def key(self) -> str:
        return f"score/{self.metric}"


@dataclass(frozen=True)
class StudySpec:
    """One study file. Every trial of a study gets the same budget, stated in one unit for every variant."""

    name: str
    description: str
    variants: tuple[str, ...]
    dataset: str = "mnist-5k"
    budget_unit: str = "images"  # images seen by D: `epochs` passes over the training split, whatever n_critic
    epochs: int = 5
    batch_size: int | None = None  # None: each variant's default
    objective: Objective = Objective()
    sampler: str = "grid"
    pruner: str = "none"  # sensitivity studies measure whole curves: a failure is a data point, not a gap
    saturation_window: int = 0  # G steps of D(x) > 0.99 and D(G(z)) < 0.01 that end a trial; 0 = never
    collapse_window: int = 0  # evaluations in a row with coverage below MODE_COLLAPSE_COVERAGE that end a trial
    trials: int | None = None  # tpe/random: trials per variant, the same budget for each; grid: the grid's size
    seeds: tuple[int, ...] = (0,)
    best_seeds: tuple[int, ...] = ()  # tpe/random: each variant's best parameters are re-run with these seeds
    space: Mapping[str, Any] = field(default_factory=dict)  # name -> list of values, or {low, high, log}
    config: Mapping[str, Any] = field(default_factory=dict)  # fixed TrainConfig values for every trial
    n_eval: int | None = None  # images per evaluation; None: 2,000 on the CPU, 10,000 on CUDA, bounded by the split
    path: str = ""

    def grid_axes(self) -> dict[str, list[Any]]:
        return {"variant": list(self.variants), **{k: list(v) for k, v in self.space.items()},
                "seed": list(self.seeds)}

    def grid_points(self) -> list[dict[str, Any]]:
        axes = self.grid_axes()
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]

    def changes(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The TrainConfig values a trial with `params` runs with, beyond its variant's defaults."""
        from gansweep.variants import get_variant

        changes = {**self.config, "epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in params.items():
            if name == "beta1":
                changes["betas"] = (value, get_variant(params["variant"]).config().betas[1])
            elif name != "variant":
                changes[name] = value
        return changes


def _fail(path: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {message}")


def load_spec(path: Path) -> StudySpec:
    """Read and check a study file; every error names the file and the key."""
    from gansweep.data import DATASETS
    from gansweep.evaluation import SCORES
    from gansweep.variants import VARIANTS, get_variant

    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{where}: cannot read study file: {e}") from None
    known = {f.name for f in dataclasses.fields(StudySpec)} - {"path"}
    for key in raw:
        if key not in known:
            raise _fail(where, key, f"unknown key; known: {', '.join(sorted(known))}")
    for key in ("name", "description", "variants"):
        if key not in raw:
            raise _fail(where, key, "missing")
    try:
        objective = Objective(**raw.pop("objective", {}))
    except TypeError:
        raise _fail(where, "objective", "is {metric = NAME, direction = minimize|maximize}") from None
    if objective.metric not in SCORES:
        raise _fail(where, "objective.metric", str(UnknownNameError("metric", objective.metric, SCORES)))
    if objective.direction not in ("minimize", "maximize"):
        raise _fail(where, "objective.direction", f"must be minimize or maximize, got {objective.direction!r}")
    spec = StudySpec(**{**raw, "variants": tuple(raw["variants"]), "seeds": tuple(raw.get("seeds", (0,))),
                        "best_seeds": tuple(raw.get("best_seeds", ())),
                        "objective": objective, "path": where})
    for name in spec.variants:
        if name not in VARIANTS:
            raise _fail(where, "variants", str(UnknownNameError("variant", name, VARIANTS)))
    checks = [("dataset", spec.dataset in DATASETS, f"unknown dataset {spec.dataset!r}"),
              ("sampler", spec.sampler in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}"),
              ("pruner", spec.pruner in PRUNERS, f"must be one of {', '.join(PRUNERS)}"),
              ("budget_unit", spec.budget_unit in BUDGET_UNITS, f"must be one of {', '.join(BUDGET_UNITS)}"),
              ("trials", spec.sampler == "grid" or (spec.trials or 0) >= 1, f"{spec.sampler} needs trials >= 1"),
              ("seeds", len(spec.seeds) >= 1, "needs at least one seed"),
              ("best_seeds", spec.sampler != "grid" or not spec.best_seeds, "only for tpe/random searches"),
              ("n_eval", spec.n_eval is None or spec.n_eval >= 2, "must be >= 2"),
              ("saturation_window", spec.saturation_window >= 0, "must be >= 0"),
              ("collapse_window", spec.collapse_window >= 0, "must be >= 0")]
    for key, ok, message in checks:
        if not ok:
            raise _fail(where, key, message)
    unknown = set(spec.config) - field_names(TrainConfig)
    if unknown:
        raise _fail(where, "config", f"unknown training parameter(s) {', '.join(sorted(unknown))}")
    for key, values in spec.space.items():
        if key not in field_names(TrainConfig) | set(_SPECIAL_AXES) - {"variant", "seed"}:
            raise _fail(where, f"space.{key}", "not a training parameter (see TrainConfig)")
        if isinstance(values, Mapping):
            if spec.sampler == "grid":
                raise _fail(where, f"space.{key}", "a grid needs a list of values, not a range")
            if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                raise _fail(where, f"space.{key}", "a range is {low, high} with an optional log = true")
            values = [values["low"], values["high"]]
        for variant in spec.variants:
            for value in values:
                try:
                    get_variant(variant).config(**spec.changes({"variant": variant, key: value}))
                except ConfigError as e:
                    raise _fail(where, f"space.{key}", f"{e} (variant {variant})") from None
    return spec


def find_spec(name: str) -> Path:
    for directory in STUDY_DIRS:
        if (directory / f"{name}.toml").is_file():
            return directory / f"{name}.toml"
    raise UnknownNameError("study", name, [p.name for p in list_specs()], "gansweep list studies")


def list_specs() -> list[StudySpec]:
    """Every study file on the search path; a name found twice is the working directory's."""
    seen: dict[str, StudySpec] = {}
    for directory in STUDY_DIRS:
        for path in sorted(directory.glob("*.toml")):
            seen.setdefault(path.stem, load_spec(path))
    return list(seen.values())


@dataclass(frozen=True)
class StudyOptions:
    """Command-line overrides of a study file; None means "as the file says"."""

    variants: tuple[str, ...] | None = None
    dataset: str | None = None
    epochs: int | None = None
    trials: int | None = None  # grid: run at most this many of the remaining points in this invocation
    seeds: tuple[int, ...] | None = None
    device: str = "auto"
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    fresh: bool = False
    progress: bool = True

    def apply(self, spec: StudySpec) -> StudySpec:
        from gansweep.data import get_source
        from gansweep.variants import get_variant

        for name in self.variants or ():
            get_variant(name)
        if self.dataset:
            get_source(self.dataset)
        changes = {"variants": self.variants, "dataset": self.dataset, "epochs": self.epochs, "seeds": self.seeds}
        if spec.sampler != "grid":
            changes["trials"] = self.trials
        return dataclasses.replace(spec, **{k: v for k, v in changes.items() if v})


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


def optuna_storage(given: str | None) -> Any:
    """--storage as Optuna takes it: a URL (sqlite://, postgresql://, ...) or a journal file path."""
    if given and "://" in given:
        return given
    path = Path(given) if given else LOCAL_OPTUNA_STORAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def run_study(spec: StudySpec, options: StudyOptions) -> StudyOutcome:
    from gansweep.classifier import get_classifier
    from gansweep.config import DataConfig
    from gansweep.data import load_dataset
    from gansweep.evaluation import Evaluator
    from gansweep.tracking import client_for, experiment_id, store_lock, tracking_uri

    spec = options.apply(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uri = tracking_uri(options.tracking_uri)
    client = client_for(uri)
    experiment = experiment_id(client, options.experiment or spec.name)
    with store_lock(uri):  # two processes starting the same study at once share one parent run
        parent = None if options.fresh else _latest_parent(client, experiment, spec.name)
        if parent is None:
            study_name = spec.name if not options.fresh else f"{spec.name}@{time.strftime('%Y%m%d-%H%M%S')}"
            parent_id = _new_parent(client, experiment, spec, study_name)
        else:
            _check_same_objective(parent, spec)
            study_name, parent_id = parent.data.tags["gansweep.optuna_study"], parent.info.run_id
            client.update_run(parent_id, status="RUNNING")
    storage = optuna_storage(options.storage)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=_sampler(spec),
                                pruner=_pruner(spec), direction=spec.objective.direction, load_if_exists=True)
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    study.set_user_attr("mlflow_experiment_id", experiment)
    device = resolve_device(options.device)
    data = load_dataset(DataConfig(dataset=spec.dataset), device)
    evaluator = Evaluator(get_classifier(data), data, spec.n_eval)
    runner = _TrialRunner(spec, study, client, experiment, parent_id, data, evaluator, options.progress)
    try:
        ran = runner.run_grid(options.trials) if spec.sampler == "grid" else runner.run_sampled()
    except KeyboardInterrupt:
        client.set_terminated(parent_id, "KILLED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return StudyOutcome(spec, study_name, options.storage or str(LOCAL_OPTUNA_STORAGE), uri, experiment,
                        parent_id, ranked_table(study, spec), ran)


def _latest_parent(client: Any, experiment: str, name: str) -> Any:
    runs = client.search_runs([experiment], filter_string=f"tags.`gansweep.study` = '{name}' and "
                                                          f"tags.`gansweep.role` = 'parent'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _objective_text(spec: StudySpec) -> str:
    return f"{spec.objective.direction} {spec.objective.key}"


def _check_same_objective(parent: Any, spec: StudySpec) -> None:
    """Continuing a study under another objective would rank new trials against values of a different score."""
    before = parent.data.params.get("objective")
    if before is not None and before != _objective_text(spec):
        raise ConfigError(f"study {spec.name!r} in this store was run to {before}, the file now says "
                          f"{_objective_text(spec)}; start a new study beside it with --fresh")


def _new_parent(client: Any, experiment: str, spec: StudySpec, study_name: str) -> str:
    from mlflow.entities import Param

    run = client.create_run(experiment, run_name=study_name, tags={
        "gansweep.study": spec.name, "gansweep.role": "parent", "gansweep.optuna_study": study_name,
        "mlflow.note.content": spec.description})
    params = {"study": spec.name, "description": spec.description, "dataset": spec.dataset,
              "variants": ",".join(spec.variants), "budget_unit": spec.budget_unit, "epochs": spec.epochs,
              "objective": _objective_text(spec), "sampler": spec.sampler,
              "pruner": spec.pruner, "seeds": ",".join(map(str, spec.seeds)), "space": dict(spec.space),
              "config": dict(spec.config), "study_file": spec.path}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def _sampler(spec: StudySpec) -> Any:
    if spec.sampler == "grid":
        return _AskTellGrid(spec.grid_axes(), seed=0)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=0)
    return optuna.samplers.RandomSampler(seed=0)


class _AskTellGrid(optuna.samplers.GridSampler):
    """Optuna's grid driven through ask/tell: the runner decides when the grid is done, so the sampler must not
    call study.stop(), which Optuna allows only inside optimize()."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


def _pruner(spec: StudySpec) -> Any:
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[spec.pruner]()


class _TrialRunner:
    """Runs trials of one study: asks Optuna for parameters, trains, and tells Optuna and MLflow how it ended."""

    def __init__(self, spec: StudySpec, study: Any, client: Any, experiment: str, parent_id: str, data: Any,
                 evaluator: Any, progress: bool):
        self.spec, self.study, self.client = spec, study, client
        self.experiment, self.parent_id, self.data, self.progress = experiment, parent_id, data, progress
        self.evaluator = evaluator

    def run_grid(self, limit: int | None) -> int:

        grid = self.spec.grid_points()
        ran = 0
        while limit is None or ran < limit:
            trials = self.study.get_trials(deepcopy=False)
            taken = {_key(t.params) for t in trials if t.state in _LIVE}
            remaining = [p for p in grid if _key(p) not in taken]
            if not remaining:
                break
            failed = {_key(t.params) for t in trials if t.state == TrialState.FAIL}
            redo = [p for p in remaining if _key(p) in failed]
            if redo:  # GridSampler counts a failed point as visited; ask for it again explicitly
                self.study.enqueue_trial(redo[0])
            trial = self.study.ask()
            params = {"variant": trial.suggest_categorical("variant", list(self.spec.variants))}
            for name, values in self.spec.space.items():
                params[name] = trial.suggest_categorical(name, list(values))
            params["seed"] = trial.suggest_categorical("seed", list(self.spec.seeds))
            if self._stand_down_if_taken(trial, lambda other: _key(other.params) == _key(params), "point"):
                continue
            self._run(trial, params, len(grid))
            ran += 1
        return ran

    def _stand_down_if_taken(self, trial: Any, same: Callable[[Any], bool], what: str) -> bool:
        """Two processes can be handed the same work at once (a grid's last point, a re-run); the trial with
        the higher number stands down as a duplicate."""
        for other in self.study.get_trials(deepcopy=False, states=_LIVE):
            if other.number < trial.number and same(other):
                trial.set_user_attr("status", "duplicate")
                trial.set_user_attr("reason", f"{what} already taken by trial {other.number}")
                self.study.tell(trial, state=TrialState.FAIL)
                return True
        return False

    def run_sampled(self) -> int:
        """The search: `trials` per variant, each trial given to the variant with the fewest so far, so every
        variant gets the same budget. Then, with `best_seeds`, each variant's best parameters again per seed."""
        spec, ran = self.spec, 0
        total = (spec.trials or 0) * len(spec.variants) + len(spec.best_seeds) * len(spec.variants)
        while (variant := self._next_search_variant()) is not None:
            self.study.enqueue_trial({"variant": variant})
            trial = self.study.ask()
            params = {"variant": trial.suggest_categorical("variant", list(spec.variants))}
            for name, values in spec.space.items():
                params[name] = _suggest(trial, name, values)
            params["seed"] = spec.seeds[trial.number % len(spec.seeds)]
            trial.set_user_attr("seed", params["seed"])
            trial.set_user_attr("phase", "search")
            self._run(trial, params, total)
            ran += 1
        for best, seed in self._reruns():
            self.study.enqueue_trial(best.params)
            trial = self.study.ask()
            params = {"variant": trial.suggest_categorical("variant", list(spec.variants))}
            params.update({name: _suggest(trial, name, values) for name, values in spec.space.items()})
            for key, value in (("seed", seed), ("phase", "rerun"), ("rerun_of", best.number)):
                trial.set_user_attr(key, value)
            if self._stand_down_if_taken(trial, lambda other: other.user_attrs.get("phase") == "rerun"
                                         and other.params.get("variant") == params["variant"]
                                         and other.user_attrs.get("seed") == seed, "re-run"):
                continue
            self._run(trial, {**params, "seed": seed}, total)
            ran += 1
        return ran

    def _live(self, phase: str) -> list[Any]:
        """Trials of a phase that count as done or under way (failed and interrupted ones are run again)."""
        return [t for t in self.study.get_trials(deepcopy=False, states=_LIVE) if t.user_attrs.get("phase") == phase]

    def _next_search_variant(self) -> str | None:
        counts = {v: 0 for v in self.spec.variants}
        for t in self._live("search"):
            counts[t.params.get("variant")] = counts.get(t.params.get("variant"), 0) + 1
        variant = min(self.spec.variants, key=lambda v: counts[v])
        return variant if counts[variant] < (self.spec.trials or 0) else None

    def _reruns(self) -> list[tuple[Any, int]]:
        """(best search trial, seed) for every variant and best seed not yet re-run."""
        if not self.spec.best_seeds:
            return []
        search = [t for t in self._live("search") if t.state == TrialState.COMPLETE]
        done = {(t.params.get("variant"), t.user_attrs.get("seed")) for t in self._live("rerun")}
        todo = []
        for variant in self.spec.variants:
            finished = [t for t in search if t.params.get("variant") == variant]
            if not finished:
                continue
            sign = 1 if self.spec.objective.direction == "minimize" else -1
            best = min(finished, key=lambda t: sign * t.value)
            todo += [(best, seed) for seed in self.spec.best_seeds if (variant, seed) not in done]
        return todo


    def _run(self, trial: Any, params: dict[str, Any], total: int) -> None:

        from gansweep.runs import tracked_training
        from gansweep.variants import get_variant

        spec = self.spec
        variant = get_variant(params["variant"])
        swept = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items() if k != "variant")
        run = self.client.create_run(self.experiment, run_name=f"{trial.number:03d} {variant.name} {swept}", tags={
            "mlflow.parentRunId": self.parent_id, "gansweep.study": spec.name, "gansweep.role": "trial",
            "gansweep.optuna_study": self.study.study_name, "gansweep.trial": str(trial.number),
            "gansweep.variant": variant.name, "gansweep.dataset": spec.dataset,
            "gansweep.seed": str(params["seed"])})
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            config = variant.config(**spec.changes(params))
        except GansweepError as e:
            self._end(trial, run_id, "failed", str(e), TrialState.FAIL)
            return
        label = f"trial {trial.number + 1}/{total} {variant.name} {swept}"
        extra = {"study": spec.name, "trial": trial.number, "budget_unit": spec.budget_unit,
                 "objective": spec.objective.key, **{f"swept.{k}": v for k, v in params.items()}}
        hooks: list[Hook] = [_OptunaReport(trial, spec.objective.key, spec.pruner)]
        if spec.saturation_window:
            hooks.append(_SaturationStop(spec.saturation_window))
        if spec.collapse_window:
            hooks.append(_CollapseStop(spec.collapse_window))
        try:
            result = tracked_training(self.client, run_id, variant, config, self.data, self.evaluator,
                                      spec.objective.metric, extra, hooks, label if self.progress else None)
        except KeyboardInterrupt:
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted by the user")
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        except GansweepError as e:
            self._end(trial, run_id, "failed", str(e), TrialState.FAIL)
            return
        for name, value in result.scores.items():
            if name.startswith("score/"):
                trial.set_user_attr(f"final.{name.removeprefix('score/')}", value)
        for name, note in result.notes.items():
            trial.set_user_attr(name, note)
        for key, value in (("status", result.status), ("reason", result.reason), ("epochs", result.epochs),
                           ("g_steps", result.steps), ("images_seen", result.images_seen),
                           ("wall_time_s", round(result.wall_time_s, 2))):
            trial.set_user_attr(key, value)
        objective = result.scores.get(spec.objective.key)
        if result.status == "finished" and objective is not None and math.isfinite(objective):
            self.study.tell(trial, objective)
        else:  # pruned, diverged, collapsed: a finished point of the grid, with its reason, never re-run
            self.study.tell(trial, state=TrialState.PRUNED)

    def _end(self, trial: Any, run_id: str, status: str, reason: str, state: Any) -> None:
        from gansweep.tracking import end_run

        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        self.study.tell(trial, state=state)
        end_run(self.client, run_id, status, reason)


def _suggest(trial: Any, name: str, values: Any) -> Any:
    if not isinstance(values, Mapping):
        return trial.suggest_categorical(name, list(values))
    low, high, log = values["low"], values["high"], bool(values.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not log:
        return trial.suggest_int(name, low, high)
    return trial.suggest_float(name, float(low), float(high), log=log)


def ranked_table(study: Any, spec: StudySpec) -> Any:
    """One row per trial of the study (duplicates left out), best objective first, unfinished last."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("status") == "duplicate" or t.state.name in ("RUNNING", "WAITING"):
            continue
        row = {"trial": t.number, "variant": t.params.get("variant"),
               "seed": t.params.get("seed", t.user_attrs.get("seed"))}
        row.update({k: v for k, v in t.params.items() if k not in ("variant", "seed")})
        row[spec.objective.metric] = t.value
        for name in TABLE_SCORES:
            if name != spec.objective.metric and f"final.{name}" in t.user_attrs:
                row[name] = t.user_attrs[f"final.{name}"]
        if "phase" in t.user_attrs and spec.best_seeds:
            row["phase"] = t.user_attrs["phase"]
        row["status"] = t.user_attrs.get("status", t.state.name.lower())
        row["epochs"] = t.user_attrs.get("epochs")
        row["wall_s"] = t.user_attrs.get("wall_time_s")
        row["run_id"] = t.user_attrs.get("mlflow_run_id")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(spec.objective.metric, ascending=spec.objective.direction == "minimize",
                             na_position="last", kind="stable").reset_index(drop=True)


def seed_spread(table: Any, spec: StudySpec) -> Any:
    """Per variant, the objective over the re-runs of its best parameters: the answer of a fair comparison is a
    distribution per variant, not one lucky run. Empty unless the study has best_seeds."""
    import pandas as pd

    metric = spec.objective.metric
    if table.empty or "phase" not in table:
        return pd.DataFrame()
    reruns = table[table["phase"] == "rerun"]
    if reruns.empty:
        return pd.DataFrame()
    spread = reruns.groupby("variant")[metric].agg(["count", "mean", "std", "min", "max"])
    return spread.sort_values("mean", ascending=spec.objective.direction == "minimize").reset_index()


class _OptunaReport(Hook):
    """Reports the objective to Optuna after every epoch and stops the trial when Optuna's pruner says so."""

    def __init__(self, trial: Any, key: str, pruner: str):
        self.trial, self.key, self.pruner = trial, key, pruner

    def on_epoch_end(self, state: TrainState) -> None:
        value = state.scores.get(self.key)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, state.epoch)
        if self.trial.should_prune():
            raise StopTraining("pruned", f"{self.pruner} pruner: {self.key} {value:.4g} at epoch {state.epoch}")


class _SaturationStop(Hook):
    """Ends a trial whose D wins outright for `window` consecutive G steps: D(x) > 0.99 and D(G(z)) < 0.01."""

    def __init__(self, window: int):
        self.window, self.run = window, 0

    def on_log(self, state: TrainState, log: StepLog) -> None:
        if not state.variant.loss_part.probabilistic:
            return
        for step, real, fake in zip(log.steps, log.metrics["d/real"], log.metrics["d/fake"]):
            self.run = self.run + 1 if real > 0.99 and fake < 0.01 else 0
            if self.run >= self.window:
                raise StopTraining("pruned", f"saturated discriminator: D(x) > 0.99 and D(G(z)) < 0.01 "
                                             f"for {self.window} G steps, up to step {step}")


class _CollapseStop(Hook):
    """Ends a trial whose class coverage, once it reached MODE_COLLAPSE_COVERAGE, stays below it for `window`
    evaluations in a row."""

    def __init__(self, window: int):
        self.window, self.run, self.peak = window, 0, 0.0

    def on_epoch_end(self, state: TrainState) -> None:
        from gansweep.evaluation import MODE_COLLAPSE_COVERAGE, collapsed

        coverage = state.scores.get("score/coverage")
        if coverage is None:
            return
        self.run = self.run + 1 if collapsed(self.peak, coverage) else 0
        self.peak = max(self.peak, coverage)
        if self.run >= self.window:
            raise StopTraining("collapsed", f"mode collapse: coverage {coverage:.2f} < {MODE_COLLAPSE_COVERAGE} "
                                            f"for {self.window} evaluations, up to epoch {state.epoch}")


def format_table(table: Any) -> str:
    if table.empty:
        return "(no trials)"
    shown = table.drop(columns=["run_id"]).copy()
    shown["run"] = table["run_id"].str[:8]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")

