"""The study report: a page that puts the comparison table and the figures (figures.py) together.

The page is self-contained (its pictures embedded), so it renders the same from disk, from MLflow's artifact view and
when mailed; the pictures are also written beside it, for report.md. Everything is read from MLflow (runs, metric
histories, sample-grid artifacts), written into a new folder, and logged as artifacts of the study's parent run under
report/.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gansweep.errors import GansweepError
from gansweep.store import Store
from gansweep.tracking import slug as _slug
from gansweep.export import (DEFAULT_METRICS, best_row, comparison_table, find_runs, pick_columns, render,
                             short_columns, study_objective)
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
    if out.exists() and any(out.iterdir()):
        raise GansweepError(f"{out} is not empty; choose another folder with -o (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


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
  for (const [id, grid] of Object.entries(grids)) {{
    const e = Math.min(epoch, grid.frames.length);
    if (e > 0) {{
      document.getElementById("grid-" + id).src = grid.frames[e - 1];
      document.getElementById("caption-" + id).textContent = grid.captions[e - 1];
    }}
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
<h2>Sensitivity</h2><img class="plot" src="{sensitivity}" alt="sensitivity">
<p>{objective} on the test slice after training ({better} is better): the mean over seeds, the band one standard
deviation over seeds either side; x marks a trial that diverged, collapsed or was pruned.</p>
<h2>Scores over epochs</h2><img class="plot" src="{scores}" alt="scores over epochs">
<p>{objective} on the test slice after every epoch, a line per trial coloured by {colour}. The dashed line is the
real-data floor (training images against the test slice), the grey band its standard deviation over draws.</p>
<h2>Losses</h2><img class="plot" src="{losses}" alt="loss curves">
<p>Each trial's losses, smoothed (an exponential moving average); the raw values are the faint lines behind.</p>
<h2>Final samples of every trial</h2><img class="plot" src="{contact_sheet}" alt="contact sheet">
{best}
{slider}
</body></html>
"""


def _embedded(path: Path) -> str:
    """A picture as a data URI: the page shows it from disk, from MLflow's artifact view and when mailed."""
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _captions(row: Any, axis: str | None, metric: str, epochs: int, scores: dict[int, float]) -> list[str]:
    """A trial's grid caption at each epoch: what it ran, then its test score at that epoch."""
    what = label(row, axis, metric).splitlines()[0]
    return [f"{what}, epoch {e}: " + (f"{metric} {scores[e]:.3g}" if e in scores else "not scored")
            for e in range(1, epochs + 1)]


def write_report(store: Store, study: str, out: Path | None = None, mixed_scoring: bool = False) -> ReportOutcome:
    """Write the report of the study's latest parent run into a new folder and log it to that parent run, unless
    the store is read-only. Refused when its trials were scored in different ways, unless `mixed_scoring`."""
    from gansweep.scoring import require_one_scoring
    from gansweep.tracking import client_for

    client = client_for(store.tracking_uri, create=False)
    runs, parent = find_runs(client, study=study)
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
    latest = runs[0].data.metrics
    floor = (latest.get(f"floor/{metric}", math.nan), latest.get(f"floor_sd/{metric}", math.nan))

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

    sensitivity(table, axis, metric, variant_colors, directory / "sensitivity.png", floor[0])
    curves(histories, table, [f"test/{metric}"], palette, "epoch", directory / "scores.png", floor=floor)
    curves(histories, table, ["loss/d", "loss/g"], palette, "G step", directory / "losses.png", smooth=True)
    contact_sheet(table, finals, axis, metric, directory / "contact_sheet.png")

    best_html = ""
    scored = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    if not scored.empty:
        best = best_row(scored, metric, direction)
        gif = directory / "grids" / best["run_id"][:8] / "samples" / "grids.gif"
        if gif.exists():
            shutil.copyfile(gif, directory / "best.gif")
            best_html = (f"<h2>Best trial over epochs</h2><p>trial {best['trial']} ({best['variant']}), "
                         f"{metric} {best[metric]:.4g}</p><img src=\"{_embedded(directory / 'best.gif')}\" "
                         f"alt=\"best trial\">")

    grids = {rid[:8]: {"frames": [_embedded(directory / p) for p in paths],
                       "captions": _captions(table[table["run_id"] == rid].iloc[0], axis, metric, len(paths),
                                             dict(histories[rid][f"test/{metric}"]))}
             for rid, paths in frames.items()}
    cells = "".join(f'<figure><img id="grid-{rid}" src="{grid["frames"][-1]}" width="180">'
                    f'<figcaption id="caption-{rid}">{html.escape(grid["captions"][-1])}</figcaption></figure>'
                    for rid, grid in grids.items())
    max_epoch = max((len(p) for p in frames.values()), default=1)
    slider = _SLIDER.format(max_epoch=max_epoch, cells=cells, grids=json.dumps(grids))
    description = html.escape(parent.data.params.get("description", ""))
    (directory / "report.html").write_text(_PAGE.format(
        title=f"gansweep study {html.escape(study)}", description=description, table=render(pick_columns(table, short_columns(table)), "html"),
        best=best_html, slider=slider, objective=html.escape(metric),
        better="lower" if direction == "minimize" else "higher",
        colour=html.escape(f"{axis} (line style: variant)" if palette.numeric else "variant"),
        **{name: _embedded(directory / f"{name}.png") for name in ("sensitivity", "scores", "losses",
                                                                   "contact_sheet")}))
    pictures = ["sensitivity.png", "scores.png", "losses.png", "contact_sheet.png"] + \
        (["best.gif"] if best_html else [])
    markdown = [f"# gansweep study {study}", "", parent.data.params.get("description", ""), "",
                render(table.drop(columns=["mode_collapse", "noise"]), "md"), ""]
    markdown += [f"![{Path(p).stem}]({p})" for p in pictures]
    (directory / "report.md").write_text("\n".join(markdown) + "\n")
    logged = store.writable()
    if logged:
        client.log_artifacts(parent.info.run_id, str(directory), "report")
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return ReportOutcome(directory, files, parent.info.run_id, logged)
