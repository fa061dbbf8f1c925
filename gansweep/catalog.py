"""Where study files are found, and which file a study name means.

A study's name is its file's name. Folders are searched in order and the first file of a name wins, so a person's
own `lr-sensitivity.toml` replaces the shipped one: `studies/` in the working directory, then $GANSWEEP_STUDIES,
then the studies shipped inside the package (package data, so an installed wheel has them from any directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from gansweep.errors import ConfigError, GansweepError, UnknownNameError
from gansweep.spec import StudySpec, load_spec

__all__ = ["STUDIES_ENV", "StudyFile", "study_dirs", "find_spec", "list_studies"]

STUDIES_ENV = "GANSWEEP_STUDIES"


@dataclass(frozen=True)
class StudyFile:
    """A study as listed: its spec, or the one-line error that stops it loading (a broken file hides no other)."""

    name: str
    path: Traversable
    spec: StudySpec | None = None
    error: str = ""


def study_dirs() -> list[Traversable]:
    """The folders searched, first wins; read at each call, as the working directory and environment may change.

    A missing `studies/` is normal; a $GANSWEEP_STUDIES that names no folder is a typo worth stopping for.
    """
    dirs: list[Traversable] = [Path("studies")]
    extra = os.environ.get(STUDIES_ENV)
    if extra:
        if not Path(extra).is_dir():
            raise ConfigError(f"{STUDIES_ENV} must name a folder of study files, got {extra!r}; create it or unset it")
        dirs.append(Path(extra))
    dirs.append(resources.files("gansweep") / "studies")
    return dirs


def _files() -> dict[str, Traversable]:
    """Each study name and the file it means, by name. Nothing is parsed, so a broken file cannot get in the way."""
    found: dict[str, Traversable] = {}
    for directory in study_dirs():
        if directory.is_dir():
            for path in sorted(directory.iterdir(), key=lambda p: p.name):
                if path.name.endswith(".toml") and path.is_file():
                    found.setdefault(path.name.removesuffix(".toml"), path)
    return dict(sorted(found.items()))


def find_spec(name: str) -> Traversable:
    """The file of study `name`; close names are suggested from the file names, which are the study names."""
    files = _files()
    if name not in files:
        raise UnknownNameError("study", name, files, "gansweep list studies")
    return files[name]


def list_studies() -> list[StudyFile]:
    """Every study on the search path, each loaded on its own: a broken one is listed with its error."""
    studies = []
    for name, path in _files().items():
        try:
            studies.append(StudyFile(name, path, spec=load_spec(path)))
        except GansweepError as e:
            studies.append(StudyFile(name, path, error=str(e)))
    return studies
