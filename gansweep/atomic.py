"""Files written whole or not at all: an interrupted run never leaves half a checkpoint or half an image."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gansweep.errors import GansweepError

__all__ = ["atomic_path", "refuse_existing"]

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


def refuse_existing(path: Path) -> None:
    """Outputs a user names with -o are new files: nothing a user stored is overwritten."""
    if path.exists():
        raise GansweepError(f"{path} exists; choose another path with -o (nothing is overwritten)")
