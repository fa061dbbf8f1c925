"""The `gansweep` command: a thin click layer over the library.

torch and everything that imports it load inside the commands, so `gansweep --help` answers at once.
Errors caused by input (GansweepError) become one `Error: ...` line and exit code 2, translated once, by the
group (`cli_options.Group`). The commands that load a run's checkpoint live in `cli_checkpoints`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from gansweep import __version__
from gansweep.cli_checkpoints import evaluate, interpolate, sample
from gansweep.cli_options import MIXED, Group, InputError, plain_table, reading, store_flags, store_options
from gansweep.store import resolve_store  # light: no torch, mlflow or optuna

__all__ = ["main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gansweep")
def main() -> None:
    """Train, sweep and compare GAN variants."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is for results
    # MLflow's database layer logs each error it raises with a traceback (a full disk: dozens); gansweep says
    # what went wrong in one line, and a new store's "Creating initial MLflow database tables" is no news
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


@main.command("list")
@click.argument("what", type=click.Choice(["variants", "datasets", "studies"]))
def list_(what: str) -> None:
    """List the registered variants, datasets or study files, one line each."""
    if what == "studies":
        from gansweep.catalog import list_studies

        rows = [[f.name, f.spec.sampler, ",".join(f.spec.variants), str(f.path), f.spec.description] if f.spec else
                [f.name, "-", "-", str(f.path), f"broken: {f.error}"] for f in list_studies()]
        click.echo(plain_table(["study", "sampler", "variants", "file", "description"], rows))
    elif what == "variants":
        from gansweep.variants import VARIANTS

        rows = [[v.name, v.arch, v.loss, v.regularizer, v.conditioning, v.summary] for v in VARIANTS.values()]
        click.echo(plain_table(["variant", "arch", "loss", "regularizer", "conditioning", "description"], rows))
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
        click.echo(plain_table(["dataset", "classes", "feature net (held-out acc.)", "description"], rows))


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
@store_options
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
        click.echo("scores (validation slice): " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    click.echo(f"MLflow run {outcome.run_id} in {outcome.tracking_uri}")
    flags = store_flags(store, tracking_uri)
    click.echo(f"next: gansweep sample {outcome.run_id}{flags}   |   gansweep ui{flags}  ->  "
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
@store_options
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
    again = outcome.table.attrs.get("replaced", 0)
    click.echo(f"\nstudy {outcome.optuna_study}: {outcome.ran} trial(s) run now, {len(outcome.table)} in all"
               + (f"; the table leaves out {again} earlier attempt(s) that stopped early and were run again"
                  if again else ""))
    click.echo(f"MLflow: {outcome.tracking_uri}  (parent run {outcome.parent_run_id})")
    click.echo(f"Optuna: {outcome.storage}")
    url = experiment_url("127.0.0.1", 5000, outcome.experiment_id, view_key(outcome.spec.name))
    click.echo(f"browse: gansweep ui{store_flags(options['store'], options['tracking_uri'])}  ->  {url}")
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
@store_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes; one is plenty for one "
                                                                         "person and starts fastest.")
def ui(store: str | None, tracking_uri: str | None, host: str, port: int, workers: int) -> None:
    """Start the MLflow UI on the store that studies and runs write to."""
    from gansweep.ui import serve_ui, ui_links

    if not 1 <= port <= 65535 or not 1 <= workers <= 64:
        raise InputError(f"--port must be in [1, 65535] and --workers in [1, 64], got {port} and {workers}")
    uri = reading(store, tracking_uri).tracking_uri
    if uri.startswith(("http://", "https://")):
        raise InputError(f"{uri} is a tracking server already; open it in a browser")
    for line in ui_links(uri, host, port):
        click.echo(line)
    click.echo(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C stops it)")
    raise SystemExit(serve_ui(uri, host, port, workers))


@main.command()
@click.argument("study")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="New or empty folder [default STORE/reports/STUDY-TIME; STORE is ./mlruns unless given].")
@MIXED
@store_options
def report(study: str, out: Path | None, mixed_scoring: bool, store: str | None, tracking_uri: str | None) -> None:
    """Write the report of STUDY (plots, contact sheet, report.html/.md) and log it to the study's parent run."""
    from gansweep.report import write_report

    outcome = write_report(reading(store, tracking_uri), study, out, mixed_scoring)
    logged = (f"also under report/ in parent run {outcome.parent_run_id}" if outcome.logged
              else "the store is read-only: not logged to the parent run")
    click.echo(f"{outcome.directory / 'report.html'}  ({len(outcome.files)} files; {logged})")


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
@MIXED
@store_options
def export(study: str | None, experiment: str | None, fmt: str, out: Path | None, group_by: str | None,
           metrics: str | None, sort: str | None, columns: str | None, mixed_scoring: bool, store: str | None,
           tracking_uri: str | None) -> None:
    """Write the comparison table of a study or experiment: one row per point (its latest trial) or
    per run, or per group over seeds."""
    from gansweep.atomic import atomic_path, refuse_existing
    from gansweep.export import DEFAULT_METRICS, export_table, pick_columns, render, short_columns
    if out is not None:
        refuse_existing(out)
    names = _names("--metrics", metrics) if metrics is not None else DEFAULT_METRICS
    by = _names("--group-by", group_by) if group_by is not None else ()
    table = export_table(reading(store, tracking_uri).tracking_uri, study, experiment, names, by, mixed_scoring,
                         sort)
    absent = [m for m in names if m not in table and f"{m}_mean" not in table]
    if metrics is not None and absent:
        click.echo(f"note: no run here has {', '.join(absent)}, so the table has no column for it", err=True)
    if table.attrs["replaced"]:
        click.echo(f"note: {table.attrs['replaced']} run(s) that stopped early and whose point was run again are "
                   f"left out; each point shows its latest run", err=True)
    if columns is not None:
        table = pick_columns(table, _names("--columns", columns))
    elif fmt in ("md", "latex"):
        table = pick_columns(table, short_columns(table))
    text = render(table, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    click.echo(str(out))


def _names(option: str, text: str) -> tuple[str, ...]:
    """A comma-separated list of names: at least one, none twice."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"{option} names nothing; give comma-separated names")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{option} names {', '.join(twice)} twice")
    return names


for command in (sample, interpolate, evaluate):
    main.add_command(command)
