"""The `gansweep` command: a thin click layer over the library.

torch and everything that imports it load inside the commands, so `gansweep --help` answers at once.
Errors caused by input (GansweepError) become one `Error: ...` line and exit code 2, translated once, here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from gansweep import __version__
from gansweep.errors import GansweepError
from gansweep.store import Store, resolve_store  # light: no torch, mlflow or optuna

__all__ = ["main"]


class InputError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Bad input of any kind, caught by click's parser or by gansweep's checks, ends in one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GansweepError as e:
            raise InputError(str(e)) from None
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "gansweep"
            raise InputError(f"{e.format_message()} (see: {command} --help)") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gansweep")
def main() -> None:
    """Train, sweep and compare GAN variants."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is for results
    # MLflow's database layer logs each error it raises with a traceback (a full disk: dozens); gansweep says
    # what went wrong in one line, and a new store's "Creating initial MLflow database tables" is no news
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


@main.command("list")
@click.argument("what", type=click.Choice(["variants", "datasets", "studies"]))
def list_(what: str) -> None:
    """List the registered variants, datasets or study files, one line each."""
    if what == "studies":
        from gansweep.catalog import list_studies

        rows = [[f.name, f.spec.sampler, ",".join(f.spec.variants), str(f.path), f.spec.description] if f.spec else
                [f.name, "-", "-", str(f.path), f"broken: {f.error}"] for f in list_studies()]
        click.echo(_table(["study", "sampler", "variants", "file", "description"], rows))
    elif what == "variants":
        from gansweep.variants import VARIANTS

        rows = [[v.name, v.arch, v.loss, v.regularizer, v.conditioning, v.summary] for v in VARIANTS.values()]
        click.echo(_table(["variant", "arch", "loss", "regularizer", "conditioning", "description"], rows))
    else:
        from gansweep.data import DATASETS

        from gansweep.classifier import SHIPPED, cached_records, shipped_records

        shipped = {r["dataset"]: r for r in shipped_records()}
        accuracy = {r["dataset"]: f"{r['accuracy']:.1%} ({r['checksum'][:8]}, this machine's)"
                    for r in cached_records()}
        for dataset, network in SHIPPED.items():
            accuracy[dataset] = f"{shipped[network]['accuracy']:.1%} ({shipped[network]['checksum'][:8]}, shipped)"
        rows = [[s.name, str(s.n_classes), accuracy.get(s.name, "not trained yet"), s.summary]
                for s in DATASETS.values()]
        click.echo(_table(["dataset", "classes", "feature net (held-out acc.)", "description"], rows))


def _store_options(command: Any) -> Any:
    """--store and --tracking-uri, on every command that touches the store."""
    command = click.option("--tracking-uri", default=None,
                           help="MLflow part of the store instead [env MLFLOW_TRACKING_URI].")(command)
    return click.option("--store", default=None, help="Folder of the MLflow database, artifacts and Optuna "
                                                      "journal [env GANSWEEP_STORE, else ./mlruns].")(command)


_MIXED = click.option("--mixed-scoring", is_flag=True, help="Rank runs scored with different feature networks or "
                                                           "evaluation sizes in one table anyway.")


def _reading(store: str | None, tracking_uri: str | None) -> Store:
    """The store, which must exist, of a command that only reads it."""
    return resolve_store(store, tracking_uri).existing()


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
@click.option("--n-eval", type=int, default=None,
              help="Images per evaluation slice [5,000, at most half the held-out split].")
@_store_options
@click.option("--experiment", default=None, help="MLflow experiment [default: train].")
def train(variant: str, dataset: str, data_root: str | None, store: str | None, tracking_uri: str | None,
          experiment: str | None, n_eval: int | None, **changes: Any) -> None:
    """Train one VARIANT at its defaults, changed by the options given, as a new MLflow run."""
    from gansweep.config import DataConfig
    from gansweep.run_table import experiment_url
    from gansweep.runs import run_training

    data_config = DataConfig(dataset=dataset, **({"data_root": data_root} if data_root else {}))
    outcome = run_training(variant, data_config, resolve_store(store, tracking_uri), experiment, n_eval,
                           **changes)
    result = outcome.result
    click.echo(f"{result.status}: {result.reason}")
    scores = {k.removeprefix("score/"): v for k, v in result.scores.items() if k.startswith("score/")}
    if scores:
        click.echo("scores: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    click.echo(f"MLflow run {outcome.run_id} in {outcome.tracking_uri}")
    click.echo(f"next: gansweep sample {outcome.run_id}   |   gansweep ui  ->  "
               f"{experiment_url('127.0.0.1', 5000, outcome.experiment_id)}")
    if result.status == "diverged":
        raise SystemExit(1)


@main.command()
@click.argument("name")
@click.option("--variant", "variants", multiple=True, help="Run only these variants (repeatable).")
@click.option("--dataset", default=None, help="Dataset instead of the study file's.")
@click.option("--epochs", type=int, default=None, help="Budget per trial in epochs (images seen by D).")
@click.option("--trials", type=int, default=None, help="Grid: run at most N remaining points now; "
                                                       "TPE/random: the study's total number of trials.")
@click.option("--seeds", default=None, help="Comma-separated seeds instead of the study file's, e.g. 0,1,2.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--storage", default=None, help="Optuna part of the store instead: a URL (postgresql://...) or a "
                                              "journal file [default STORE/optuna.journal].")
@_store_options
@click.option("--experiment", default=None, help="MLflow experiment [default: the study's name].")
@click.option("--fresh", is_flag=True, help="Start a new study instead of continuing the last one.")
@click.option("--population", default="auto", show_default=True,
              help="Trials trained together in one step: N, or auto (1 on the CPU, up to 64 on CUDA).")
def study(name: str, variants: tuple[str, ...], seeds: str | None, **options: Any) -> None:
    """Run (or continue) the study NAME (gansweep list studies); every trial is an MLflow child run."""
    from gansweep.catalog import find_spec
    from gansweep.spec import load_spec
    from gansweep.run_table import experiment_url, view_key
    from gansweep.study import StudyOptions, Terminated, run_study
    from gansweep.study_table import format_table, seed_spread

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds is not None else None
    except ValueError:
        raise InputError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    spec = load_spec(find_spec(name))
    try:
        outcome = run_study(spec, StudyOptions(variants=variants or None, seeds=seed_list, **options))
    except KeyboardInterrupt as e:
        click.echo(f"{str(e) or 'interrupted'}: finished trials are kept; run the same command to continue", err=True)
        raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
    except Exception as e:
        if not _disk_full(e):
            raise
        click.echo(f"the store's disk is full ({_disk_full(e)}): finished trials and every trial's last "
                   f"checkpoint are kept; free some space and run the same command to continue", err=True)
        raise SystemExit(1) from None
    click.echo(format_table(outcome.table))
    spread = seed_spread(outcome.table, outcome.spec)
    if not spread.empty:
        click.echo(f"\n{outcome.spec.objective.metric} of each variant's best parameters, re-run per seed:")
        click.echo(spread.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    click.echo(f"\nstudy {outcome.optuna_study}: {outcome.ran} trial(s) run now, {len(outcome.table)} in all")
    click.echo(f"MLflow: {outcome.tracking_uri}  (parent run {outcome.parent_run_id})")
    click.echo(f"Optuna: {outcome.storage}")
    url = experiment_url("127.0.0.1", 5000, outcome.experiment_id, view_key(outcome.spec.name))
    click.echo(f"browse: gansweep ui  ->  {url}")
    if outcome.failed:
        click.echo(f"{len(outcome.failed)} point(s) failed and were given up for now; run the study again to "
                   f"retry them. " + " | ".join(outcome.failed), err=True)
        raise SystemExit(1)


def _disk_full(error: BaseException) -> str | None:
    """What a full disk said, however it surfaced (an OSError, or a database through MLflow), else None."""
    import errno

    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        if e is not None and "database or disk is full" in str(e):
            return "database or disk is full"
    return None


@main.command()
@_store_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes; one is plenty for one "
                                                                         "person and starts fastest.")
def ui(store: str | None, tracking_uri: str | None, host: str, port: int, workers: int) -> None:
    """Start the MLflow UI on the store that studies and runs write to."""
    from gansweep.ui import serve_ui, ui_links

    if not 1 <= port <= 65535 or not 1 <= workers <= 64:
        raise InputError(f"--port must be in [1, 65535] and --workers in [1, 64], got {port} and {workers}")
    uri = _reading(store, tracking_uri).tracking_uri
    if uri.startswith(("http://", "https://")):
        raise InputError(f"{uri} is a tracking server already; open it in a browser")
    for line in ui_links(uri, host, port):
        click.echo(line)
    click.echo(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C stops it)")
    raise SystemExit(serve_ui(uri, host, port, workers))


_BEST = click.option("--best", is_flag=True, help="RUN_ID is a study name: use its best finished trial.")
_CHECKPOINT = click.option("--checkpoint", "which", type=click.Choice(["last", "best"]), default="last",
                           show_default=True, help="The run's last checkpoint, or its best by the objective.")


def _picture_options(default_name: str) -> Any:
    """The options of a command that draws one PNG from a run's checkpoint: seed, checkpoint, output, --best."""
    options = [click.option("--seed", type=int, default=0, show_default=True), _CHECKPOINT,
               click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help=f"PNG to write [default {default_name}-RUNID.png]; an existing file is never "
                                 f"overwritten."),
               _BEST, _store_options]

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _run_id(ref: str, best: bool, uri: str) -> str:
    """The run RUN_ID names: its id or the first 8 characters of it, or with --best a study's best trial."""
    from gansweep.generate import best_run
    from gansweep.tracking import client_for, full_run_id

    return best_run(uri, ref) if best else full_run_id(client_for(uri, create=False), ref)


@main.command()
@click.argument("run_id")
@click.option("--n", type=int, default=64, show_default=True, help="Images in the grid.")
@click.option("--label", type=int, default=None, help="Class to draw, for conditional variants.")
@_picture_options("samples")
def sample(run_id: str, n: int, label: int | None, seed: int, which: str, out: Path | None, best: bool,
           store: str | None, tracking_uri: str | None) -> None:
    """Draw a grid of images from the checkpoint of the tracked run RUN_ID."""
    from gansweep.generate import sample_run
    uri = _reading(store, tracking_uri).tracking_uri
    run_id = _run_id(run_id, best, uri)
    path = sample_run(run_id, out or Path(f"samples-{run_id[:8]}.png"), uri, n=n, label=label, seed=seed,
                      which=which)
    click.echo(str(path))


@main.command()
@click.argument("run_id")
@click.option("--steps", type=int, default=10, show_default=True, help="Images along each line.")
@click.option("--pairs", type=int, default=8, show_default=True, help="Random pairs of latent points (rows).")
@_picture_options("interpolation")
def interpolate(run_id: str, steps: int, pairs: int, seed: int, which: str, out: Path | None, best: bool,
                store: str | None, tracking_uri: str | None) -> None:
    """Rows of latent interpolations from the checkpoint of RUN_ID (and between classes, if conditional)."""
    from gansweep.generate import interpolate_run
    uri = _reading(store, tracking_uri).tracking_uri
    run_id = _run_id(run_id, best, uri)
    path = interpolate_run(run_id, out or Path(f"interpolation-{run_id[:8]}.png"), uri, steps=steps, pairs=pairs,
                           seed=seed, which=which)
    click.echo(str(path))


@main.command()
@click.argument("study")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="New or empty folder [default mlruns/reports/STUDY-TIME].")
@_MIXED
@_store_options
def report(study: str, out: Path | None, mixed_scoring: bool, store: str | None, tracking_uri: str | None) -> None:
    """Write the report of STUDY (plots, contact sheet, report.html/.md) and log it to the study's parent run."""
    from gansweep.report import write_report

    outcome = write_report(_reading(store, tracking_uri), study, out, mixed_scoring)
    logged = (f"also under report/ in parent run {outcome.parent_run_id}" if outcome.logged
              else "the store is read-only: not logged to the parent run")
    click.echo(f"{outcome.directory / 'report.html'}  ({len(outcome.files)} files; {logged})")


@main.command()
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
@_store_options
def evaluate(run_id: str, n_eval: int | None, which: str, parzen: bool, device: str, data_root: str | None,
             log_to_run: bool, any_network: bool, best: bool, store: str | None, tracking_uri: str | None) -> None:
    """Score the checkpoint of the tracked run RUN_ID again, beside the real-data floor of each score."""
    from gansweep.generate import evaluate_run

    found = _reading(store, tracking_uri)
    if log_to_run:
        found.for_writing()
    uri = found.tracking_uri
    report = evaluate_run(_run_id(run_id, best, uri), uri, which=which, n_eval=n_eval, parzen=parzen,
                          device=device, data_root=data_root, log_to_run=log_to_run, any_network=any_network)
    click.echo(f"{report.variant} epoch {report.epoch} on {report.dataset}, n={report.n}, "
               f"feature net {report.feature_net} ({report.accuracy:.1%} held-out)")
    def cell(values: dict[str, float], name: str) -> str:
        return f"{values[name]:.4g}" if name in values else "-"

    rows = [[name, cell(report.scores, name), cell(report.test, name), cell(report.test_se, name),
             cell(report.floor, name)] for name in report.scores]
    click.echo(_table(["score", "validation", "test", "test s.e.", "real-data floor"], rows))


@main.command()
@click.option("--study", default=None, help="The trials of this study (its latest parent run).")
@click.option("--experiment", default=None, help="Every run of this MLflow experiment.")
@click.option("--format", "fmt", type=click.Choice(["csv", "md", "latex", "html", "json"]), default="md",
              show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write [default: standard output]; an existing file is never overwritten.")
@click.option("--group-by", default=None, help="Comma-separated columns to aggregate seeds over, e.g. variant,lr.")
@click.option("--metrics", default=None, help="Comma-separated scores [default: fid_proxy, kid_proxy, is_proxy, "
                                              "coverage, precision, recall, cond_accuracy].")
@click.option("--sort", default=None, help="Column to sort by; a score best first, '-' before it reverses "
                                           "[default: the study's objective].")
@click.option("--columns", default=None, help="Comma-separated columns to show [default for md and latex: trial, "
                                              "swept values, seed, final scores, status; all for the others].")
@_MIXED
@_store_options
def export(study: str | None, experiment: str | None, fmt: str, out: Path | None, group_by: str | None,
           metrics: str | None, sort: str | None, columns: str | None, mixed_scoring: bool, store: str | None,
           tracking_uri: str | None) -> None:
    """Write the comparison table of a study or experiment: one row per trial, or per group over seeds."""
    from gansweep.atomic import atomic_path, refuse_existing
    from gansweep.export import DEFAULT_METRICS, export_table, pick_columns, render, short_columns
    if out is not None:
        refuse_existing(out)
    names = tuple(m.strip() for m in metrics.split(",")) if metrics else DEFAULT_METRICS
    by = tuple(c.strip() for c in group_by.split(",")) if group_by else ()
    table = export_table(_reading(store, tracking_uri).tracking_uri, study, experiment, names, by, mixed_scoring,
                         sort)
    if columns is not None:
        table = pick_columns(table, [c.strip() for c in columns.split(",") if c.strip()])
    elif fmt in ("md", "latex"):
        table = pick_columns(table, short_columns(table))
    text = render(table, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    click.echo(str(out))
