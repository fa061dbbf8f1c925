"""The hook that records one training run as an MLflow run: its params, data, step curves, per-epoch scores,
sample grids, checkpoints and figures.

Everything goes through an explicit `MlflowClient` and run id, never MLflow's global active run, so a study
can hold its parent run open while each trial's child run starts and ends.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import gansweep
from gansweep.hooks import Hook, StepLog, TrainResult, TrainState
from gansweep.resume import CHECKPOINT_TAG
from gansweep.tracking import checksum_tag, end_run, git_commit, upload_tag, write_later, written

if TYPE_CHECKING:
    from gansweep.data import DataRecord

__all__ = ["MlflowHook", "window_points", "EXTREMES", "d_output_names", "dataset_input", "FLOOR_PREFIXES"]

# A step curve's point is the mean over its window of G steps; for these, where one spike matters (D winning
# outright, a gradient blowing up), the window's minimum and maximum are logged beside it as NAME/min, NAME/max.
EXTREMES = ("loss/d", "grad_norm/d", "grad_norm/g")

FLOOR_PREFIXES = ("floor/", "floor_sd/")  # the real-data floors: the same for every run of a dataset and size

class MlflowHook(Hook):
    """Records one training run in an existing MLflow run: params, step metrics, per-epoch scores, sample grids (as
    files and through MLflow's image logging, keyed `samples` by epoch) and checkpoints as they are written
    (`checkpoints_saved`), then a GIF of the grids and a loss figure.

    `work_dir` holds what the sample-grid and checkpoint hooks write; this hook copies it into the run's artifacts.
    Step metrics are one point per window of `log_every` G steps (`EXTREMES`), handed to the process's writer
    thread (`tracking.write_later`) so that the loop does not wait on the store; they are waited for at every
    epoch's end, before anything (scores, checkpoints, the run's end) that a resume or a reader would take as
    covering them.
    """

    def __init__(self, client: MlflowClient, run_id: str, work_dir: Path, objective: str,
                 extra_params: dict[str, Any]):
        self.client, self.run_id, self.work_dir, self.objective = client, run_id, work_dir, objective
        self.extra_params = extra_params
        self.noted: dict[str, str] = {}  # note name -> the text last tagged, re-tagged when a note grows
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)  # the points logged, for the figure
        self.queued: list[Future[None]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"noted": dict(self.noted), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        noted = saved["noted"]  # a list of names in checkpoints of an earlier gansweep
        self.noted = dict(noted) if isinstance(noted, dict) else {name: "" for name in noted}
        self.history = defaultdict(list, {k: [tuple(p) for p in v] for k, v in saved["history"].items()})

    def on_start(self, state: TrainState) -> None:
        run = self.client.get_run(self.run_id)
        self._log_params(state, run.data.params)
        self.names = d_output_names(state.variant.loss_part.probabilistic)
        for old, new in self.names.items():  # a checkpoint of an earlier gansweep holds the trainer's names
            if old in self.history:
                self.history[new] = self.history.pop(old) + self.history.get(new, [])
        if not run.inputs.dataset_inputs:
            self.client.log_inputs(self.run_id, [dataset_input(state.data)])
        # the floors are the dataset's and the evaluation's, not the run's: logged once, on the study's parent
        constants_to = run.data.tags.get("mlflow.parentRunId", self.run_id)
        floors = [Metric(k, float(v), int(time.time() * 1000), 0) for k, v in state.scores.items()
                  if k.startswith(FLOOR_PREFIXES)]
        logged = self.client.get_run(constants_to).data.metrics if floors else {}
        missing = [m for m in floors if m.key not in logged]  # a conditional trial adds cond_accuracy's
        if missing:
            self.client.log_batch(constants_to, metrics=missing)

    def _log_params(self, state: TrainState, recorded: dict[str, str]) -> None:
        """What the run used: the fields its variant reads, set ones only, each once (a swept value under
        `swept.NAME` alone), and where it ran."""
        unused = state.variant.unused_fields(state.config)
        fields = {k: v for k, v in state.config.to_dict().items()
                  if k not in unused and v is not None and f"swept.{k}" not in self.extra_params}
        params = {**fields,
                  **{f"data.{k}": v for k, v in state.data.to_dict().items()},
                  "variant": state.variant.name, "arch": state.variant.arch, "loss": state.variant.loss,
                  "regularizer": state.variant.regularizer, "conditioning": state.variant.conditioning,
                  "device": str(state.device), "torch_version": _torch_version(),
                  "gansweep_version": gansweep.__version__, "python_version": platform.python_version(),
                  "git_commit": git_commit() or "unknown", **self.extra_params}
        # a resumed run has its params already: MLflow refuses to change one, so what differs now (a new commit,
        # another machine's versions) is kept beside them as a tag
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in recorded]
        changed = [RunTag(f"gansweep.resumed_with.{k}", str(v)[:5000]) for k, v in params.items()
                   if k in recorded and recorded[k] != str(v)[:6000]]
        self.client.log_batch(self.run_id, params=items, tags=changed)  # MLflow splits a long batch itself

    def on_log(self, state: TrainState, log: StepLog) -> None:
        step = log.steps[-1]
        points = {self.names.get(k, k): v for k, v in window_points(log.metrics).items()}
        for name, value in points.items():
            self.history[name].append((step, value))
        points["perf/images_per_s"] = log.images_per_s
        now = int(time.time() * 1000)
        self.queued.append(write_later(self.client, self.run_id,
                                       [Metric(name, value, now, step) for name, value in points.items()]))

    def _drain(self) -> None:
        """Wait until every queued point is in the store; a store that refused one raises here."""
        queued, self.queued = self.queued, []
        written(queued)

    def on_epoch_end(self, state: TrainState) -> None:
        self._drain()
        now = int(time.time() * 1000)
        scores = {k: v for k, v in state.scores.items() if not k.startswith(FLOOR_PREFIXES)}
        epoch_metrics = {**scores, "progress/epoch": state.epoch, "progress/images_seen": state.images_seen,
                         "progress/g_steps": state.step}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, state.epoch)
                                                    for k, v in epoch_metrics.items()])
        grid = self.work_dir / "samples" / f"epoch_{state.epoch:03d}.png"
        if grid.exists():
            from PIL import Image

            self.client.log_artifact(self.run_id, str(grid), "samples")
            with Image.open(grid) as image:  # MLflow's image logging: its run comparison lines up epochs
                self.client.log_image(self.run_id, image.convert("RGB"), key="samples", step=state.epoch)
        self._tag_notes(state)

    def _tag_notes(self, state: TrainState) -> None:
        for name, note in state.notes.items():
            if self.noted.get(name) != note:
                self.noted[name] = note
                self.client.set_tag(self.run_id, f"gansweep.{name}", note)

    def checkpoints_saved(self, state: TrainState, paths: list[Path]) -> None:
        """Copy fresh checkpoints into the run as they are written, each with its SHA-256, so that a process
        that dies loses only the epoch under way and whoever resumes the run can check what it reads. Ctrl-C
        waits until a file and its checksum are both recorded."""
        from gansweep.atomic import uninterrupted
        from gansweep.checkpoint import sha256

        with uninterrupted():
            for path in paths:
                digest = sha256(path)
                # tagged before the upload, which replaces the old file: whenever the process dies, the file in
                # the run is the one `checksum_tag` or `upload_tag` describes (resume.fetch_checkpoint)
                self.client.set_tag(self.run_id, upload_tag(path.name), digest)
                self.client.log_artifact(self.run_id, str(path), "checkpoints")
                tags = [RunTag(checksum_tag(path.name), digest)]
                if path.name == "last.pt":
                    tags.append(RunTag(CHECKPOINT_TAG, str(state.epoch)))
                else:
                    tags.append(RunTag("gansweep.best_epoch", str(state.epoch)))
                    value = state.scores.get(self.objective)
                    if value is not None:
                        self.client.log_metric(self.run_id, f"best/{self.objective}", value, step=state.epoch)
                self.client.log_batch(self.run_id, tags=tags)
                path.unlink()  # kept in the run now; a process killed later leaves no copy behind

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        self._drain()
        self._tag_notes(state)  # a judgement of the whole run, made once it stopped
        grids = sorted((self.work_dir / "samples").glob("epoch_*.png"))
        if grids:
            self.client.log_artifact(self.run_id, str(_write_gif(grids, self.work_dir / "grids.gif")), "samples")
        if self.history:
            self.client.log_artifact(self.run_id, str(_plot_losses(self.history, self.work_dir / "losses.png",
                                                                   state.variant.name)), "plots")
        self.client.log_batch(self.run_id, metrics=[
            Metric("perf/wall_time_s", result.wall_time_s, int(time.time() * 1000), result.epochs)])
        end_run(self.client, self.run_id, result.status, result.reason)


def d_output_names(probabilistic: bool) -> dict[str, str]:
    """The step metrics of D's mean output as logged: a probability for the probabilistic losses, the raw
    critic value for the others (Wasserstein, hinge, least squares)."""
    kind = "d_prob" if probabilistic else "d_critic"
    return {"d/real": f"{kind}/real", "d/fake": f"{kind}/fake"}


def dataset_input(record: DataRecord) -> DatasetInput:
    """The run's training data in MLflow's dataset logging (the run table's Dataset column): its name, the
    checksum of its images and labels as digest, and its shape."""
    dataset = Dataset(name=record.name, digest=record.checksum[:8], source_type="gansweep",
                      source=json.dumps({"dataset": record.name, "checksum": record.checksum}),
                      schema=json.dumps({"images": ["uint8", *record.image_shape], "labels": "int64"}),
                      profile=json.dumps({"train": record.n_train, "test": record.n_test,
                                          "classes": record.n_classes}))
    return DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])


def window_points(metrics: dict[str, list[float]]) -> dict[str, float]:
    """One window's step values as the points logged for it: each metric's mean, and for `EXTREMES` its
    minimum and maximum."""
    points = {}
    for name, values in metrics.items():
        points[name] = math.fsum(values) / len(values)
        if name in EXTREMES:
            points[f"{name}/min"], points[f"{name}/max"] = min(values), max(values)
    return points


def _torch_version() -> str:
    import torch

    return torch.__version__


def _write_gif(frames: list[Path], path: Path) -> Path:
    from PIL import Image

    from gansweep.atomic import atomic_path

    images = [Image.open(f).convert("P") for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=400, loop=0)
    return path


def _plot_losses(history: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gansweep.atomic import atomic_path

    groups = [("loss", ["loss/d", "loss/g"]), ("D output", [*d_output_names(True).values(),
                                                            *d_output_names(False).values()]),
              ("gradient norm", ["grad_norm/d", "grad_norm/g"])]
    # a fixed layout: constrained_layout's measuring passes took half of the figure's 0.4 s
    fig, axes = plt.subplots(1, len(groups), figsize=(12, 3.2))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.82, wspace=0.22)
    for ax, (label, names) in zip(axes, groups):
        for name in names:
            if name in history:
                steps, values = zip(*history[name])
                (line,) = ax.plot(steps, values, label=name, linewidth=0.8)
                if f"{name}/min" in history and f"{name}/max" in history:
                    low_steps, low = zip(*history[f"{name}/min"])  # a run resumed from before windows: later only
                    ax.fill_between(low_steps, low, [v for _, v in history[f"{name}/max"]], color=line.get_color(),
                                    alpha=0.2, linewidth=0)
        ax.set_title(label)
        ax.set_xlabel("G step (window means; band: window min to max)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
