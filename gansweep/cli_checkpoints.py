"""The commands that load a tracked run's checkpoint: `sample`, `interpolate` and `evaluate`. The `gansweep`
group (cli.py) adds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gansweep.cli_options import plain_table, reading, store_options

__all__ = ["sample", "interpolate", "evaluate"]


_BEST = click.option("--best", is_flag=True, help="RUN_ID is a study name: use its best finished trial.")
_CHECKPOINT = click.option("--checkpoint", "which", type=click.Choice(["last", "best"]), default="last",
                           show_default=True, help="The run's last checkpoint, or its best by the objective.")


def _picture_options(default_name: str) -> Any:
    """The options of a command that draws one PNG from a run's checkpoint: seed, checkpoint, output, --best."""
    options = [click.option("--seed", type=int, default=0, show_default=True), _CHECKPOINT,
               click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help=f"PNG to write [default {default_name}-RUNID.png]; an existing file is never "
                                 f"overwritten."),
               _BEST, store_options]

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _run_id(ref: str, best: bool, uri: str) -> str:
    """The run RUN_ID names: its id or the first 8 characters of it, or with --best a study's best trial (which
    it says)."""
    from gansweep.generate import best_run
    from gansweep.tracking import client_for, full_run_id

    if not best:
        return full_run_id(client_for(uri, create=False), ref)
    run_id = best_run(uri, ref)
    click.echo(f"the best finished trial of {ref}: run {run_id}", err=True)
    return run_id


@click.command()
@click.argument("run_id")
@click.option("--n", type=int, default=64, show_default=True, help="Images in the grid.")
@click.option("--label", type=int, default=None, help="Class to draw, for conditional variants.")
@_picture_options("samples")
def sample(run_id: str, n: int, label: int | None, seed: int, which: str, out: Path | None, best: bool,
           store: str | None, tracking_uri: str | None) -> None:
    """Draw a grid of images from the checkpoint of the tracked run RUN_ID."""
    from gansweep.generate import sample_run
    uri = reading(store, tracking_uri).tracking_uri
    run_id = _run_id(run_id, best, uri)
    path = sample_run(run_id, out or Path(f"samples-{run_id[:8]}.png"), uri, n=n, label=label, seed=seed,
                      which=which)
    click.echo(str(path))


@click.command()
@click.argument("run_id")
@click.option("--steps", type=int, default=10, show_default=True, help="Images along each line.")
@click.option("--pairs", type=int, default=8, show_default=True, help="Random pairs of latent points (rows).")
@_picture_options("interpolation")
def interpolate(run_id: str, steps: int, pairs: int, seed: int, which: str, out: Path | None, best: bool,
                store: str | None, tracking_uri: str | None) -> None:
    """Rows of latent interpolations from the checkpoint of RUN_ID (and between classes, if conditional)."""
    from gansweep.generate import interpolate_run
    uri = reading(store, tracking_uri).tracking_uri
    run_id = _run_id(run_id, best, uri)
    path = interpolate_run(run_id, out or Path(f"interpolation-{run_id[:8]}.png"), uri, steps=steps, pairs=pairs,
                           seed=seed, which=which)
    click.echo(str(path))


@click.command()
@click.argument("run_id")
@click.option("--n", "n_eval", type=int, default=None, help="Images to score [the run's evaluation size].")
@_CHECKPOINT
@click.option("--parzen", is_flag=True, help="Also the Parzen-window log-likelihood of the test split.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--data-root", default=None, help="Where torchvision datasets live.")
@click.option("--log", "log_to_run", is_flag=True, help="Also record the scores in the run, as eval/NAME.")
@click.option("--any-network", is_flag=True, help="Score with this machine's feature network even where the run "
                                                   "was scored with another.")
@_BEST
@store_options
def evaluate(run_id: str, n_eval: int | None, which: str, parzen: bool, device: str, data_root: str | None,
             log_to_run: bool, any_network: bool, best: bool, store: str | None, tracking_uri: str | None) -> None:
    """Score the checkpoint of the tracked run RUN_ID again, beside the real-data floor of each score."""
    from gansweep.generate import evaluate_run

    found = reading(store, tracking_uri)
    if log_to_run:
        found.for_writing()
    uri = found.tracking_uri
    report = evaluate_run(_run_id(run_id, best, uri), uri, which=which, n_eval=n_eval, parzen=parzen,
                          device=device, data_root=data_root, log_to_run=log_to_run, any_network=any_network)
    if n_eval is not None and report.n < n_eval:
        click.echo(f"note: --n {n_eval} is more than {report.dataset} allows (2 slices of at most half its held-out "
                   f"split): scored {report.n} images per slice", err=True)
    click.echo(f"{report.variant} epoch {report.epoch} on {report.dataset}, n={report.n}, "
               f"feature net {report.feature_net} ({report.accuracy:.1%} held-out)")
    def cell(values: dict[str, float], name: str) -> str:
        return f"{values[name]:.4g}" if name in values else "-"

    rows = [[name, cell(report.scores, name), cell(report.test, name), cell(report.test_se, name),
             cell(report.floor, name)] for name in report.scores]
    click.echo(plain_table(["score", "validation", "test", "test s.e.", "real-data floor"], rows))
