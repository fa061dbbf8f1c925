"""MLflow tracking: where the stores are, how runs are found, tagged and ended (`mlflow_hook.py` records a
training into a run).

Everything goes through an explicit `MlflowClient` and run id, never MLflow's global active run, so a study
can hold its parent run open while each trial's child run starts and ends.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import gansweep
from gansweep.store import store_lock

__all__ = ["slug", "client_for", "experiment_id", "study_parents", "study_names", "RUN_STATUS", "end_run",
           "git_commit", "checksum_tag", "upload_tag", "full_run_id", "run_tags", "write_later", "written",
           "mlflow_settings"]

# How each way a run ends shows in MLflow's own status column; the exact reason is in the gansweep.* tags.
RUN_STATUS = {"finished": "FINISHED", "pruned": "KILLED", "collapsed": "KILLED", "interrupted": "KILLED",
              "diverged": "FAILED", "failed": "FAILED"}


# Writes step metrics off the training loop's path, for every run of the process in the order they came: one
# thread, so two runs' points never contend for the store. Not MLflow's asynchronous logging: each run's end
# (`set_terminated`) shuts that down, and its idle worker notices only after a 1 s timeout, so every run's end
# waited up to a second (0.7 s on average on the CPU, more than a trial of one mnist-5k epoch trains).
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gansweep-metrics")


def write_later(client: MlflowClient, run_id: str, metrics: list[Metric]) -> Future[None]:
    """Hand `metrics` to the writer thread; the future says when they are in the store, or why not."""
    return _WRITER.submit(client.log_batch, run_id, metrics=metrics)


def written(futures: Sequence[Future[None]]) -> None:
    """Wait for every one of `futures`, then raise the first write the store refused."""
    wait(futures)
    for future in futures:
        future.result()


def client_for(uri: str, create: bool = True) -> MlflowClient:
    """A client whose store exists: MLflow creates a sqlite store's tables as the client is made, so two
    processes starting on a new store take turns (store_lock). A reader (`create=False`) of a store that exists
    takes no lock, so a read-only store can be read."""
    if not create:
        return MlflowClient(tracking_uri=uri)
    with store_lock(uri):
        if uri.startswith("sqlite:///"):
            _create_whole(Path(uri.removeprefix("sqlite:///")))
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the tables exist once this returns
        return client


def _create_whole(database: Path) -> None:
    """A new sqlite store's tables, made in a file beside it that takes the store's name only when whole: a
    process stopped while MLflow builds them (its migrations run for a second or two) leaves no half-built store,
    which every later command would fail on, only a stray file the next attempt replaces."""
    if database.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    for stray in database.parent.glob(f"{database.name}.creating-*"):  # under the store's lock: none is in use
        stray.unlink(missing_ok=True)
    # a name of its own: MLflow keeps a store per URI for the process's life
    partial = database.with_name(f"{database.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
    os.replace(partial, database)


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
    return [r for r in _parents(client) if r.data.tags.get("gansweep.study") == name]


def study_names(client: MlflowClient) -> list[str]:
    """The studies the store holds, by name."""
    return sorted({r.data.tags["gansweep.study"] for r in _parents(client) if "gansweep.study" in r.data.tags})


def _parents(client: MlflowClient) -> list[Any]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string="tags.`gansweep.role` = 'parent'",
                              order_by=["attributes.start_time DESC"], max_results=50000)


def full_run_id(client: MlflowClient, ref: str) -> str:
    """The run id that `ref` is, or begins (the 8 characters every table prints); one clear error otherwise."""
    from gansweep.errors import GansweepError

    ref = ref.strip().lower()
    if len(ref) == 32:
        return ref
    if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
        raise GansweepError(f"{ref!r} is not a run id: give the 32 hex characters of one, or its first 8 "
                            f"(a study's best run: its name and --best)")
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = [r.info.run_id for r in client.search_runs(experiments, max_results=50000) if r.info.run_id.startswith(ref)]
    if len(found) != 1:
        raise GansweepError(f"no run id begins with {ref!r} in {client.tracking_uri}" if not found else
                            f"{len(found)} run ids begin with {ref!r}; give more of it: {', '.join(found[:5])}")
    return found[0]


def git_commit() -> str | None:
    """The commit of the gansweep checkout in use, when it is one: an installed gansweep that happens to sit
    inside another repository (a virtual environment in a project) has none."""
    return _commit_of(Path(gansweep.__file__).resolve().parent)


@functools.cache
def _commit_of(package: Path) -> str | None:
    """Asked of git once per process: every run a study creates records it twice (a tag and a param)."""
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


def run_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` and MLflow's own of where a run comes from (user, source program), as its fluent API sets them,
    so the run table's User and Source columns are filled. The git commit is gansweep's checkout's (`git_commit`),
    not that of whatever repository the program sits in."""
    from mlflow.tracking.context.registry import resolve_tags

    resolved = {k: v for k, v in resolve_tags(tags).items() if not k.startswith("mlflow.source.git.")}
    commit = git_commit()
    return {**resolved, **({"mlflow.source.git.commit": commit} if commit else {})}


def checksum_tag(name: str) -> str:
    """The run tag holding the SHA-256 of the checkpoint file `name` (last.pt, best.pt) as it was logged."""
    return f"gansweep.sha256.{name}"


def upload_tag(name: str) -> str:
    """The run tag holding the SHA-256 of the file `name` being uploaded, tagged before the upload starts: a
    process killed between the upload and `checksum_tag` leaves a whole file that this one describes."""
    return f"gansweep.sha256_uploading.{name}"


def end_run(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    """Record how a run ended: gansweep's own status and reason as tags, MLflow's status beside them. First the
    writer thread is let through whatever it was handed before (its queue is one line): a run that failed
    before its hook drained them gets no step metrics after its end, nor late ones in a run resumed after it."""
    _WRITER.submit(lambda: None).result()
    client.log_batch(run_id, tags=[RunTag("gansweep.status", status), RunTag("gansweep.reason", reason)])
    client.set_terminated(run_id, RUN_STATUS.get(status, "FAILED"))


@contextlib.contextmanager
def mlflow_settings(**values: str) -> Iterator[None]:
    """MLflow's settings (environment variables it reads at each request) while the block runs, then as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
