"""Real shared stores for tests, as a team runs gansweep on several machines: a PostgreSQL server for Optuna and an
MLflow tracking server that also serves the artifacts. Each runs in a temporary folder on a free port of
127.0.0.1 and is stopped, with every process it started, when its context ends.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Unavailable", "PostgresTools", "Postgres", "find_postgres", "postgres_server", "find_mlflow",
           "mlflow_server", "stop_group", "tail"]

POSTGRES_USER = "postgres"  # the superuser initdb makes; under root also the system user the server runs as
START_TIMEOUT_S = 120  # a cold start on 2 busy cores: MLflow creates its tables and imports its app per worker


class Unavailable(Exception):
    """A server cannot be started on this machine; the message says why, and the tests that need it skip."""


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The end of a server's log, for the message of a server that did not start."""
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """Ends a process started in a session of its own and everything it started (server workers, job runners):
    SIGTERM to the whole group, SIGKILL to whatever is left after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader: a zombie still counts as a member of its group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass(frozen=True)
class PostgresTools:
    """The PostgreSQL programs and how to run them: initdb refuses root, so under root they run as `postgres`."""

    bin: Path  # the folder with initdb and pg_ctl
    run_as: tuple[str, ...]  # the prefix of every server command: empty, or runuser to the postgres user
    owner: tuple[int, int] | None  # uid and gid to give the server's folder, when not the current user

    def command(self, program: str, *args: str | Path) -> list[str]:
        return [*self.run_as, str(self.bin / program), *map(str, args)]


def find_postgres() -> PostgresTools:
    """initdb and pg_ctl on PATH, else in Debian's /usr/lib/postgresql/VERSION/bin (the newest), and psycopg to
    reach the server; Unavailable, saying what is missing, otherwise."""
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install 'psycopg[binary]>=3.1', or the test extra)") from None
    on_path = [shutil.which(name) for name in ("initdb", "pg_ctl")]
    folders = [Path(on_path[0]).resolve().parent] if all(on_path) else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                      key=lambda p: [int(part) for part in p.parent.name.split(".") if part.isdigit()])
    folder = next((f for f in folders if all(os.access(f / name, os.X_OK) for name in ("initdb", "pg_ctl"))), None)
    if folder is None:
        raise Unavailable("PostgreSQL not found: no initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin "
                          "(Debian: apt-get install postgresql)")
    if os.geteuid() != 0:
        return PostgresTools(folder, (), None)
    try:
        user = pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise Unavailable(f"running as root, and there is no {POSTGRES_USER!r} system user to run PostgreSQL "
                          f"as (initdb refuses root)") from None
    if shutil.which("runuser") is None:
        raise Unavailable(f"running as root without runuser to run PostgreSQL as {POSTGRES_USER!r}")
    return PostgresTools(folder, ("runuser", "-u", POSTGRES_USER, "--"), (user.pw_uid, user.pw_gid))


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server with trust authentication on 127.0.0.1."""

    port: int

    def url(self, database: str = "postgres") -> str:
        """The URL a user would type: SQLAlchemy 2.1 reads postgresql:// with psycopg 3."""
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _server_command(command: list[str], cwd: Path, log: Path | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        shown = "\n".join(filter(None, [done.stdout.strip(), done.stderr.strip(), log and tail(log)]))
        raise RuntimeError(f"{' '.join(command)} exited with code {done.returncode}:\n{shown}")


@contextlib.contextmanager
def postgres_server(tools: PostgresTools) -> Iterator[Postgres]:
    """A fresh cluster (initdb, trust authentication) started on a free port of 127.0.0.1, its unix socket in its
    own folder; stopped with `pg_ctl stop -m fast` and removed at the end. The folder is made in the system's
    temporary folder, which the postgres user can reach (pytest's own one is private to the current user)."""
    folder = Path(tempfile.mkdtemp(prefix="gansweep-postgres-"))
    try:
        if tools.owner is not None:
            os.chown(folder, *tools.owner)
        data, log, port = folder / "data", folder / "server.log", free_port()
        _server_command(tools.command("initdb", "-D", data, "-U", POSTGRES_USER, "--auth=trust", "--encoding=UTF8",
                                      "--no-sync"), folder)
        _server_command(tools.command("pg_ctl", "-D", data, "-l", log, "-w", "-t", str(START_TIMEOUT_S),
                                      "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start"), folder, log)
        try:  # pg_ctl -w has returned once the server accepts connections
            yield Postgres(port)
        finally:
            _server_command(tools.command("pg_ctl", "-D", data, "-m", "fast", "-w", "stop"), folder, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def find_mlflow() -> Path:
    """The `mlflow` executable of this environment."""
    executable = Path(sys.executable).with_name("mlflow")
    if not os.access(executable, os.X_OK):
        raise Unavailable(f"no mlflow executable beside {sys.executable}")
    return executable


@contextlib.contextmanager
def mlflow_server(executable: Path, folder: Path, workers: int = 2) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1 with a sqlite backend in `folder`, serving the artifacts from
    `folder/artifacts` itself, so every client uploads its checkpoints through the server as it would from another
    machine. Yields its URL once GET /health answers; the server's log is `folder/mlflow-server.log`."""
    port, log = free_port(), folder / "mlflow-server.log"
    command = [str(executable), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts", "--workers", str(workers)]
    env = {name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # the GenAI job runners: a dozen processes gansweep never uses
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process, log)
        yield url
    finally:
        stop_group(process)


def _wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or a worker still starting
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server gave no answer at {url}/health within {START_TIMEOUT_S} s:\n{tail(log)}")
