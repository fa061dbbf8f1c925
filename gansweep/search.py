"""A TPE or random study's trials: Optuna's sampler chooses each trial's parameters, every variant gets the same
number of trials, then each variant's best parameters are run again with the study's `best_seeds`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gansweep.peers import LIVE
from gansweep.resume import stopped_early
from gansweep.attempts import asked_params, point_key
from gansweep.trials import Ask, Member, TrialRunner

__all__ = ["SearchRunner", "stopped_search_trial"]


class SearchRunner(TrialRunner):
    """Runs a sampled study's search and re-runs, taking over those of other processes that died."""

    def run(self) -> int:
        """The search: `trials` per variant, each trial given to the variant with the fewest so far, so every
        variant gets the same budget, up to `population` of one variant asked for at once (TPE's constant liar
        lets each see the others as running). Then, with `best_seeds`, each variant's best parameters again per
        seed, once no search trial runs anywhere."""
        spec = self.spec
        total = (spec.trials or 0) * len(spec.variants) + len(spec.best_seeds) * len(spec.variants)
        with self.showing(total):
            return self._hand_out()

    def _hand_out(self) -> int:
        spec, ran = self.spec, 0
        while True:
            self.peers.fail_dead()
            if (variant := self._next_search_variant()) is not None:
                left = (spec.trials or 0) - self._search_counts()[variant]
                size = self._fit({"variant": variant}, min(self.population, left))
                ran += self._run_population([self._search_ask(variant)] * size)
            elif self.peers.wait_for_others(lambda t: t.user_attrs.get("phase") == "search"):
                continue
            elif todo := self._reruns():
                variant = todo[0][0].params["variant"]
                same = [(best, seed) for best, seed in todo if best.params["variant"] == variant]
                size = self._fit(todo[0][0].params, self.population)
                ran += self._run_population([self._rerun_ask(best, seed) for best, seed in same[:size]])
            elif self.peers.wait_for_others(lambda t: True):
                continue
            else:
                self.peers.retire_waiting()
                return ran

    def _search_ask(self, variant: str) -> Ask:
        """The sampler's next point of `variant`, or first a point of it whose trial stopped early (interrupted,
        lost, failed by the machine), asked again with its seed so that it resumes from its checkpoint."""
        def ask(alive: contextlib.ExitStack) -> Member | None:
            spec = self.spec
            stopped = stopped_search_trial(self.study.get_trials(deepcopy=False), variant, self.spec.space)
            if stopped is None:
                self.study.enqueue_trial({"variant": variant})
            else:  # the seed travels with the enqueued trial, to whichever process is handed it
                point = asked_params(stopped)
                self.study.enqueue_trial({k: v for k, v in point.items() if k != "seed"},
                                         user_attrs={"seed": point["seed"]})
            trial = self.study.ask()
            alive.enter_context(self.liveness.alive(trial))
            params = {"variant": trial.suggest_categorical("variant", list(spec.variants))}
            for name, values in spec.space.items():
                params[name] = _suggest(trial, name, values)
            again = "seed" in trial.user_attrs
            params["seed"] = trial.user_attrs["seed"] if again else spec.seeds[trial.number % len(spec.seeds)]
            trial.set_user_attr("seed", params["seed"])
            trial.set_user_attr("phase", "search")
            if again and self.peers.stand_down_if_taken(trial, lambda other: other.user_attrs.get("phase") == "search"
                                                        and point_key(asked_params(other)) == point_key(params),
                                                        "search point"):
                return None
            return self._prepare(trial, params, ("search", params["variant"]))

        return ask

    def _rerun_ask(self, best: Any, seed: int) -> Ask:
        """Re-run a variant's best parameters with `seed`; None where another process took it first."""
        def ask(alive: contextlib.ExitStack) -> Member | None:
            spec = self.spec
            self.study.enqueue_trial(best.params)
            trial = self.study.ask()
            alive.enter_context(self.liveness.alive(trial))
            params = {"variant": trial.suggest_categorical("variant", list(spec.variants))}
            params.update({name: _suggest(trial, name, values) for name, values in spec.space.items()})
            for key, value in (("seed", seed), ("phase", "rerun"), ("rerun_of", best.number)):
                trial.set_user_attr(key, value)
            if self.peers.stand_down_if_taken(trial, lambda other: other.user_attrs.get("phase") == "rerun"
                                              and asked_params(other).get("variant") == params["variant"]
                                              and other.user_attrs.get("seed") == seed, "re-run"):
                return None
            return self._prepare(trial, {**params, "seed": seed}, ("rerun", params["variant"], seed))

        return ask

    def _live(self, phase: str) -> list[Any]:
        """Trials of a phase that count as done or under way (failed and interrupted ones are run again)."""
        return [t for t in self.study.get_trials(deepcopy=False, states=LIVE) if t.user_attrs.get("phase") == phase]

    def _search_counts(self) -> dict[str, int]:
        counts = {v: 0 for v in self.spec.variants}
        for t in self._live("search"):
            counts[t.params.get("variant")] = counts.get(t.params.get("variant"), 0) + 1
        return counts

    def _next_search_variant(self) -> str | None:
        counts = self._search_counts()
        open_variants = [v for v in self.spec.variants if not self._given_up(("search", v))]
        if not open_variants:
            return None
        variant = min(open_variants, key=lambda v: counts[v])
        return variant if counts[variant] < (self.spec.trials or 0) else None

    def _reruns(self) -> list[tuple[Any, int]]:
        """(best search trial, seed) for every variant and best seed not yet re-run (nor given up)."""
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
            todo += [(best, seed) for seed in self.spec.best_seeds
                     if (variant, seed) not in done and not self._given_up(("rerun", variant, seed))]
        return todo

def stopped_search_trial(trials: Sequence[FrozenTrial], variant: str, space: Iterable[str]) -> FrozenTrial | None:
    """The earliest search trial of `variant` that stopped early and is its point's latest failed attempt,
    where no trial holds the point now (done or under way) and the point is whole (every parameter of `space`
    and the seed recorded: a trial can die between being asked and suggesting)."""
    search = [t for t in trials if t.user_attrs.get("phase") == "search" and t.user_attrs.get("status") != "duplicate"]
    held = {point_key(asked_params(t)) for t in search if t.state in LIVE}
    latest = {point_key(asked_params(t)): t for t in sorted(search, key=lambda t: t.number)
              if t.state == TrialState.FAIL}
    whole = {"variant", "seed", *space}
    left = [t for key, t in latest.items() if key not in held and stopped_early(t)
            and asked_params(t).get("variant") == variant and set(asked_params(t)) == whole]
    return min(left, key=lambda t: t.number) if left else None


def _suggest(trial: Any, name: str, values: Any) -> Any:
    if not isinstance(values, Mapping):
        return trial.suggest_categorical(name, list(values))
    low, high, log = values["low"], values["high"], bool(values.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not log:
        return trial.suggest_int(name, low, high)
    return trial.suggest_float(name, float(low), float(high), log=log)

