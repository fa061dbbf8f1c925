"""The study report: a page that puts the comparison table and the figures (figures.py) together.

The page is self-contained (its pictures embedded), so it renders the same from disk, from MLflow's artifact view and
when mailed; the pictures are also written beside it, for report.md. Everything is read from MLflow (runs, metric
histories, sample-grid artifacts), written into a new folder, and logged as artifacts of the study's parent run under
report/.
"""

from __future__ import annotations

import base64
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gansweep.atomic import refuse_file_in_path
from gansweep.errors import GansweepError
from gansweep.store import Store
from gansweep.tracking import slug as _slug
from gansweep.export import (DEFAULT_METRICS, best_row, comparison_table, find_runs, pick_columns, render,
                             short_columns, sort_table, study_objective)
from gansweep.figures import LOG_AXES, Palette, colors, contact_sheet, curves, label, sensitivity

__all__ = ["ReportOutcome", "write_report"]


@dataclass(frozen=True)
class ReportOutcome:
    directory: Path
    files: list[str]
    parent_run_id: str
    logged: bool  # also logged under report/ of the parent run (not on a read-only store)


def _new_directory(out: Path | None, study: str, store: Store) -> Path:
    """A folder that did not exist, or an empty one: an earlier report is never overwritten."""
    if out is None:
        if not store.writable():
            raise GansweepError(f"the store {store.root} is read-only; give the report a folder with -o DIR")
        out = store.reports / f"{_slug(study)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise GansweepError(f"{out} is a file; choose a folder with -o (nothing is overwritten)")
    refuse_file_in_path(out)
    if out.exists() and any(out.iterdir()):
        raise GansweepError(f"{out} is not empty; choose another folder with -o (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _page(**values: Any) -> str:
    """report.html from its Jinja2 template (templates/report.html.j2): every value escaped but the table,
    which pandas' to_html has escaped already."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("gansweep", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.get_template("report.html.j2").render(**values)


def _embedded(path: Path) -> str:
    """A picture as a data URI: the page shows it from disk, from MLflow's artifact view and when mailed."""
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _captions(row: Any, axis: str | None, metric: str, epochs: int, scores: dict[int, float]) -> list[str]:
    """A trial's grid caption at each epoch: what it ran, then its test score at that epoch."""
    what = label(row, axis, metric).splitlines()[0]
    return [f"{what}, epoch {e}: " + (f"{metric} {scores[e]:.3g}" if e in scores else "not scored")
            for e in range(1, epochs + 1)]


def _by_loss(runs: list[Any], table: Any) -> dict[str, list[str]]:
    """The table's runs by the loss they trained with: a critic's values and a probability's loss are on
    scales of their own, so each loss gets its own axes."""
    losses = {run.info.run_id: run.data.params.get("loss", "unrecorded") for run in runs}
    groups: dict[str, list[str]] = {}
    for run_id in table["run_id"]:
        groups.setdefault(f"{losses.get(run_id, 'unrecorded')} loss", []).append(run_id)
    return groups if len(groups) > 1 else {}


def _images_per_step(runs: list[Any]) -> dict[str, float]:
    """Images seen by D per G step of each run (batch size times D steps per G step), from its last epoch."""
    out = {}
    for run in runs:
        seen, steps = run.data.metrics.get("progress/images_seen"), run.data.metrics.get("progress/g_steps")
        if seen and steps:
            out[run.info.run_id] = seen / steps
    return out


def write_report(store: Store, study: str, out: Path | None = None, mixed_scoring: bool = False) -> ReportOutcome:
    """Write the report of the study's latest parent run into a new folder and log it to that parent run, unless
    the store is read-only. Refused when its trials were scored in different ways, unless `mixed_scoring`."""
    from gansweep.scoring import require_one_scoring
    from gansweep.tracking import client_for

    client = client_for(store.tracking_uri, create=False)
    runs, parent, _ = find_runs(client, study=study)
    require_one_scoring(runs, mixed_scoring)
    metric, direction = study_objective(parent)
    table = comparison_table(client, runs, list(dict.fromkeys([metric, *DEFAULT_METRICS])), chosen_by=metric)
    if table.empty or metric not in table:
        raise GansweepError(f"study {study!r} has no scored trials yet")
    directory = _new_directory(out, study, store)
    varied = [name for name in table.attrs["swept"] if table[name].nunique(dropna=True) > 1]
    axis = next((name for name in varied if name in LOG_AXES), varied[0] if varied else None)
    variant_colors = colors(sorted(table["variant"].dropna().unique()))
    palette = Palette(table, axis, variant_colors)
    # the floors are on the parent; a study of an earlier gansweep has them on every run
    constants = parent.data.metrics if f"floor/{metric}" in parent.data.metrics else runs[0].data.metrics
    floor = (constants.get(f"floor/{metric}", math.nan), constants.get(f"floor_sd/{metric}", math.nan))

    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    finals: dict[str, Path] = {}
    frames: dict[str, list[str]] = {}
    for run_id in table["run_id"]:
        histories[run_id] = {name: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name),
                                                                        key=lambda m: m.step)]
                             for name in (f"test/{metric}", "loss/d", "loss/g")}
        grids = sorted(a.path for a in client.list_artifacts(run_id, "samples") if a.path.endswith(".png"))
        if grids:
            local = Path(client.download_artifacts(run_id, "samples", str(directory / "grids" / run_id[:8])))
            frames[run_id] = [f"grids/{run_id[:8]}/samples/{Path(g).name}" for g in grids]
            finals[run_id] = local / Path(grids[-1]).name

    better = "lower" if direction == "minimize" else "higher"
    sensitivity(table, axis, metric, variant_colors, directory / "sensitivity.png", floor[0])
    curves(histories, table, [f"test/{metric}"], palette, "epoch", directory / "scores.png", floor=floor,
           better=better)
    curves(histories, table, ["loss/d", "loss/g"], palette, "images seen by D", directory / "losses.png",
           smooth=True, groups=_by_loss(runs, table), x_per_step=_images_per_step(runs))
    in_order = table.sort_values(["variant", *([axis] if axis else []), "seed", "trial"], kind="stable")
    contact_sheet(in_order, finals, axis, metric, directory / "contact_sheet.png")

    best = None
    scored = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    if not scored.empty:
        row = best_row(scored, metric, direction)
        gif = directory / "grids" / row["run_id"][:8] / "samples" / "grids.gif"
        if gif.exists():
            shutil.copyfile(gif, directory / "best.gif")
            best = {"trial": row["trial"], "variant": row["variant"], "score": f"{row[metric]:.4g}",
                    "gif": _embedded(directory / "best.gif")}

    grids = {rid[:8]: {"frames": [_embedded(directory / p) for p in paths],
                       "captions": _captions(table[table["run_id"] == rid].iloc[0], axis, metric, len(paths),
                                             dict(histories[rid][f"test/{metric}"]))}
             for rid, paths in frames.items()}
    ranked = sort_table(table, metric)  # as `export` shows the study: best first, the same columns
    ranked = pick_columns(ranked, short_columns(ranked))
    (directory / "report.html").write_text(_page(
        study=study, description=parent.data.params.get("description", ""),
        table=render(ranked, "html"),
        objective=metric, better=better, best=best, grids=grids,
        max_epoch=max((len(p) for p in frames.values()), default=1),
        colour=f"{axis} (line style: variant)" if palette.numeric else "variant",
        pictures={name: _embedded(directory / f"{name}.png")
                  for name in ("sensitivity", "scores", "losses", "contact_sheet")}))
    pictures = ["sensitivity.png", "scores.png", "losses.png", "contact_sheet.png"] + \
        (["best.gif"] if best else [])
    markdown = [f"# gansweep study {study}", "", parent.data.params.get("description", ""), "",
                render(ranked, "md"), ""]
    markdown += [f"![{Path(p).stem}]({p})" for p in pictures]
    (directory / "report.md").write_text("\n".join(markdown) + "\n")
    logged = store.writable()
    if logged:
        client.log_artifacts(parent.info.run_id, str(directory), "report")
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return ReportOutcome(directory, files, parent.info.run_id, logged)
