"""What the `gansweep` commands share: the group that turns bad input into one line and exit code 2, the
store's options, and the plain table the listing and scoring commands print."""

from __future__ import annotations

import shlex
from typing import Any

import click

from gansweep.errors import GansweepError
from gansweep.store import Store, resolve_store  # light: no torch, mlflow or optuna

__all__ = ["InputError", "Group", "plain_table", "store_options", "store_flags", "MIXED", "reading"]


class InputError(click.ClickException):
    exit_code = 2


class Group(click.Group):
    """Bad input of any kind, caught by click's parser or by gansweep's checks, ends in one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GansweepError as e:
            raise InputError(str(e)) from None
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "gansweep"
            raise InputError(f"{e.format_message()} (see: {command} --help)") from None


def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, under a rule."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def store_options(command: Any) -> Any:
    """--store and --tracking-uri, on every command that touches the store."""
    command = click.option("--tracking-uri", default=None,
                           help="MLflow part of the store instead [env MLFLOW_TRACKING_URI].")(command)
    return click.option("--store", default=None, help="Folder of the MLflow database, artifacts and Optuna "
                                                      "journal [env GANSWEEP_STORE, else ./mlruns].")(command)


def store_flags(store: str | None, tracking_uri: str | None) -> str:
    """The store options as given, for a printed next command that must reach the same store."""
    given = (("--store", store), ("--tracking-uri", tracking_uri))
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in given if value is not None)


MIXED = click.option("--mixed-scoring", is_flag=True, help="Rank runs scored with different feature networks or "
                                                           "evaluation sizes in one table anyway.")


def reading(store: str | None, tracking_uri: str | None) -> Store:
    """The store, which must exist, of a command that only reads it."""
    return resolve_store(store, tracking_uri).existing()
