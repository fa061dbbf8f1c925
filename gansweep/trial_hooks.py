"""The hooks a study adds to each trial's training: Optuna's pruner, and the mode-collapse stop."""

from __future__ import annotations

import math
from typing import Any

from gansweep.hooks import Hook, StopTraining, TrainState

__all__ = ["OptunaReport", "CollapseStop"]


class OptunaReport(Hook):
    """Reports the objective to Optuna after every epoch and stops the trial when Optuna's pruner says so."""

    def __init__(self, trial: Any, key: str, pruner: str):
        self.trial, self.key, self.pruner = trial, key, pruner
        self.reported: dict[int, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"reported": dict(self.reported)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """A resumed run is a new Optuna trial: it is given the values its earlier trial reported."""
        self.reported = dict(saved["reported"])
        for epoch, value in self.reported.items():
            self.trial.report(value, epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        value = state.scores.get(self.key)
        if value is None or not math.isfinite(value):
            return
        self.reported[state.epoch] = value
        self.trial.report(value, state.epoch)
        if self.trial.should_prune():
            raise StopTraining("pruned", f"{self.pruner} pruner: {self.key} {value:.4g} at epoch {state.epoch}")


class CollapseStop(Hook):
    """Ends a trial whose samples are judged a mode collapse (collapse.py) for `window` evaluations in a row."""

    def __init__(self, window: int):
        self.window, self.run = window, 0

    def state_dict(self) -> dict[str, Any]:
        return {"run": self.run}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.run = saved["run"]

    def on_epoch_end(self, state: TrainState) -> None:
        from gansweep.collapse import judge

        scores = {k.removeprefix("score/"): v for k, v in state.scores.items() if k.startswith("score/")}
        if "coverage" not in scores:
            return
        verdict = judge(scores, state.data.n_classes)
        self.run = self.run + 1 if verdict is not None and verdict.kind == "mode_collapse" else 0
        if self.run >= self.window:
            raise StopTraining("collapsed", f"mode collapse for {self.window} evaluations, up to "
                                            f"{verdict.note(state.epoch)}")
