"""The MLflow UI on gansweep's store: the links that open each experiment and each study's shared view, and the
server itself, run so that stopping `gansweep ui` stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

__all__ = ["ui_links", "serve_ui"]


def ui_links(tracking_uri: str, host: str, port: int) -> list[str]:
    """One line per experiment with its run table's link, and under it one per gansweep study view it holds."""
    from gansweep.run_table import VIEW_TAG_PREFIX, experiment_url
    from gansweep.tracking import client_for

    lines = []
    for experiment in client_for(tracking_uri, create=False).search_experiments():
        lines.append(f"{experiment.name}: {experiment_url(host, port, experiment.experiment_id)}")
        for tag in sorted(t for t in experiment.tags if t.startswith(f"{VIEW_TAG_PREFIX}gansweep-")):  # a study's
            view = tag.removeprefix(VIEW_TAG_PREFIX)
            lines.append(f"  sorted by the objective ({view}): "
                         f"{experiment_url(host, port, experiment.experiment_id, view)}")
    return lines


def serve_ui(tracking_uri: str, host: str, port: int, workers: int) -> int:
    """Run `mlflow ui` on the store until it exits or is stopped; returns its exit code (0 when stopped)."""
    return _serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
                   "--port", str(port), "--workers", str(workers)])


def _serve(command: list[str]) -> int:
    """Run the MLflow UI in a process group of its own and stop the whole group (its web server and job workers)
    however `gansweep ui` ends, Ctrl-C, SIGTERM or a closed terminal (SIGHUP): stopping only the first process
    would leave its workers serving the port."""
    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    server = subprocess.Popen(command, start_new_session=True)
    previous = {s: signal.signal(s, terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for stop, patience in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + patience
            try:
                os.killpg(server.pid, stop)
                while time.monotonic() < deadline:  # until no process of the group is left
                    server.poll()  # the first process, reaped once it exits
                    os.killpg(server.pid, 0)
                    time.sleep(0.2)
            except ProcessLookupError:
                break
