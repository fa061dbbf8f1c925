"""Several `gansweep study` workers on one grid, on each kind of shared store a team uses: the default journal in
one store folder, an Optuna sqlite database in it, and a real PostgreSQL with a real MLflow tracking server that
serves the artifacts (the setup of several machines). Every point must be done exactly once, and nothing left
RUNNING, even when a worker dies mid-trial. Read back only through Optuna's and MLflow's own APIs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from servers import stop_group, tail

GANSWEEP = Path(sys.executable).with_name("gansweep")
WORKERS = 3
TIMEOUT_S = 600  # for all the workers of one test together
LRS = (1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3)
SEEDS = (0, 1)
GRID = {(lr, seed) for lr in LRS for seed in SEEDS}

STUDY = """
name = "{name}"
description = "six learning rates and two seeds of a tiny MLP GAN, shared by several workers"
variants = ["gan"]
dataset = "mnist-5k"
budget_unit = "images"
epochs = 1
batch_size = 200
n_eval = 200
objective = {{ metric = "fid_proxy", direction = "minimize" }}
sampler = "grid"
pruner = "none"
seeds = {seeds}

[config]
hidden = [32]
z_dim = 8
n_samples = 16
log_every = 5

[space]
lr = {lrs}
"""


@dataclass(frozen=True)
class Stores:
    """Where the workers of one test keep their study: the options each is started with, and how the test reads
    the study back."""

    options: tuple[str, ...]
    tracking_uri: str
    storage: str  # an Optuna URL, or the journal file

    def optuna_storage(self) -> Any:
        """Opened to read, once the workers have set the store up: an RDB storage is told to create no tables."""
        if "://" in self.storage:
            return optuna.storages.RDBStorage(self.storage, skip_table_creation=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.storage))


@pytest.fixture(params=["journal", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """journal: the default store folder, as on one machine; sqlite: Optuna's sqlite storage in that folder;
    postgres: PostgreSQL for Optuna and an MLflow server, with no folder shared between the workers."""
    store = tmp_path / "store"
    if request.param == "journal":
        return Stores(("--store", str(store)), f"sqlite:///{store / 'mlflow.db'}", str(store / "optuna.journal"))
    if request.param == "sqlite":
        url = f"sqlite:///{store / 'optuna.db'}"
        return Stores(("--store", str(store), "--storage", url), f"sqlite:///{store / 'mlflow.db'}", url)
    url, server = request.getfixturevalue("postgres_url"), request.getfixturevalue("mlflow_server")
    return Stores(("--storage", url, "--tracking-uri", server), server, url)


@dataclass(frozen=True)
class Worker:
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def workers(folder: Path, name: str, stores: Stores) -> Iterator[list[Worker]]:
    """WORKERS `gansweep study` processes started together, each in its own working folder with its own copy of
    the study file, as on separate machines; whatever still runs at the end is stopped."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANSWEEP_STORE",
                                                            "GANSWEEP_STUDIES")}
    env["OMP_NUM_THREADS"] = "1"  # three workers on two cores: one thread each
    started: list[Worker] = []
    try:
        for i in range(WORKERS):
            home = folder / f"worker-{i}"
            (home / "studies").mkdir(parents=True)
            (home / "studies" / f"{name}.toml").write_text(STUDY.format(name=name, seeds=list(SEEDS), lrs=list(LRS)))
            log = home / "worker.log"
            with open(log, "wb") as output:
                process = subprocess.Popen([str(GANSWEEP), "study", name, "--device", "cpu", *stores.options],
                                           cwd=home, env=env, stdout=output, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            started.append(Worker(process, log))
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                stop_group(worker.process, grace_s=5)


def exit_codes(running: list[Worker], deadline: float) -> list[int]:
    """The workers' exit codes, each waited for until the deadline; a worker still running then fails the test."""
    codes = []
    for worker in running:
        try:
            codes.append(worker.process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a worker still ran after {TIMEOUT_S} s:\n{logs(running)}")
    return codes


def logs(running: list[Worker]) -> str:
    return "\n".join(f"--- {w.log.parent.name} (exit {w.process.poll()}):\n{tail(w.log)}" for w in running)


def check_grid_done(stores: Stores, name: str, may_be_lost: set[int]) -> None:
    """Every point done exactly once, and nothing left RUNNING, in Optuna and in MLflow. A FAIL trial is a
    duplicate that stood down (a point handed to two workers at once), or one of `may_be_lost`: the trials under
    way when a worker was killed, of which one at most was that worker's."""
    trials = optuna.load_study(study_name=name, storage=stores.optuna_storage()).get_trials()
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING], [
        (t.number, t.state.name, t.params) for t in trials if not t.state.is_finished()]
    done = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    points = sorted((t.params["lr"], t.user_attrs["seed"]) for t in done)
    assert len(points) == len(GRID) and set(points) == GRID, points
    dead = {t.number for t in by_state[TrialState.FAIL] if t.user_attrs.get("status") != "duplicate"}
    assert dead <= may_be_lost and len(dead) <= 1, [(t.number, t.user_attrs) for t in by_state[TrialState.FAIL]]

    client = MlflowClient(stores.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("gansweep.role") == "trial"]
    assert not [r for r in children if r.info.status == "RUNNING"], [
        (r.data.tags.get("gansweep.trial"), r.info.run_id) for r in children if r.info.status == "RUNNING"]
    ended = sorted(r.info.run_id for r in children if r.info.status in ("FINISHED", "KILLED")
                   and int(r.data.tags["gansweep.trial"]) not in dead)
    assert ended == sorted(t.user_attrs["mlflow_run_id"] for t in done)  # one run per point, none twice
    by_id = {r.info.run_id: r for r in children}
    for trial in done:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["gansweep.trial"] == str(trial.number)
        assert (float(run.data.params["swept.lr"]), int(run.data.params["seed"])) == (trial.params["lr"],
                                                                                trial.user_attrs["seed"])
    (parent,) = [r for r in runs if r.data.tags.get("gansweep.role") == "parent"]
    assert parent.info.status == "FINISHED"


def running_trials(stores: Stores, name: str, deadline: float) -> list[FrozenTrial]:
    """Trials under way with their MLflow run made, once there is one per worker: a worker holds one at a time,
    so each holds one then (a duplicate about to stand down has no run)."""
    storage = stores.optuna_storage()
    while time.monotonic() < deadline:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        training = [t for t in trials if "mlflow_run_id" in t.user_attrs]
        if len(training) == WORKERS:
            return training
        time.sleep(0.2)
    pytest.fail(f"never saw {WORKERS} trials under way at once")


def wait_for_first_epochs(running: list[Worker], deadline: float) -> None:
    """Until every worker has ended an epoch (its progress line), so all of them are past setting up the stores
    and the test's reader creates nothing in them."""
    while time.monotonic() < deadline:
        if all("epoch 1/1" in w.log.read_text(errors="replace") for w in running):
            return
        if any(w.process.poll() is not None for w in running):
            pytest.fail(f"a worker ended before its first epoch:\n{logs(running)}")
        time.sleep(0.5)
    pytest.fail(f"not every worker ended an epoch in {TIMEOUT_S} s:\n{logs(running)}")


def test_three_workers_share_one_grid(stores: Stores, tmp_path: Path, mnist5k_classifier: Any) -> None:
    """Three workers started together on one grid of 12 points: each point done once, across the three."""
    name = "shared-grid"
    deadline = time.monotonic() + TIMEOUT_S
    with workers(tmp_path, name, stores) as running:
        codes = exit_codes(running, deadline)
        assert codes == [0] * WORKERS, logs(running)
    check_grid_done(stores, name, may_be_lost=set())


def test_a_worker_killed_mid_trial_costs_no_point(stores: Stores, tmp_path: Path, mnist5k_classifier: Any) -> None:
    """A worker that dies (SIGKILL: no handler runs, as when its machine goes down) while it trains: the two left
    still finish all 12 points, the dead worker's point included, and leave no trial or run RUNNING."""
    name = "shared-kill"
    deadline = time.monotonic() + TIMEOUT_S
    with workers(tmp_path, name, stores) as running:
        wait_for_first_epochs(running, deadline)
        under_way = running_trials(stores, name, deadline)
        os.kill(running[0].process.pid, signal.SIGKILL)
        assert running[0].process.wait(timeout=30) == -signal.SIGKILL
        codes = exit_codes(running[1:], deadline)
        assert codes == [0] * (WORKERS - 1), logs(running)
    check_grid_done(stores, name, may_be_lost={t.number for t in under_way})


CLAIM = """
import sys, time
import optuna
from optuna.trial import TrialState
from gansweep.store import resolve_store

folder, url, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
storage = resolve_store(store=folder, storage=url).optuna()
read = storage.check_trial_is_updatable  # called between Optuna's read of a trial's state and its write

def slow_read(trial_id, state):
    read(trial_id, state)
    if state == TrialState.WAITING:
        time.sleep(0.5)  # as if the process were descheduled right after it read WAITING

storage.check_trial_is_updatable = slow_read
study = optuna.load_study(study_name="claim", storage=storage)
time.sleep(max(0.0, start - time.time()))
trial = study.ask()
print(trial.number, trial.user_attrs.get("seed"))
"""


def test_one_enqueued_trial_is_handed_to_one_of_two_processes_on_sqlite(tmp_path: Path) -> None:
    """Two processes ask for the one enqueued trial at the same moment, each pausing between reading its state
    and claiming it: on a sqlite storage (which ignores Optuna's FOR UPDATE) exactly one gets it; the other gets a
    fresh trial, which gansweep ends as a duplicate. Else both would train the one point."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="claim", storage=url)
    study.enqueue_trial({}, user_attrs={"seed": 7})
    start = time.time() + 5  # both started and waiting by then
    claims = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), url, str(start)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [c.communicate(timeout=120) for c in claims]
    assert [c.returncode for c in claims] == [0, 0], [err for _, err in results]
    assert sorted(out.split() for out, _ in results) == [["0", "7"], ["1", "None"]]
    trials = optuna.load_study(study_name="claim", storage=url).get_trials()
    assert [(t.number, t.state, t.user_attrs) for t in trials] == [(0, TrialState.RUNNING, {"seed": 7}),
                                                                    (1, TrialState.RUNNING, {})]
