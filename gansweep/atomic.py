"""Files written whole or not at all: an interrupted run never leaves half a checkpoint or half an image."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gansweep.errors import GansweepError

__all__ = ["atomic_path", "refuse_existing", "refuse_file_in_path", "uninterrupted"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block succeeds.

    The temporary name keeps `path`'s suffix, so writers that pick a format from it (PIL, matplotlib) still do.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the finished file gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then act as they would have: a file and the record that
    vouches for it (a checkpoint and its SHA-256) are written together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            if callable(previous[sig]):
                previous[sig](sig, None)
            else:
                os.kill(os.getpid(), sig)


def refuse_existing(path: Path) -> None:
    """Outputs a user names with -o are new files, in a folder that is one or can be made: nothing a user stored
    is overwritten."""
    if path.exists():
        raise GansweepError(f"{path} exists; choose another path with -o (nothing is overwritten)")
    refuse_file_in_path(path)


def refuse_file_in_path(path: Path) -> None:
    """Refused before anything is made: a path whose folders would have to go where a file is."""
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise GansweepError(f"{path}: {above} is a file, not a folder; choose another path with -o")
