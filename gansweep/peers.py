"""What one process of a study does about the others sharing its store: fails the trials of dead ones as lost
(and ends the MLflow runs they left RUNNING), waits while others' trials still run so that it can take over a
dead one's point, and stands a trial down when another process was handed the same work at the same moment."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from gansweep.liveness import Liveness, is_lost

__all__ = ["Peers", "LIVE", "WAIT_S"]

WAIT_S = 2.0  # how often a process with nothing to hand out looks at other processes' running trials

# Trials that hold their work: done, or under way. Failed and interrupted ones give it back, to be run again.
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class Peers:
    """The other processes of one study, as this one sees them through Optuna's storage and MLflow."""

    def __init__(self, study: Any, client: Any, experiment: str, parent_id: str, liveness: Liveness,
                 progress: bool):
        self.study, self.client, self.experiment, self.parent_id = study, client, experiment, parent_id
        self.liveness, self.progress = liveness, progress
        self.ended_lost: set[int] = set()  # lost trials whose MLflow run this process has seen ended
        self.waiting = False

    def fail_dead(self) -> None:
        """Fail the trials of dead processes, and end the MLflow runs they left RUNNING."""
        from gansweep.tracking import end_run

        self.liveness.fail_dead(self.study)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if not is_lost(trial) or trial.number in self.ended_lost:
                continue
            for run in self._runs_of(trial):
                if run.info.status == "RUNNING":
                    end_run(self.client, run.info.run_id, "lost", "its process died (killed, out of memory, or "
                                                                  "its machine lost); the point runs again")
            self.ended_lost.add(trial.number)

    def _runs_of(self, trial: Any) -> list[Any]:
        """The MLflow runs of a trial: found by tag, since a process may die before recording the run's id."""
        runs = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`gansweep.trial` = '{trial.number}' and "
                                             f"tags.`mlflow.parentRunId` = '{self.parent_id}'")
        return [r for r in runs if r.data.tags.get("gansweep.optuna_study") == self.study.study_name]

    def wait_for_others(self, mine: Callable[[Any], bool]) -> bool:
        """Whether trials (those `mine` picks) still run in other processes; if so, wait a moment first."""
        running = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if mine(t)]
        if not running:
            return False
        if self.progress and not self.waiting:
            print(f"waiting for {len(running)} trial(s) running in other processes, to take over any whose "
                  f"process dies (found {self.liveness.noticed})", file=sys.stderr)
        self.waiting = True
        time.sleep(WAIT_S)
        return True

    def retire_waiting(self) -> None:
        """End, as duplicates, the enqueued trials no process will ask for. A process enqueues its next work
        and asks for a trial, and Optuna hands out the oldest enqueued one: two processes asking at once can
        take each other's, or a third's, and leave one WAITING for ever. Called once nothing is left to hand
        out; each is first claimed as a process asking would claim it, so none is taken from a process that
        was just handed it (that process is handed another, or a fresh trial it ends as a duplicate)."""
        from optuna.exceptions import UpdateFinishedTrialError

        storage = self.liveness.storage
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if not storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            storage.set_trial_user_attr(trial._trial_id, "status", "duplicate")
            storage.set_trial_user_attr(trial._trial_id, "reason", "enqueued, but never asked for: every process "
                                                                     "had its work by then")
            self.study.tell(trial.number, state=TrialState.FAIL)

    def stand_down_if_taken(self, trial: Any, same: Callable[[Any], bool], what: str) -> bool:
        """Two processes can be handed the same work at once (a grid's last point, a re-run). Each trial, its
        work already recorded, claims it, then reads the others: it stands down as a duplicate if another trial
        of the same work has claimed it or is done. Of two that race, the later reader sees the earlier claim,
        so never both go on; if both read after both claimed, both stand down and the work is handed out again."""
        trial.set_user_attr("claimed", True)
        for other in self.study.get_trials(deepcopy=False, states=LIVE):
            claimed = other.state != TrialState.RUNNING or other.user_attrs.get("claimed", False)
            if other.number != trial.number and claimed and same(other):
                trial.set_user_attr("status", "duplicate")
                trial.set_user_attr("reason", f"{what} already taken by trial {other.number}")
                self.study.tell(trial, state=TrialState.FAIL)
                return True
        return False
