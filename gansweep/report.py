"""The study report: plots, a contact sheet and a page that puts the comparison table and the pictures together.

Everything is read from MLflow (runs, metric histories, sample-grid artifacts), written into a new folder, and
logged as artifacts of the study's parent run under report/.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gansweep.errors import GansweepError
from gansweep.store import Store
from gansweep.tracking import slug as _slug
from gansweep.export import best_row, comparison_table, find_runs, render, study_objective

__all__ = ["ReportOutcome", "write_report"]

_LOG_AXES = ("lr", "lr_g", "lr_d")  # swept names drawn on a log axis
_MAX_GRID_VALUES = 12  # more distinct values than this on the swept axis: drawn as points
_FAILED = ("diverged", "mode collapse", "pruned", "failed", "interrupted")
_STYLE = {"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
          "axes.spines.right": False, "font.size": 9}


@dataclass(frozen=True)
class ReportOutcome:
    directory: Path
    files: list[str]
    parent_run_id: str
    logged: bool  # also logged under report/ of the parent run (not on a read-only store)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    return plt


def _colors(variants: list[str]) -> dict[str, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {v: cycle(i % 10) for i, v in enumerate(variants)}


def _new_directory(out: Path | None, study: str, store: Store) -> Path:
    """A folder that did not exist, or an empty one: an earlier report is never overwritten."""
    if out is None:
        if not store.writable():
            raise GansweepError(f"the store {store.root} is read-only; give the report a folder with -o DIR")
        out = store.reports / f"{_slug(study)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise GansweepError(f"{out} is a file; choose a folder with -o (nothing is overwritten)")
    if out.exists() and any(out.iterdir()):
        raise GansweepError(f"{out} is not empty; choose another folder with -o (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _sensitivity(table: pd.DataFrame, axis: str | None, metric: str, colors: dict[str, Any], path: Path) -> None:
    """Objective against the swept value, a line per variant with the seed spread as a band; failed trials
    are marked with an x at the top of the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    failed = table[table["status"].isin(_FAILED)]
    if axis is None:  # no swept value (a variant shootout): one box per variant
        groups = [(v, table[(table["variant"] == v)][metric].dropna()) for v in colors]
        ax.boxplot([g.values if len(g) else [math.nan] for _, g in groups], tick_labels=[v for v, _ in groups])
        ax.set_xlabel("variant")
    else:
        sampled = table[axis].nunique() > _MAX_GRID_VALUES  # a random or TPE search: points, not a curve
        for variant, color in colors.items():
            rows = table[table["variant"] == variant]
            if sampled:
                ax.scatter(rows[axis], rows[metric], color=color, label=variant, s=18)
                continue
            stats = rows.groupby(axis)[metric].agg(["mean", "std", "count"]).reset_index().sort_values(axis)
            ax.plot(stats[axis], stats["mean"], marker="o", color=color, label=variant)
            band = stats["std"].fillna(0)
            ax.fill_between(stats[axis], stats["mean"] - band, stats["mean"] + band, color=color, alpha=0.2)
        for _, row in failed.iterrows():
            ax.plot(row[axis], 1.0, marker="x", color=colors.get(row["variant"], "k"), markersize=9,
                    transform=ax.get_xaxis_transform(), clip_on=False, linestyle="none")
        if axis in _LOG_AXES:
            ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.legend(title="variant (x: diverged/collapsed/pruned)", fontsize=8)
    values = table[metric].dropna()
    if len(values) and (values > 0).all() and values.max() > 30 * values.min():
        ax.set_yscale("log")  # distances spanning orders of magnitude
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} after training, mean and seed spread")
    fig.savefig(path)
    plt.close(fig)


def _curves(histories: dict[str, dict[str, list[tuple[int, float]]]], table: pd.DataFrame, names: list[str],
            colors: dict[str, Any], xlabel: str, path: Path) -> None:
    """One panel per metric, every trial a thin line coloured by its variant."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for _, row in table.iterrows():
            points = histories.get(row["run_id"], {}).get(name)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=colors[row["variant"]], linewidth=0.9, alpha=0.7)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    handles = [plt.Line2D([], [], color=c, label=v) for v, c in colors.items()]
    axes[0][-1].legend(handles=handles, fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def _label(row: pd.Series, axis: str | None, metric: str) -> str:
    swept = f"{axis}={row[axis]:g}" if axis and isinstance(row[axis], numbers.Number) else ""
    score = f"{metric} {row[metric]:.3g}" if isinstance(row.get(metric), float) and math.isfinite(row[metric]) \
        else row["status"]
    return f"#{row['trial']} {row['variant']} {swept} s{row['seed']}\n{score}"


def _contact_sheet(table: pd.DataFrame, finals: dict[str, Path], axis: str | None, metric: str, path: Path) -> None:
    """The final sample grid of every trial side by side, each labelled with what it ran and how it scored."""
    from PIL import Image

    plt = _plt()
    rows_with_grid = [row for _, row in table.iterrows() if row["run_id"] in finals]
    n = max(len(rows_with_grid), 1)
    columns = min(n, max(3, math.ceil(math.sqrt(n * 1.3))))
    lines = math.ceil(n / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.4 * columns, 2.75 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows_with_grid):
        ax.imshow(Image.open(finals[row["run_id"]]))
        ax.set_title(_label(row, axis, metric), fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_SLIDER = """<h2>Samples at matching epochs</h2>
<p>Every trial's fixed-noise grid at the same epoch; the slider moves them all.</p>
<input type="range" id="epoch" min="1" max="{max_epoch}" value="{max_epoch}" style="width:60%">
<span id="epoch-label">epoch {max_epoch}</span>
<div class="grids">{cells}</div>
<script>
const grids = {grids};
const slider = document.getElementById("epoch");
function show(epoch) {{
  document.getElementById("epoch-label").textContent = "epoch " + epoch;
  for (const [id, frames] of Object.entries(grids)) {{
    const img = document.getElementById("grid-" + id);
    const e = Math.min(epoch, frames.length);
    if (e > 0) img.src = frames[e - 1];
  }}
}}
slider.addEventListener("input", () => show(Number(slider.value)));
</script>
"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table.gansweep {{ border-collapse: collapse; font-size: 12px; }}
table.gansweep td, table.gansweep th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
.grids {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.grids figure {{ margin: 0; text-align: center; font-size: 11px; }}
img.plot {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>{description}</p>
<h2>Trials</h2>
{table}
<h2>Sensitivity</h2><img class="plot" src="sensitivity.png" alt="sensitivity">
<h2>Scores over epochs</h2><img class="plot" src="scores.png" alt="scores over epochs">
<h2>Losses</h2><img class="plot" src="losses.png" alt="loss curves">
<h2>Final samples of every trial</h2><img class="plot" src="contact_sheet.png" alt="contact sheet">
{best}
{slider}
</body></html>
"""


def write_report(store: Store, study: str, out: Path | None = None, mixed_scoring: bool = False) -> ReportOutcome:
    """Write the report of the study's latest parent run into a new folder and log it to that parent run, unless
    the store is read-only. Refused when its trials were scored in different ways, unless `mixed_scoring`."""
    from gansweep.scoring import require_one_scoring
    from gansweep.tracking import client_for

    client = client_for(store.tracking_uri, create=False)
    runs, parent = find_runs(client, study=study)
    require_one_scoring(runs, mixed_scoring)
    table = comparison_table(client, runs)
    if table.empty:
        raise GansweepError(f"study {study!r} has no trials yet")
    directory = _new_directory(out, study, store)
    metric, direction = study_objective(parent)
    varied = [name for name in table.attrs["swept"] if table[name].nunique(dropna=True) > 1]
    axis = next((name for name in varied if name in _LOG_AXES), varied[0] if varied else None)
    colors = _colors(sorted(table["variant"].dropna().unique()))

    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    finals: dict[str, Path] = {}
    frames: dict[str, list[str]] = {}
    for run_id in table["run_id"]:
        histories[run_id] = {name: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name),
                                                                        key=lambda m: m.step)]
                             for name in (f"score/{metric}", "loss/d", "loss/g")}
        grids = sorted(a.path for a in client.list_artifacts(run_id, "samples") if a.path.endswith(".png"))
        if grids:
            local = Path(client.download_artifacts(run_id, "samples", str(directory / "grids" / run_id[:8])))
            frames[run_id] = [f"grids/{run_id[:8]}/samples/{Path(g).name}" for g in grids]
            finals[run_id] = local / Path(grids[-1]).name

    _sensitivity(table, axis, metric, colors, directory / "sensitivity.png")
    _curves(histories, table, [f"score/{metric}"], colors, "epoch", directory / "scores.png")
    _curves(histories, table, ["loss/d", "loss/g"], colors, "G step", directory / "losses.png")
    _contact_sheet(table, finals, axis, metric, directory / "contact_sheet.png")

    best_html = ""
    scored = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    if not scored.empty:
        best = best_row(scored, metric, direction)
        gif = directory / "grids" / best["run_id"][:8] / "samples" / "grids.gif"
        if gif.exists():
            shutil.copyfile(gif, directory / "best.gif")
            best_html = (f"<h2>Best trial over epochs</h2><p>trial {best['trial']} ({best['variant']}), "
                         f"{metric} {best[metric]:.4g}</p><img src=\"best.gif\" alt=\"best trial\">")

    cells = "".join(f'<figure><img id="grid-{rid[:8]}" src="{paths[-1]}" width="180"><figcaption>'
                    f"{html.escape(_label(table[table['run_id'] == rid].iloc[0], axis, metric))}"
                    f"</figcaption></figure>" for rid, paths in frames.items())
    max_epoch = max((len(p) for p in frames.values()), default=1)
    slider = _SLIDER.format(max_epoch=max_epoch, cells=cells,
                            grids=json.dumps({rid[:8]: paths for rid, paths in frames.items()}))
    description = html.escape(parent.data.params.get("description", ""))
    (directory / "report.html").write_text(_PAGE.format(title=f"gansweep study {html.escape(study)}",
                                                        description=description, table=render(table, "html"),
                                                        best=best_html, slider=slider))
    pictures = ["sensitivity.png", "scores.png", "losses.png", "contact_sheet.png"] + \
        (["best.gif"] if best_html else [])
    markdown = [f"# gansweep study {study}", "", parent.data.params.get("description", ""), "",
                render(table.drop(columns=["mode_collapse"]), "md"), ""]
    markdown += [f"![{Path(p).stem}]({p})" for p in pictures]
    (directory / "report.md").write_text("\n".join(markdown) + "\n")
    logged = store.writable()
    if logged:
        client.log_artifacts(parent.info.run_id, str(directory), "report")
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return ReportOutcome(directory, files, parent.info.run_id, logged)
