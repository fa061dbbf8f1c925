"""Where results live: one folder (the store) holds the MLflow database, its artifacts, the Optuna journal and the
reports, so a study is one folder to keep, copy or share, wherever the command is run from.

The root is `--store`, else $GANSWEEP_STORE, else the folder of a sqlite `--tracking-uri` / $MLFLOW_TRACKING_URI,
else ./mlruns. `--tracking-uri` and `--storage` still replace the MLflow or the Optuna part on their own (a
tracking server, a PostgreSQL database). Commands that only read refuse a store that does not exist rather than
create an empty one, and never write into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from gansweep.errors import GansweepError, first_line

__all__ = ["Store", "resolve_store", "store_lock", "STORE_ENV", "DEFAULT_STORE", "DATABASE", "JOURNAL",
           "FIRST_CONTACT_S"]

STORE_ENV = "GANSWEEP_STORE"
DEFAULT_STORE = Path("mlruns")
DATABASE = "mlflow.db"  # MLflow 3.17+ refuses a plain ./mlruns file store: its sqlite backend, in the root
JOURNAL = "optuna.journal"  # a journal file: safe for several processes on one machine, nothing to start


class StoreError(GansweepError):
    """A store that is missing, unreadable or unwritable where the command needs it."""


@dataclass(frozen=True)
class Store:
    root: Path  # absolute
    tracking_uri: str  # MLflow; a sqlite URI is absolute, so it means the same from any working directory
    storage: str  # Optuna: a URL, or the path of a journal file

    @property
    def database(self) -> Path | None:
        """The MLflow sqlite file, when MLflow's part is one."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri.removeprefix("sqlite:///"))
        return None

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def writable(self) -> bool:
        """Whether MLflow's part can be written (sqlite also writes its journal beside the database); a tracking
        server answers for itself."""
        database = self.database
        if database is None:
            return True
        if database.exists():
            return os.access(database, os.W_OK) and os.access(database.parent, os.W_OK)
        folder = next(p for p in database.parents if p.exists())
        return folder.is_dir() and os.access(folder, os.W_OK)

    def existing(self) -> Store:
        """This store, for a command that only reads: refused when there is nothing to read."""
        _check_tracking(self.tracking_uri)
        database = self.database
        if database is not None and not database.is_file():
            raise StoreError(f"no store at {database.parent} (no {database.name} there); run `gansweep study NAME` "
                             f"or `gansweep train VARIANT` first, or point --store at the folder that holds it")
        if database is not None and not os.access(database, os.R_OK):
            raise StoreError(f"{database} is not readable")
        return self

    def for_writing(self) -> Store:
        """This store, for a command that records results: refused up front when it cannot be written."""
        _check_tracking(self.tracking_uri)
        if not self.writable():
            raise StoreError(f"the store {self.root} cannot be written (read-only, or a file is in the way); "
                             f"give --store a folder you can write")
        return self

    def optuna(self) -> Any:
        """The Optuna storage, opened: a database URL connected, a journal file with its folder made."""
        import optuna

        from gansweep.liveness import GRACE_S, HEARTBEAT_S

        if "://" in self.storage:
            try:  # connects and makes Optuna's tables now, before anything of the study exists
                return _rdb_storage(self.storage, HEARTBEAT_S, GRACE_S)
            except Exception as e:  # a bad URL, a missing driver, an unreachable server: all the user's to fix
                first = first_line(e)
                raise StoreError(f"cannot open the Optuna storage {self.storage}: {first}") from None
        path = Path(self.storage)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(_MendingJournal(str(path)))
        except OSError as e:
            raise StoreError(f"cannot open the Optuna journal {path}: {e.strerror or e}") from None


FIRST_CONTACT_S = 10  # how long a tracking server or database has to answer a command's first request


def _check_tracking(uri: str) -> None:
    """A tracking URI other than a local sqlite file, reached once before anything is done: a scheme MLflow has
    no store for, or a server or database that does not answer, is one line here. Past this point MLflow retries a
    request for minutes, which is right for a study under way and not for a first contact; this one request is
    MLflow's own (its TLS and login settings apply), made without retries and with a timeout."""
    if uri.startswith("sqlite:///"):
        return
    from mlflow import MlflowClient

    from gansweep.tracking import mlflow_settings

    try:
        if uri.startswith(("postgresql", "mysql", "mssql")):  # MLflow tries a database for a minute and more
            import sqlalchemy

            waits = {"connect_timeout": FIRST_CONTACT_S} if uri.startswith(("postgresql", "mysql")) \
                else {"timeout": FIRST_CONTACT_S}
            sqlalchemy.create_engine(uri, connect_args=waits).connect().close()
        with mlflow_settings(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(FIRST_CONTACT_S)):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # an unknown scheme, a missing driver, a server away or refusing: the user's to fix
        first = first_line(e)
        raise StoreError(f"cannot use the MLflow tracking URI {uri}: {first}") from None


class _MendingJournal(JournalFileBackend):
    """Optuna's journal file, which survives a torn last line.

    A process that dies mid-write (killed, or a full disk) leaves a last line without its newline; Optuna would
    glue the next write onto it, and every later read would fail. Before each write, under Optuna's own lock,
    such a tail is copied to a backup beside the journal, cut off, and reported in one line.
    """

    def __init__(self, file_path: str):
        super().__init__(file_path, JournalFileSymlinkLock(file_path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append (one write of whole lines, then fsync), after the mend, under one hold of the lock:
        no other writer can tear the tail in between."""
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._lock.acquire()
        try:
            mend_journal(Path(self._file_path))
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        finally:
            self._lock.release()


def mend_journal(path: Path) -> Path | None:
    """Cut a torn last line off the journal at `path`, keeping a copy of the whole file; the copy, or None."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        keep, block = 0, 1 << 16
        for end in range(size, 0, -block):  # the last newline, read backwards in blocks
            start = max(end - block, 0)
            f.seek(start)
            found = f.read(end - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        shutil.copyfile(path, backup)
        f.truncate(keep)
    print(f"warning: {path} ended in a torn line ({size - keep} bytes, left by a process that died mid-write); "
          f"it was cut off and the whole file kept as {backup.name}", file=sys.stderr)
    return backup


_LOCKS: dict[Path, Any] = {}  # one FileLock per lock file, so that a step under the lock may call another one


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialises find-or-create steps of several processes on one local sqlite file (a file lock beside the
    database); a database or tracking server orders its own requests, so other stores need none. Reentrant in a
    process; a process that dies lets go of it."""
    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _LOCKS.setdefault(path, FileLock(path, thread_local=False))
    with lock:
        yield


def _rdb_storage(url: str, heartbeat_s: int, grace_s: int) -> Any:
    """Optuna's RDBStorage, with heartbeats. Workers that open a new database together race to create its tables:
    on one sqlite file they take turns (store_lock); on a server the loser of the race gets a unique-constraint or
    duplicate-table error and tries again, when the tables are there."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(_TABLE_RACE_TRIES):
        try:
            with store_lock(url):
                kind = _SqliteStorage if url.startswith("sqlite:") else RDBStorage
                return kind(url, heartbeat_interval=heartbeat_s, grace_period=grace_s)
        except (IntegrityError, ProgrammingError):
            if attempt == _TABLE_RACE_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


_TABLE_RACE_TRIES = 5


class _SqliteStorage(RDBStorage):
    """Optuna's RDB storage on one sqlite file, whose trial state changes are atomic across processes.

    Optuna hands out an enqueued trial by reading its state FOR UPDATE and writing RUNNING only if it was WAITING.
    sqlite ignores FOR UPDATE, and Python's sqlite3 takes the write lock only at the write, so two processes could
    both read WAITING and both train the one trial (the second to finish then failed on a trial already ended).
    Each state change here reads and writes under the store's file lock."""

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with store_lock(self.url):
            return super().set_trial_state_values(trial_id, state, values)


def resolve_store(store: str | None = None, tracking_uri: str | None = None, storage: str | None = None) -> Store:
    """The store a command uses, from its options and the environment; nothing is created here."""
    for name, value in (("--store", store), ("--tracking-uri", tracking_uri), ("--storage", storage)):
        if value is not None and not value.strip():
            raise StoreError(f"{name} must not be empty")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is not None and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # made absolute once, here: MLflow keeps one engine per URI string, and a relative one would follow
        # whatever the working directory is when it first connects
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    given_root = store or os.environ.get(STORE_ENV)
    if given_root:
        root = Path(given_root).expanduser().resolve()
    elif uri is not None and uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent
    else:
        root = DEFAULT_STORE.resolve()
    if uri is None:
        uri = f"sqlite:///{root / DATABASE}"
    if uri.startswith("file:") or ("://" not in uri and uri != "databricks"):
        raise StoreError(f"--tracking-uri {uri!r}: MLflow 3.17+ refuses a plain file store; use "
                         f"sqlite:///PATH/mlflow.db, an http(s):// server, or --store DIR")
    if storage is None:
        storage = str(root / JOURNAL)
    elif "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return Store(root, uri, storage)
