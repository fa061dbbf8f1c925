"""Which trial stands for a point of a study. A trial that stopped before its end (interrupted, its process lost,
or failed) is run again by a later trial of the same point: resumed from its checkpoint into the same MLflow run,
or started over in a new one. A study's tables leave out such attempts once a later one of the same point
exists, so a point run again counts once in a table, a mean or a group's `n`; the earlier attempts stay in
Optuna and MLflow as they were recorded, and the tables say how many they leave out."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["ENDINGS", "RUN_AGAIN", "replaced", "point_key", "asked_params"]

# How a trial can end, each counted as the parent's metric trials/NAME; the first four are results, the others
# are run again.
ENDINGS = ("finished", "pruned", "diverged", "collapsed", "failed", "interrupted", "lost")
RUN_AGAIN = ENDINGS[4:]


def replaced(attempts: Sequence[tuple[Hashable, int | None, str | None]]) -> set[int]:
    """Positions in `attempts`, each (point, trial number, status), of those that stopped early and that a later
    trial (a higher number) of the same point replaced. Attempts without a trial number are never replaced."""
    latest: dict[Hashable, int] = {}
    for point, trial, _ in attempts:
        if trial is not None:
            latest[point] = max(trial, latest.get(point, trial))
    return {i for i, (point, trial, status) in enumerate(attempts)
            if trial is not None and status in RUN_AGAIN and trial < latest[point]}


def point_key(params: Mapping[str, Any]) -> tuple:
    """A point as a hashable key, the same whatever order its parameters come in."""
    return tuple(sorted(params.items()))


def asked_params(trial: Any) -> dict[str, Any]:
    """A trial's point: its parameters (also while an enqueued one has not suggested them yet: Optuna holds them
    aside) and its seed, a user attribute (a parameter in studies of an earlier gansweep)."""
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    if "seed" not in params and "seed" in trial.user_attrs:
        params = {**params, "seed": trial.user_attrs["seed"]}
    return params
