"""Comparison tables read back from MLflow: one row per trial, or per group of trials aggregated over seeds.

Everything is read through MLflow's client (search_runs, metric histories) into pandas; nothing is cached
beside the store, so a table is always what the store holds now.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from gansweep.errors import ConfigError, GansweepError
from gansweep.evaluation import SCORES

__all__ = ["FORMATS", "DEFAULT_METRICS", "STATUS_LABELS", "find_runs", "study_objective", "best_row",
           "comparison_table", "group_table", "render", "export_table"]

FORMATS = ("csv", "md", "latex", "html", "json")
DEFAULT_METRICS = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy")
STATUS_LABELS = {"collapsed": "mode collapse"}  # how a gansweep.status reads in a table, where it differs
_SIGNIFICANT = 4  # digits of the numbers in md, latex and html tables; csv and json keep full precision


def find_runs(client: Any, study: str | None = None, experiment: str | None = None) -> tuple[list[Any], Any]:
    """The trial runs of the study's latest parent run (the one `gansweep study NAME` continues), or every run
    of an experiment but study parents. Returns (runs, parent run or None)."""
    if (study is None) == (experiment is None):
        raise ConfigError("give exactly one of --study NAME or --experiment NAME")
    if study is not None:
        from gansweep.tracking import study_parents

        parents = study_parents(client, study)
        if not parents:
            raise GansweepError(f"no study {study!r} in {client.tracking_uri}; run `gansweep study {study}` first")
        parent = parents[0]
        runs = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=50000)
        return runs, parent
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise GansweepError(f"no experiment {experiment!r} in {client.tracking_uri} (known: {known})")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    return [r for r in runs if r.data.tags.get("gansweep.role") != "parent"], None


def study_objective(parent: Any) -> tuple[str, str]:
    """(score name, direction) that a study's trials were ranked by, as its parent run records them."""
    direction, key = parent.data.params.get("objective", "minimize score/fid_proxy").split()
    return key.removeprefix("score/"), direction


def best_row(table: pd.DataFrame, metric: str, direction: str) -> pd.Series:
    """The row with the best value of `metric`, on the validation slice where the table has it (`NAME_val`);
    rows without a value come last."""
    column = f"{metric}_val" if f"{metric}_val" in table else metric
    order = table[column].sort_values(ascending=direction == "minimize", na_position="last", kind="stable")
    return table.loc[order.index[0]]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def comparison_table(client: Any, runs: Sequence[Any], metrics: Sequence[str] = DEFAULT_METRICS,
                     chosen_by: str | None = None) -> pd.DataFrame:
    """One row per run: identity, swept hyperparameters, each score's final value, its value at the best epoch
    (and that epoch), how the run ended, and what it cost. The best epoch is chosen on the validation slice
    (`score/NAME`); every value shown is the test slice's (`test/NAME`), so no number is the one it was chosen by.
    A score with no test value (d_overfit, measured on D's own images; runs of a gansweep before the slices) shows
    its `score/NAME`. `chosen_by` adds `NAME_val`, the final validation value that ranks runs (`best_row`).
    Scores a run does not have (cond_accuracy of an unconditional variant) are left empty; a score no run has
    gets no columns."""
    for name in metrics:
        if name not in SCORES:
            raise ConfigError(f"unknown score {name!r}; known: {', '.join(SCORES)}")
    rows = []
    for run in runs:
        tags, params, latest = run.data.tags, run.data.params, run.data.metrics
        trial = tags.get("gansweep.trial")
        row: dict[str, Any] = {"run_id": run.info.run_id, "trial": int(trial) if trial is not None else None,
                               "variant": tags.get("gansweep.variant"), "dataset": tags.get("gansweep.dataset"),
                               "seed": _number(tags.get("gansweep.seed"))}
        for key, value in sorted(params.items()):
            if key.startswith("swept.") and key not in ("swept.variant", "swept.seed"):
                row[key.removeprefix("swept.")] = _number(value)
        for name in metrics:
            chosen = client.get_metric_history(run.info.run_id, f"score/{name}")
            reported = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"test/{name}")} \
                or {m.step: m.value for m in chosen}
            if not reported:
                continue
            if name == chosen_by:
                row[f"{name}_val"] = max(chosen, key=lambda m: m.step).value
            finite = [m for m in chosen if math.isfinite(m.value) and m.step in reported]
            pick = min if SCORES[name].direction == "minimize" else max
            best = pick(finite, key=lambda m: m.value) if finite else None
            row[name] = reported[max(reported)]
            row[f"{name}_best"] = reported[best.step] if best else math.nan
            row[f"{name}_best_epoch"] = best.step if best else None
        status = tags.get("gansweep.status", run.info.status.lower())
        row["status"] = STATUS_LABELS.get(status, status)
        row["mode_collapse"] = tags.get("gansweep.mode_collapse", "")
        row["noise"] = tags.get("gansweep.noise", "")
        row["epochs"] = int(latest["progress/epoch"]) if "progress/epoch" in latest else 0
        row["wall_s"] = latest.get("perf/wall_time_s")
        row["images_per_s"] = latest.get("perf/images_per_s")
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["swept"] = sorted({k.removeprefix("swept.") for run in runs for k in run.data.params
                                   if k.startswith("swept.") and k not in ("swept.variant", "swept.seed")})
    if not table.empty and table["trial"].notna().all():
        table = table.sort_values("trial", kind="stable").reset_index(drop=True)
    return table


def group_table(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """Mean and standard deviation (n - 1) of each final score over the rows of each group, with the count."""
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ConfigError(f"cannot group by {', '.join(missing)}; columns: {', '.join(table.columns)}")
    present = [m for m in metrics if m in table.columns]
    grouped = table.groupby(list(by), dropna=False, sort=True)
    out = grouped.size().rename("n").to_frame()
    for name in present:
        out[f"{name}_mean"] = grouped[name].mean()
        out[f"{name}_std"] = grouped[name].std(ddof=1)
    return out.reset_index()


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    def fmt(value: Any) -> Any:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.{_SIGNIFICANT}g}"
        return "" if value is None else value

    return table.apply(lambda column: column.map(fmt))


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as text in `fmt`: markdown and LaTeX ready to paste, without pandas' index column."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        return json.dumps(records, indent=1, default=str) + "\n"  # full float precision; NaN as null
    shown = _rounded(table)
    if "run_id" in shown:
        shown["run_id"] = shown["run_id"].str[:8]
    if fmt == "md":
        align = ["right" if pd.api.types.is_numeric_dtype(table[c]) else "left" for c in table.columns]
        return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
    if fmt == "latex":
        styler = shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        return styler.to_latex(hrules=True)
    return shown.to_html(index=False, border=0, classes="gansweep")


def export_table(tracking_uri: str, study: str | None = None, experiment: str | None = None,
                 metrics: Sequence[str] = DEFAULT_METRICS, group_by: Sequence[str] = (),
                 mixed_scoring: bool = False) -> pd.DataFrame:
    """The table of a study or an experiment; refused when its runs were scored in different ways (see
    scoring.py), unless `mixed_scoring`."""
    from gansweep.scoring import require_one_scoring
    from gansweep.tracking import client_for

    client = client_for(tracking_uri, create=False)
    runs, _ = find_runs(client, study, experiment)
    require_one_scoring(runs, mixed_scoring)
    table = comparison_table(client, runs, metrics)
    if table.empty:
        raise GansweepError("no runs to export yet")
    return group_table(table, group_by, metrics) if group_by else table
