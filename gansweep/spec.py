"""A study file, read and checked whole: every value is refused here, before any store, device or data is touched.

The same `StudySpec` checks run on the file's values and on the command line's overrides (a spec is re-made with
`dataclasses.replace`), so `epochs = "five"` in a file and `--epochs -1` on the command line meet the same rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from gansweep.config import MAX_SEED, TrainConfig, check_types, field_names
from gansweep.errors import ConfigError, UnknownNameError

__all__ = ["StudySpec", "Objective", "load_spec", "SAMPLERS", "PRUNERS", "BUDGET_UNITS", "BUDGET_KEYS",
           "MAX_TRIALS"]

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
BUDGET_UNITS = ("images",)
BUDGET_KEYS = ("epochs", "batch_size")  # top-level keys of a study file that are also TrainConfig fields
MAX_TRIALS = 100_000
_SPECIAL_AXES = ("beta1",)  # swept names that are not TrainConfig fields as they stand
_RENAMED = {"saturation_window": "a saturated D now ends every trial as diverged: set [config] divergence_window "
                                 "(G steps; 0 turns it off)"}


@dataclass(frozen=True)
class Objective:
    metric: str = "fid_proxy"  # a name in scores.SCORES, logged as score/NAME
    direction: str = ""  # minimize or maximize; empty: the score's own direction

    def __post_init__(self) -> None:
        from gansweep.scores import SCORES

        check_types(self)
        if self.metric not in SCORES:
            raise ConfigError(str(UnknownNameError("metric", self.metric, SCORES)))
        if not self.direction:
            object.__setattr__(self, "direction", SCORES[self.metric].direction)
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"direction must be minimize or maximize, got {self.direction!r}")

    @property
    def key(self) -> str:
        return f"score/{self.metric}"


@dataclass(frozen=True)
class StudySpec:
    """One study file. Every trial of a study gets the same budget, stated in one unit for every variant.

    Precedence, lowest first: the variant's defaults, `[config]`, the budget keys (`epochs`, `batch_size`), the
    swept value of a trial; command-line options replace the file's values before any of it is checked.
    """

    name: str
    description: str
    variants: tuple[str, ...]
    dataset: str = "mnist-5k"
    budget_unit: str = "images"  # images seen by D: `epochs` passes over the training split, whatever n_critic
    epochs: int = 5
    batch_size: int | None = None  # None: each variant's default
    objective: Objective = field(default_factory=Objective)
    sampler: str = "grid"
    pruner: str = "none"  # sensitivity studies measure whole curves: a failure is a data point, not a gap
    collapse_window: int = 0  # evaluations in a row judged a mode collapse (collapse.py) that end a trial
    trials: int | None = None  # tpe/random: trials per variant, the same budget for each; a grid runs every point
    seeds: tuple[int, ...] = (0,)
    best_seeds: tuple[int, ...] = ()  # tpe/random: each variant's best parameters are re-run with these seeds
    sampler_seed: int = 0  # the process that creates the study samples with it; others draw their own, so
    # parallel workers and a resume do not repeat its points
    space: Mapping[str, Any] = field(default_factory=dict)  # name -> list of values, or {low, high, log}
    config: Mapping[str, Any] = field(default_factory=dict)  # fixed TrainConfig values for every trial
    n_eval: int | None = None  # images per evaluation; None: 5,000 on every device, bounded by the split
    path: str = ""

    def __post_init__(self) -> None:
        check_types(self)
        _check_spec(self)

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


def _check_spec(spec: StudySpec) -> None:
    """Every rule a study must meet, for every variant it names and every value it can give a trial."""
    from gansweep.data import get_source
    from gansweep.scores import check_eval_size
    from gansweep.trainer import g_steps_per_epoch
    from gansweep.variants import get_variant

    if not spec.name.strip():
        raise ConfigError("name must not be empty")
    if not spec.variants:
        raise ConfigError("variants must name at least one variant (see: gansweep list variants)")
    _unique("variants", spec.variants)
    try:
        for name in spec.variants:
            get_variant(name)
    except UnknownNameError as e:
        raise ConfigError(f"variants: {e}") from None
    try:
        source = get_source(spec.dataset)
    except UnknownNameError as e:
        raise ConfigError(f"dataset: {e}") from None
    rules = [("sampler", spec.sampler in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}"),
             ("pruner", spec.pruner in PRUNERS, f"must be one of {', '.join(PRUNERS)}"),
             ("budget_unit", spec.budget_unit in BUDGET_UNITS, f"must be one of {', '.join(BUDGET_UNITS)}"),
             ("trials", spec.sampler != "grid" or spec.trials is None,
              "is for tpe/random searches; a grid runs every point (--trials N runs N of them now)"),
             ("trials", spec.sampler == "grid" or (spec.trials is not None and 1 <= spec.trials <= MAX_TRIALS),
              f"must be in [1, {MAX_TRIALS}] for a {spec.sampler} search"),
             ("seeds", len(spec.seeds) >= 1, "needs at least one seed"),
             ("best_seeds", spec.sampler != "grid" or not spec.best_seeds, "is only for tpe/random searches"),
             ("collapse_window", 0 <= spec.collapse_window <= 1000, "must be in [0, 1000] (0: off)"),
             ("sampler_seed", 0 <= spec.sampler_seed <= MAX_SEED, f"must be in [0, {MAX_SEED}]")]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {getattr(spec, key)!r}")
    check_eval_size(spec.n_eval, "n_eval")
    for key in ("seeds", "best_seeds"):
        _unique(key, getattr(spec, key))
        for seed in getattr(spec, key):
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"{key} must be in [0, {MAX_SEED}], got {seed!r}")
    unknown = set(spec.config) - field_names(TrainConfig)
    if unknown:
        raise ConfigError(f"config: unknown training parameter(s) {', '.join(sorted(unknown))}")
    for key in spec.space:
        if key not in field_names(TrainConfig) | set(_SPECIAL_AXES):
            raise ConfigError(f"space.{key}: not a training parameter (see TrainConfig)")
        if key in spec.config:
            raise ConfigError(f"space.{key}: also fixed in [config]; set it in one place")
        if key in ("variant", "seed"):
            raise ConfigError(f"space.{key}: the study's {key}s are its top-level {key}s key")
        if key == "batch_size" and spec.batch_size is not None:
            raise ConfigError("space.batch_size: also set by the top-level batch_size; set it in one place")
    if "betas" in spec.config and "beta1" in spec.space:
        raise ConfigError("space.beta1: [config] betas fixes it too; set it in one place")
    values = {key: _values(spec, key, given) for key, given in spec.space.items()}
    for variant in spec.variants:
        cases = [{}] + [{key: v} for key, vs in values.items() for v in vs]
        cases += [{"seed": s} for s in (*spec.seeds, *spec.best_seeds)]
        for case in cases:
            where = next(iter(case), None)  # None: the file's fixed values, [config] and budget keys
            try:
                config = get_variant(variant).config(**spec.changes({"variant": variant, **case}))
                g_steps_per_epoch(config, source.n_train)
            except ConfigError as e:
                key = "" if where is None else f"space.{where}: " if where in values else f"{where}s: "
                raise ConfigError(f"{key}{e} (variant {variant})") from None


def _unique(key: str, values: tuple[Any, ...]) -> None:
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{key} lists {', '.join(repeated)} more than once")


def _values(spec: StudySpec, key: str, given: Any) -> list[Any]:
    """The values of a swept axis that bound what a trial can get: a list's values, a range's ends."""
    if isinstance(given, Mapping):
        if spec.sampler == "grid":
            raise ConfigError(f"space.{key}: a grid needs a list of values, not a range")
        if set(given) - {"low", "high", "log"} or not {"low", "high"} <= set(given):
            raise ConfigError(f"space.{key}: a range is {{low, high}} with an optional log = true, got {given!r}")
        low, high, log = given["low"], given["high"], given.get("log", False)
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"space.{key}.{name} must be a finite number, got {value!r}")
        if not isinstance(log, bool):
            raise ConfigError(f"space.{key}.log must be true or false, got {log!r}")
        if low > high:
            raise ConfigError(f"space.{key}: low must not exceed high, got low {low!r} > high {high!r}")
        if log and low <= 0:
            raise ConfigError(f"space.{key}: a log range needs low > 0, got {low!r}")
        return [low, high]
    if not isinstance(given, (list, tuple)) or not given:
        raise ConfigError(f"space.{key} must be a non-empty list of values or a {{low, high}} range, got {given!r}")
    for value in given:
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"space.{key}: each value must be a number, a string or a boolean, got {value!r}")
    _unique(f"space.{key}", tuple(given))
    return list(given)


def load_spec(path: Path | Traversable) -> StudySpec:
    """Read and check a study file; every error names the file and the key."""
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{where}: cannot read study file: {e}") from None
    known = {f.name for f in dataclasses.fields(StudySpec)} - {"path"}
    for key in raw:
        if key in _RENAMED:
            raise ConfigError(f"{where}: {key}: {_RENAMED[key]}")
        if key not in known:
            raise ConfigError(f"{where}: {key}: unknown key; known: {', '.join(sorted(known))}")
    for key in ("name", "description", "variants"):
        if key not in raw:
            raise ConfigError(f"{where}: {key}: missing")
    if raw["name"] != Path(where).stem:
        raise ConfigError(f"{where}: name: a study's name is its file name, {Path(where).stem!r}, got "
                          f"{raw['name']!r}; rename the file or change the name")
    try:
        config = dict(raw.get("config", {}))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: config must be a table, got {raw['config']!r}") from None
    for key in BUDGET_KEYS:  # a budget key may be set at the top or in [config], not in both
        if key in config:
            if key in raw:
                raise ConfigError(f"{where}: {key} is set twice, at the top ({raw[key]!r}) and in [config] "
                                  f"({config[key]!r}); keep one")
            raw[key] = config.pop(key)
    try:
        objective = raw.pop("objective", {})
        if not isinstance(objective, Mapping):
            raise ConfigError(f"objective must be a table {{metric = NAME, direction = minimize|maximize}}, "
                              f"got {objective!r}")
        unknown = set(objective) - {"metric", "direction"}
        if unknown:
            raise ConfigError(f"objective: unknown key(s) {', '.join(sorted(unknown))}; known: direction, metric")
        return StudySpec(**{**raw, "config": config, "objective": Objective(**objective), "path": where})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
