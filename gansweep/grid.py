"""A grid study's trials: each point of the study's grid once, in the grid's order, points that share a step
handed out together as a population.

A point is the variant, the swept values and the seed. The seed is the trial's user attribute, not an Optuna
parameter: a study's parameters are its hyperparameters, so that Optuna's importance and contour plots (and
optuna-dashboard's) are about them. Every point is enqueued: the runner, not a sampler, says which comes next."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from gansweep.peers import LIVE
from gansweep.attempts import asked_params, point_key
from gansweep.trials import Ask, Member, TrialRunner

__all__ = ["GridRunner"]


class GridRunner(TrialRunner):
    """Runs the grid's remaining points, taking over those of other processes that died."""

    def run(self, limit: int | None) -> int:
        """Run up to `limit` points (all that remain); returns how many trained."""
        grid = self.spec.grid_points()
        with self.showing(len(grid)):
            return self._hand_out(grid, limit)

    def _hand_out(self, grid: list[dict[str, Any]], limit: int | None) -> int:
        ran = 0
        while limit is None or ran < limit:
            self.peers.fail_dead()
            trials = self.study.get_trials(deepcopy=False)
            taken = {point_key(asked_params(t)) for t in trials if t.state in LIVE}
            remaining = [p for p in grid if point_key(p) not in taken and not self._given_up(("point", point_key(p)))]
            if not remaining:
                if limit is None and self.peers.wait_for_others(lambda t: True):
                    continue
                self.peers.retire_waiting()
                break
            if self.population > 1:
                points = self._same_step(remaining, None if limit is None else limit - ran)
                ran += self._run_population([self._point_ask(point) for point in points])
                continue
            trial = self._ask(remaining[0])
            if trial is None:
                continue
            with self.liveness.alive(trial):
                params = self._grid_params(trial)
                if self.peers.stand_down_if_taken(trial, _same_point(params), "point"):
                    continue
                self._train(trial, params, ("point", point_key(params)))
            ran += 1
        return ran

    def _ask(self, point: dict[str, Any]) -> Any:
        """A trial for `point`: its hyperparameters enqueued as Optuna parameters, its seed as a user attribute.
        Another process may take the enqueued trial first; the fresh trial Optuna then makes holds no point,
        and is ended as a duplicate (None)."""
        self.study.enqueue_trial({k: v for k, v in point.items() if k != "seed"}, user_attrs={"seed": point["seed"]})
        trial = self.study.ask()
        if "seed" not in trial.user_attrs:
            trial.set_user_attr("status", "duplicate")
            trial.set_user_attr("reason", "its enqueued point was taken by another process")
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        return trial

    def _grid_params(self, trial: Any) -> dict[str, Any]:
        params = {"variant": trial.suggest_categorical("variant", list(self.spec.variants))}
        for name, values in self.spec.space.items():
            params[name] = trial.suggest_categorical(name, list(values))
        params["seed"] = trial.user_attrs["seed"]
        return params

    def _same_step(self, points: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
        """The first point and, in grid order, the points that can share its step, up to the population size
        (and, on CUDA, to what fits in memory)."""
        first = self._step_key(points[0])
        size = self._fit(points[0], self.population if limit is None else min(self.population, limit))
        return [p for p in points if self._step_key(p) == first][:size]

    def _point_ask(self, point: dict[str, Any]) -> Ask:
        def ask(alive: contextlib.ExitStack) -> Member | None:
            trial = self._ask(point)
            if trial is None:
                return None
            alive.enter_context(self.liveness.alive(trial))
            params = self._grid_params(trial)
            if self.peers.stand_down_if_taken(trial, _same_point(params), "point"):
                return None
            return self._prepare(trial, params, ("point", point_key(params)))

        return ask


def _same_point(params: dict[str, Any]) -> Callable[[Any], bool]:
    """Whether another trial was handed the point `params`."""
    return lambda other: point_key(asked_params(other)) == point_key(params)
