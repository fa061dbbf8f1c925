"""A trial whose process died is found and given back, so that its point runs again.

A process can die without a word (SIGKILL, out of memory, a segfault, a lost machine) and leave its Optuna trial
RUNNING for ever, which would count its point as taken. A database storage records Optuna's heartbeat for each
running trial, and `optuna.storages.fail_stale_trials` fails the trials whose heartbeat stopped `GRACE_S` ago.
Optuna's journal file has no heartbeat: there each running trial holds an exclusive lock on a lease file beside the
journal and names the lease in its user attributes. The kernel drops the lock when the process ends, however it
ends, so a RUNNING trial whose lease is free is dead at once. Either way a RUNNING trial that names neither a lease
nor a heartbeat GRACE_S after it started is dead too (its process died right after ask, or an older gansweep left
it).

A trial failed this way carries no `status` attribute (gansweep sets one on every trial it ends itself): that is
how every process recognises it as lost.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Liveness", "HEARTBEAT_S", "GRACE_S", "LEASE_ATTR", "is_lost"]

# gansweep drives trials through ask/tell and records their heartbeats itself (`_Heartbeat`), which Optuna warns
# about on every ask; and its heartbeat API is marked experimental. Neither is news to a user.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*(heartbeat_interval|fail_stale_trials).*experimental",
                        category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_S = 5  # how often a running trial's heartbeat is written to a database storage
GRACE_S = 30  # a database trial with no heartbeat for this long, or a journal trial not leased by then, is dead
LEASE_ATTR = "lease"  # the lease file's name on the journal; HEARTBEAT on a database storage
HEARTBEAT = "heartbeat"


def is_lost(trial: FrozenTrial) -> bool:
    """A failed trial that no process ended: its process died while running it."""
    return trial.state == TrialState.FAIL and "status" not in trial.user_attrs


class Liveness:
    """Keeps this process's running trial visibly alive, and finds the trials of processes that are not."""

    def __init__(self, storage: Any, journal: Path | None):
        self.storage = storage
        self.leases = journal.with_name(journal.name + ".leases") if journal is not None else None

    @contextlib.contextmanager
    def alive(self, trial: optuna.Trial) -> Iterator[None]:
        """While the block runs, `trial` is known to be alive: a held lease, or a heartbeat every HEARTBEAT_S."""
        if self.leases is None:
            with _Heartbeat(self.storage, trial._trial_id):  # Optuna's own trial loop passes the same id
                trial.set_user_attr(LEASE_ATTR, HEARTBEAT)
                yield
            return
        self.leases.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        path = self.leases / f"{name}.lock"
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                trial.set_user_attr(LEASE_ATTR, name)
                yield
            finally:
                path.unlink(missing_ok=True)

    @property
    def noticed(self) -> str:
        """How soon a trial whose process died is found, in words."""
        return "at once" if self.leases is not None else f"{GRACE_S} s after its last heartbeat"

    def fail_dead(self, study: optuna.Study) -> None:
        """Fail every RUNNING trial of `study` whose process is gone (see the module's docstring)."""
        now = datetime.datetime.now()
        if self.leases is None:
            optuna.storages.fail_stale_trials(study)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if LEASE_ATTR not in trial.user_attrs and _unclaimed_for(trial, now) > GRACE_S:
                    with contextlib.suppress(Exception):
                        study.tell(trial.number, state=TrialState.FAIL)
            return
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            with self._free_lease(trial, now) as dead:
                if dead:
                    with contextlib.suppress(Exception):  # another process failed or finished it meanwhile
                        study.tell(trial.number, state=TrialState.FAIL)

    @contextlib.contextmanager
    def _free_lease(self, trial: FrozenTrial, now: datetime.datetime) -> Iterator[bool]:
        """Whether the trial's lease is free, holding it (so its owner cannot be mid-update) while the block runs."""
        assert self.leases is not None
        name = trial.user_attrs.get(LEASE_ATTR)
        if name is None:  # between ask() and taking the lease, or a process that died in that moment
            yield _unclaimed_for(trial, now) > GRACE_S
            return
        path = self.leases / f"{name}.lock"
        try:
            handle = open(path, "r+")
        except FileNotFoundError:  # the owner ended without telling Optuna: dead too
            yield True
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                path.unlink(missing_ok=True)


def _unclaimed_for(trial: FrozenTrial, now: datetime.datetime) -> float:
    """Seconds since a trial without a lease or heartbeat started: a moment for a live one (it takes one right
    after ask), ever longer for a trial whose process died before, or that an older gansweep left RUNNING."""
    return (now - (trial.datetime_start or now)).total_seconds()


class _Heartbeat:
    """Records a trial's heartbeat in a thread, at once and then every HEARTBEAT_S, until the block ends."""

    def __init__(self, storage: Any, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="gansweep-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is only late; the grace period allows for it
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> None:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
