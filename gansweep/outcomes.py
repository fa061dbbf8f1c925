"""How a study's trials end, told to Optuna and MLflow: a run's result the moment it ends (`Recorded`), a trial
that did not finish (`Outcomes.end`), and a failure counted against its point's retries (`Outcomes.fail`).

Recording can fail too (a full disk, a server gone): that must not hide why a trial ended, and costs nothing, since
a trial left RUNNING is found as lost and run again. A trial that another process ended meanwhile, taking this one
for dead, is left as that process left it: its point is the study's again.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from gansweep.errors import first_line
from gansweep.hooks import Hook, TrainResult, TrainState
from gansweep.liveness import GRACE_S
from gansweep.resume import RESUMABLE_ATTR
from gansweep.spec import StudySpec

__all__ = ["Outcomes", "Recorded", "resumable"]


class Outcomes:
    """Tells Optuna and MLflow how each trial of one study ended, and counts each point's failures."""

    def __init__(self, spec: StudySpec, study: Any, client: Any, counted: Callable[[], None]):
        self.spec, self.study, self.client = spec, study, client
        self.counted = counted  # called once a trial's end is recorded
        # failed trials in this invocation per ("point", params) of a grid, ("search", variant) or ("rerun", ...)
        self.attempts: Counter[tuple] = Counter()
        self.failed: dict[tuple, str] = {}  # point -> its latest failure, as a line for the summary

    def record(self, trial: Any, result: TrainResult) -> None:
        """A run that ended by itself: finished, or stopped (pruned, diverged, collapsed)."""
        for name, value in result.scores.items():  # what tables report: the test slice's scores
            if name.startswith("test/"):
                trial.set_user_attr(f"final.{name.removeprefix('test/')}", value)
        for name, note in result.notes.items():
            trial.set_user_attr(name, note)
        for attr, value in (("status", result.status), ("reason", result.reason), ("epochs", result.epochs),
                            ("g_steps", result.steps), ("images_seen", result.images_seen),
                            ("wall_time_s", round(result.wall_time_s, 2))):
            trial.set_user_attr(attr, value)
        objective = result.scores.get(self.spec.objective.key)
        if result.status == "finished" and objective is not None and math.isfinite(objective):
            self.study.tell(trial, objective)
        else:  # pruned, diverged, collapsed: a finished point of the grid, with its reason, never re-run
            self.study.tell(trial, state=TrialState.PRUNED)
        self.counted()

    def fail(self, trial: Any, run_id: str, key: tuple, what: str, reason: str) -> None:
        self.attempts[key] += 1
        tries = self.attempts[key]
        self.failed[key] = f"{what} failed {tries} time(s): {reason}"
        self.end(trial, run_id, "failed", reason)

    def end(self, trial: Any, run_id: str, status: str, reason: str, retell: bool = False) -> None:
        """Record a trial that did not finish, and end its run if it still runs; `retell`: a run already ended
        gets this reason too (it was ended with the bare error, and the runner knows more)."""
        from gansweep.tracking import end_run

        try:
            trial.set_user_attr("status", status)
            trial.set_user_attr("reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            if self.client.get_run(run_id).info.status == "RUNNING":
                end_run(self.client, run_id, status, reason)
            elif retell:
                self.client.set_tag(run_id, "gansweep.reason", reason)
            self.counted()
        except Exception as e:
            print(f"warning: trial {trial.number} ended ({status}: {reason}) but could not be recorded: "
                  f"{first_line(e)}; it will be run again",
                  file=sys.stderr)


class Recorded(Hook):
    """Tells Optuna and the trial how the run ended, the moment it ends: in a population its peers may train
    on, and whatever befalls them later must not touch a trial already done. An interrupted run is left to the
    runner, which records the interruption."""

    def __init__(self, outcomes: Outcomes, trial: Any):
        self.outcomes, self.trial, self.done = outcomes, trial, False

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        if result.status == "interrupted":
            return
        try:
            self.outcomes.record(self.trial, result)
        except UpdateFinishedTrialError:  # another process ended it, taking this one for dead: its point runs again
            print(f"warning: trial {self.trial.number} was ended by another process while this one trained it "
                  f"(no sign of life from here for {GRACE_S} s: a suspended machine, a store out of reach); "
                  f"its point is left to the study", file=sys.stderr)
        self.done = True


def resumable(trial: Any) -> None:
    """Mark a trial that did not finish as one to continue from its last checkpoint; a store that refuses costs
    only that: the point starts over."""
    with contextlib.suppress(Exception):
        trial.set_user_attr(RESUMABLE_ATTR, True)
