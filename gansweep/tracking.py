"""MLflow tracking: where the stores are, and the hook that records one training run as an MLflow run.

Everything goes through an explicit `MlflowClient` and run id, never MLflow's global active run, so a study
can hold its parent run open while each trial's child run starts and ends.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

import gansweep
from gansweep.store import store_lock
from gansweep.trainer import Hook, StepLog, TrainResult, TrainState

__all__ = ["slug", "client_for", "experiment_id", "experiment_url", "study_parents", "MlflowHook", "RUN_STATUS",
           "end_run", "git_commit", "checksum_tag", "window_points", "EXTREMES", "full_run_id"]

# A step curve's point is the mean over its window of G steps; for these, where one spike matters (D winning
# outright, a gradient blowing up), the window's minimum and maximum are logged beside it as NAME/min, NAME/max.
EXTREMES = ("loss/d", "grad_norm/d", "grad_norm/g")

# How each way a run ends shows in MLflow's own status column; the exact reason is in the gansweep.* tags.
RUN_STATUS = {"finished": "FINISHED", "pruned": "KILLED", "collapsed": "KILLED", "interrupted": "KILLED",
              "diverged": "FAILED", "failed": "FAILED"}


def client_for(uri: str, create: bool = True) -> MlflowClient:
    """A client whose store exists: MLflow creates a sqlite store's tables as the client is made, so two
    processes starting on a new store take turns (store_lock). A reader (`create=False`) of a store that exists
    takes no lock, so a read-only store can be read."""
    if not create:
        return MlflowClient(tracking_uri=uri)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the tables exist once this returns
        return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it on first use; a sqlite store keeps artifacts in artifacts/ beside it.
    Workers that start together against a tracking server may both create it: the second one finds it."""
    with store_lock(client.tracking_uri):
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = None
        if client.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
            database = Path(client.tracking_uri.removeprefix("sqlite:///"))
            location = f"{(database.parent / 'artifacts').resolve().as_uri()}/{slug(name)}"
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:  # a tracking server: another worker created it a moment ago
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or client.get_experiment_by_name(name) is None:
                raise
            return client.get_experiment_by_name(name).experiment_id


def study_parents(client: MlflowClient, name: str) -> list[Any]:
    """The parent runs of the study `name` in every experiment of the store, newest first. Matched here rather
    than in a filter string, so a study name may hold any character."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string="tags.`gansweep.role` = 'parent'",
                              order_by=["attributes.start_time DESC"], max_results=50000)
    return [r for r in runs if r.data.tags.get("gansweep.study") == name]


def full_run_id(client: MlflowClient, ref: str) -> str:
    """The run id that `ref` is, or begins (the 8 characters every table prints); one clear error otherwise."""
    from gansweep.errors import GansweepError

    ref = ref.strip().lower()
    if len(ref) == 32:
        return ref
    if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
        raise GansweepError(f"{ref!r} is not a run id: give the 32 hex characters of one, or its first 8")
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = [r.info.run_id for r in client.search_runs(experiments, max_results=50000) if r.info.run_id.startswith(ref)]
    if len(found) != 1:
        raise GansweepError(f"no run id begins with {ref!r} in {client.tracking_uri}" if not found else
                            f"{len(found)} run ids begin with {ref!r}; give more of it: {', '.join(found[:5])}")
    return found[0]


def experiment_url(host: str, port: int, experiment: str, order_by: str | None = None,
                   ascending: bool = True) -> str:
    """The run table of an experiment, sorted by the metric `order_by` when given; workflowType avoids the
    GenAI view that hides runs."""
    url = f"http://{host}:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    if order_by is not None:
        url += f"&orderByKey={quote(f'metrics.`{order_by}`', safe='')}&orderByAsc={str(ascending).lower()}"
    return url


def git_commit() -> str | None:
    """The commit of the gansweep checkout in use, when it is one: an installed gansweep that happens to sit
    inside another repository (a virtual environment in a project) has none."""
    package = Path(gansweep.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package, text=True,
                             capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "gansweep" != package:
        return None
    return lines[1]


def slug(name: str) -> str:
    """A name as a file name: anything but letters, digits and -_. becomes _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class MlflowHook(Hook):
    """Records one training run in an existing MLflow run: params, step metrics, per-epoch scores, sample grids (as
    files and through MLflow's image logging, keyed `samples` by epoch) and checkpoints as they are written
    (`checkpoints_saved`), then a GIF of the grids and a loss figure.

    `work_dir` holds what the sample-grid and checkpoint hooks write; this hook copies it into the run's artifacts.
    Step metrics are one point per window of `log_every` G steps (`EXTREMES`), handed to MLflow's asynchronous
    logging so that the loop does not wait on the store; they are waited for at every epoch's end, before
    anything (scores, checkpoints, the run's end) that a resume or a reader would take as covering them.
    """

    def __init__(self, client: MlflowClient, run_id: str, work_dir: Path, objective: str,
                 extra_params: dict[str, Any]):
        self.client, self.run_id, self.work_dir, self.objective = client, run_id, work_dir, objective
        self.extra_params = extra_params
        self.noted: dict[str, str] = {}  # note name -> the text last tagged, re-tagged when a note grows
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)  # the points logged, for the figure
        self.queued: list[RunOperations] = []

    def state_dict(self) -> dict[str, Any]:
        return {"noted": dict(self.noted), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        noted = saved["noted"]  # a list of names in checkpoints of an earlier gansweep
        self.noted = dict(noted) if isinstance(noted, dict) else {name: "" for name in noted}
        self.history = defaultdict(list, {k: [tuple(p) for p in v] for k, v in saved["history"].items()})

    def on_start(self, state: TrainState) -> None:
        params = {**state.config.to_dict(),
                  **{f"data.{k}": v for k, v in state.data.to_dict().items()},
                  "variant": state.variant.name, "arch": state.variant.arch, "loss": state.variant.loss,
                  "regularizer": state.variant.regularizer, "conditioning": state.variant.conditioning,
                  "device": str(state.device), "torch_version": _torch_version(),
                  "gansweep_version": gansweep.__version__, "python_version": platform.python_version(),
                  "git_commit": git_commit() or "unknown", **self.extra_params}
        # a resumed run has its params already: MLflow refuses to change one, so what differs now (a new commit,
        # another machine's versions) is kept beside them as a tag
        recorded = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in recorded]
        changed = [RunTag(f"gansweep.resumed_with.{k}", str(v)[:5000]) for k, v in params.items()
                   if k in recorded and recorded[k] != str(v)[:6000]]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def on_log(self, state: TrainState, log: StepLog) -> None:
        step = log.steps[-1]
        points = window_points(log.metrics)
        for name, value in points.items():
            self.history[name].append((step, value))
        points["perf/images_per_s"] = log.images_per_s
        now = int(time.time() * 1000)
        self.queued.append(self.client.log_batch(self.run_id, metrics=[Metric(name, value, now, step)
                                                                       for name, value in points.items()],
                                                 synchronous=False))

    def _drain(self) -> None:
        """Wait until every queued point is in the store; a store that refused one raises here."""
        queued, self.queued = self.queued, []
        for operations in queued:
            operations.wait()

    def on_epoch_end(self, state: TrainState) -> None:
        self._drain()
        now = int(time.time() * 1000)
        epoch_metrics = {**state.scores, "progress/epoch": state.epoch, "progress/images_seen": state.images_seen,
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
                self.client.log_artifact(self.run_id, str(path), "checkpoints")  # replaces the old file whole
                tags = [RunTag(checksum_tag(path.name), sha256(path))]
                if path.name == "last.pt":
                    tags.append(RunTag("gansweep.checkpoint_epoch", str(state.epoch)))
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


def window_points(metrics: dict[str, list[float]]) -> dict[str, float]:
    """One window's step values as the points logged for it: each metric's mean, and for `EXTREMES` its
    minimum and maximum."""
    points = {}
    for name, values in metrics.items():
        points[name] = math.fsum(values) / len(values)
        if name in EXTREMES:
            points[f"{name}/min"], points[f"{name}/max"] = min(values), max(values)
    return points


def checksum_tag(name: str) -> str:
    """The run tag holding the SHA-256 of the checkpoint file `name` (last.pt, best.pt) as it was logged."""
    return f"gansweep.sha256.{name}"


def end_run(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    """Record how a run ended: gansweep's own status and reason as tags, MLflow's status beside them."""
    client.log_batch(run_id, tags=[RunTag("gansweep.status", status), RunTag("gansweep.reason", reason)])
    client.set_terminated(run_id, RUN_STATUS.get(status, "FAILED"))


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

    groups = [("loss", ["loss/d", "loss/g"]), ("D output", ["d/real", "d/fake"]),
              ("gradient norm", ["grad_norm/d", "grad_norm/g"])]
    fig, axes = plt.subplots(1, len(groups), figsize=(12, 3.2), constrained_layout=True)
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

