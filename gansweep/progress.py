"""Progress on stderr while a run trains: a live line on a terminal, one line per epoch everywhere."""

from __future__ import annotations

import sys
from typing import TextIO

from gansweep.trainer import Hook, StepLog, TrainResult, TrainState

__all__ = ["ProgressHook", "format_values"]

_SHOWN = {"loss/d": "loss/d", "loss/g": "loss/g", "d/real": "D(x)", "d/fake": "D(G(z))",
          "wasserstein/estimate": "W"}


def format_values(values: dict[str, float]) -> str:
    return "  ".join(f"{label} {values[name]:.3f}" for name, label in _SHOWN.items() if name in values)


class ProgressHook(Hook):
    def __init__(self, label: str = "", stream: TextIO | None = None):
        self.label = f"{label}  " if label else ""
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.rate = 0.0

    def _line(self, state: TrainState) -> str:
        return (f"{self.label}epoch {state.epoch}/{state.config.epochs}  step {state.step}  "
                f"{format_values(state.last)}  {self.rate:,.0f} img/s")

    def on_log(self, state: TrainState, log: StepLog) -> None:
        self.rate = log.images_per_s
        if self.live:
            self.stream.write("\r\033[K" + self._line(state))
            self.stream.flush()

    def on_epoch_end(self, state: TrainState) -> None:
        self.stream.write(("\r\033[K" if self.live else "") + self._line(state) + "\n")
        self.stream.flush()

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.label}{result.status}: {result.reason} "
                          f"({result.steps} G steps, {result.wall_time_s:.1f} s)\n")
        self.stream.flush()
