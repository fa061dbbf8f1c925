"""The `gansweep` command: a thin click layer over the library.

torch and everything that imports it load inside the commands, so `gansweep --help` answers at once.
Errors caused by input (GansweepError) become one `Error: ...` line and exit code 2, translated once, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gansweep import __version__
from gansweep.errors import GansweepError

__all__ = ["main"]


class InputError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GansweepError as e:
            raise InputError(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gansweep")
def main() -> None:
    """Train, sweep and compare GAN variants."""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


@main.command("list")
@click.argument("what", type=click.Choice(["variants", "datasets"]))
def list_(what: str) -> None:
    """List the registered variants or datasets, one line each."""
    if what == "variants":
        from gansweep.variants import VARIANTS

        rows = [[v.name, v.arch, v.loss, v.regularizer, v.conditioning, v.summary] for v in VARIANTS.values()]
        click.echo(_table(["variant", "arch", "loss", "regularizer", "conditioning", "description"], rows))
    else:
        from gansweep.data import DATASETS

        rows = [[s.name, str(s.n_classes), s.summary] for s in DATASETS.values()]
        click.echo(_table(["dataset", "classes", "description"], rows))


@main.command()
@click.argument("variant")
@click.option("--dataset", default="mnist-5k", show_default=True, help="Dataset name (gansweep list datasets).")
@click.option("--data-root", default=None, help="Where torchvision datasets live [env GANSWEEP_DATA, "
                                                "else ~/.cache/gansweep/data].")
@click.option("--epochs", type=int, default=None, help="Passes of D over the training split.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Learning rate of G and D.")
@click.option("--lr-g", type=float, default=None, help="G's learning rate, overriding --lr.")
@click.option("--lr-d", type=float, default=None, help="D's learning rate, overriding --lr.")
@click.option("--dropout", type=float, default=None, help="Dropout in D, in [0, 1).")
@click.option("--label-smoothing", type=float, default=None, help="One-sided: D's real target is 1 - s.")
@click.option("--n-critic", type=int, default=None, help="D updates per G update.")
@click.option("--seed", type=int, default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Folder that receives a new run folder.")
def train(variant: str, dataset: str, data_root: str | None, out_root: Path, **changes: Any) -> None:
    """Train one VARIANT at its defaults, changed by the options given."""
    from gansweep.config import DataConfig
    from gansweep.runs import run_training

    data_config = DataConfig(dataset=dataset, **({"data_root": data_root} if data_root else {}))
    outcome = run_training(variant, data_config, out_root, **changes)
    result = outcome.result
    click.echo(f"{result.status}: {result.reason}")
    click.echo(f"run folder: {outcome.directory}  (samples/, checkpoint.pt, run.json)")
    if result.status == "diverged":
        raise SystemExit(1)
