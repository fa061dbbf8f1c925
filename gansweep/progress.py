"""Progress on stderr: on a terminal, tqdm bars (a study's trials, each training's images of its budget, with
rate and ETA); elsewhere one plain line per epoch and per trial ended, so logs read well."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from gansweep.hooks import Hook, StepLog, TrainResult, TrainState
from gansweep.trainer import g_steps_per_epoch

__all__ = ["ProgressHook", "StudyProgress", "format_values"]

_SHOWN = {"loss/d": "loss/d", "loss/g": "loss/g", "d/real": "D(x)", "d/fake": "D(G(z))",
          "wasserstein/estimate": "W"}


def format_values(values: dict[str, float]) -> str:
    return "  ".join(f"{label} {values[name]:.3f}" for name, label in _SHOWN.items() if name in values)


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 3600 else \
        time.strftime("%M:%S", time.gmtime(seconds))


class ProgressHook(Hook):
    """One training's progress: a bar of images seen by D against the run's budget on a terminal (updated at
    every copy of the step metrics, every `log_every` G steps), a line per epoch elsewhere. Placed before the
    scoring hook, it says so on the bar while an epoch's `scoring` images per slice are scored."""

    def __init__(self, label: str = "", stream: TextIO | None = None, scoring: int = 0):
        self.label, self.scoring = label, scoring
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.bar: tqdm | None = None
        self.rate = 0.0

    def on_start(self, state: TrainState) -> None:
        if self.live:
            per_epoch = g_steps_per_epoch(state.config, state.data.n_train) * state.config.n_critic * \
                state.config.batch_size
            self.bar = tqdm(total=per_epoch * state.config.epochs, initial=state.images_seen, desc=self.label,
                            unit="img", unit_scale=True, file=self.stream, leave=False, dynamic_ncols=True)

    def on_log(self, state: TrainState, log: StepLog) -> None:
        self.rate = log.images_per_s
        if self.bar is not None:
            self.bar.update(state.images_seen - self.bar.n)
            self.bar.set_postfix_str(f"epoch {state.epoch + 1}/{state.config.epochs}  {format_values(state.last)}",
                                     refresh=False)

    def on_epoch_end(self, state: TrainState) -> None:
        line = (f"{self.label}  epoch {state.epoch}/{state.config.epochs}  step {state.step}  "
                f"{format_values(state.last)}  {self.rate:,.0f} img/s")
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            if self.scoring:
                self.bar.set_postfix_str(f"epoch {state.epoch} trained; scoring its samples "
                                         f"(2 slices of {self.scoring:,} images)", refresh=True)
        else:
            self.stream.write(line.lstrip() + "\n")
            self.stream.flush()

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stream.write(f"{self.label}  {result.status}: {result.reason} ".lstrip()
                          + f"({result.steps} G steps, {result.wall_time_s:.1f} s)\n")
        self.stream.flush()


class StudyProgress:
    """A study's progress: trials ended of all, the best so far, and an ETA from this invocation's pace."""

    def __init__(self, name: str, total: int, ended: int, metric: str, stream: TextIO | None = None):
        self.name, self.total, self.metric = name, total, metric
        self.stream = stream or sys.stderr
        self.start_ended, self.started = ended, time.monotonic()
        self.said: tuple[int, tuple[int, float] | None] | None = None
        self.bar = tqdm(total=total, initial=ended, desc=f"study {name}", unit="trial", file=self.stream,
                        dynamic_ncols=True) if self.stream.isatty() else None

    def trial_ended(self, ended: int, best: tuple[int, float] | None) -> None:
        """`ended` trials are done (a trial interrupted or lost is not: its point runs again); a line says so
        when that or the best has changed since the last."""
        if (ended, best) == self.said:
            return
        self.said = (ended, best)
        best_text = "" if best is None else f"best {self.metric} {best[1]:.4g} (trial {best[0]})"
        if self.bar is not None:
            self.bar.update(ended - self.bar.n)
            self.bar.set_postfix_str(best_text)
            return
        done_now = ended - self.start_ended
        left = max(self.total - ended, 0)
        eta = "" if done_now <= 0 or not left else \
            f", ETA {_duration((time.monotonic() - self.started) / done_now * left)}"
        self.stream.write(f"study {self.name}: {ended}/{self.total} trials ended{eta}"
                          + (f"; {best_text}" if best_text else "") + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
