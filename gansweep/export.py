"""Comparison tables read back from MLflow: one row per point of a study (its latest trial) or per run of an
experiment, or per group of them aggregated over seeds.

Everything is read through MLflow's client (search_runs, metric histories) into pandas; nothing is cached
beside the store, so a table is always what the store holds now.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import pandas as pd

from gansweep.attempts import replaced
from gansweep.errors import ConfigError, GansweepError
from gansweep.scores import SCORES

__all__ = ["FORMATS", "DEFAULT_METRICS", "STATUS_LABELS", "FoundRuns", "find_runs", "study_objective", "best_row",
           "comparison_table", "group_table", "sort_table", "short_columns", "pick_columns", "rounded", "render",
           "export_table", "short_value"]

FORMATS = ("csv", "md", "latex", "html", "json")
DEFAULT_METRICS = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy")
STATUS_LABELS = {"collapsed": "mode collapse"}  # how a gansweep.status reads in a table, where it differs
_SIGNIFICANT = 4  # digits of the numbers in md, latex and html tables; csv and json keep full precision


class FoundRuns(NamedTuple):
    runs: list[Any]  # each point's latest attempt (see attempts.py)
    parent: Any  # the study's parent run, or None for an experiment
    replaced: int  # earlier attempts of points that were run again, left out of `runs`


def find_runs(client: Any, study: str | None = None, experiment: str | None = None) -> FoundRuns:
    """The trial runs of the study's latest parent run (the one `gansweep study NAME` continues), or every run
    of an experiment but study parents; of a study's point, only its latest attempt."""
    if (study is None) == (experiment is None):
        raise ConfigError("give exactly one of --study NAME or --experiment NAME")
    parent = None
    if study is not None:
        from gansweep.tracking import study_names, study_parents

        parents = study_parents(client, study)
        if not parents:
            names = study_names(client)
            close = difflib.get_close_matches(study, names, n=1, cutoff=0.5)
            raise GansweepError(f"no study {study!r} in {client.tracking_uri}; "
                                + (f"did you mean {close[0]!r}?" if close else
                                   f"it holds {', '.join(names)}" if names else f"run `gansweep study {study}` first"))
        parent = parents[0]
        runs = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=50000)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise GansweepError(f"no experiment {experiment!r} in {client.tracking_uri} (known: {known})")
        runs = [r for r in client.search_runs([found.experiment_id], max_results=50000)
                if r.data.tags.get("gansweep.role") != "parent"]
    gone = replaced([(_point(run), _trial(run), run.data.tags.get("gansweep.status")) for run in runs])
    return FoundRuns([run for i, run in enumerate(runs) if i not in gone], parent, len(gone))


def _trial(run: Any) -> int | None:
    trial = run.data.tags.get("gansweep.trial")
    return int(trial) if trial is not None else None


def _point(run: Any) -> tuple[Any, ...]:
    """What a study's trial trained: its study, variant, seed and swept values."""
    tags = run.data.tags
    return (tags.get("gansweep.optuna_study"), tags.get("gansweep.variant"), tags.get("gansweep.seed"),
            tuple(sorted((k, v) for k, v in run.data.params.items() if k.startswith("swept."))))


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
    its `score/NAME`. `NAME_se` is the final value's standard error over the run's samples (`test_se/NAME` or
    `se/NAME`, beside the value it belongs to). `chosen_by` adds `NAME_val`, the final validation value that
    ranks runs (`best_row`).
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
            reported = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"test/{name}")}
            error = f"test_se/{name}"
            if not reported:
                reported, error = {m.step: m.value for m in chosen}, f"se/{name}"
            if not reported:
                continue
            if name == chosen_by:
                row[f"{name}_val"] = max(chosen, key=lambda m: m.step).value
            finite = [m for m in chosen if math.isfinite(m.value) and m.step in reported]
            pick = min if SCORES[name].direction == "minimize" else max
            best = pick(finite, key=lambda m: m.value) if finite else None
            row[name] = reported[max(reported)]
            row[f"{name}_se"] = latest.get(error, math.nan)  # the latest step's, which is the final value's
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
    """Mean and standard deviation (n - 1) of each final score over the rows of each group: `n` rows in the
    group, `NAME_n` the values the mean and spread use (a diverged or unscored run has none), and `not_finished`
    how many of the group's runs ended otherwise than finished. `NAME_se` is the mean's standard error from the
    runs' own standard errors, sqrt(sum se^2) / n: how far the evaluation's sampling alone moves the mean, beside
    `NAME_std`, which is the spread over seeds (training and evaluation together). It is empty where a run's
    value has no standard error (an earlier gansweep's runs)."""
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ConfigError(f"cannot group by {', '.join(missing)}; columns: {', '.join(table.columns)}")
    present = [m for m in metrics if m in table.columns]
    grouped = table.groupby(list(by), dropna=False, sort=True)
    out = grouped.size().rename("n").to_frame()
    if "status" in table:
        out["not_finished"] = grouped["status"].agg(lambda s: int((s != "finished").sum()))
    for name in present:
        out[f"{name}_n"] = grouped[name].count()
        out[f"{name}_mean"] = grouped[name].mean()
        out[f"{name}_std"] = grouped[name].std(ddof=1)
        if f"{name}_se" in table:
            out[f"{name}_se"] = _mean_se(table, by, name)
    return out.reset_index()


def _mean_se(table: pd.DataFrame, by: Sequence[str], name: str) -> pd.Series:
    counted = table[name].notna()
    errors = table[f"{name}_se"].where(counted)
    parts = pd.DataFrame({"square": errors ** 2, "count": counted, "lacking": counted & errors.isna()})
    sums = parts.groupby([table[c] for c in by], dropna=False, sort=True).sum()
    return (sums["square"] ** 0.5 / sums["count"]).where((sums["count"] > 0) & (sums["lacking"] == 0))


def sort_table(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows by `column`: a score's own columns best first (by the score's direction), any other ascending; a
    leading '-' reverses. Rows without a value come last."""
    name = column.removeprefix("-")
    if name not in table:
        raise ConfigError(f"cannot sort by {name!r}; columns: {', '.join(table.columns)}")
    score = next((s for s in SCORES if name == s or name.startswith(f"{s}_")
                  and name.removeprefix(f"{s}_") in ("val", "best", "mean")), None)
    ascending = score is None or SCORES[score].direction == "minimize"
    if column.startswith("-"):
        ascending = not ascending
    return table.sort_values(name, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def short_columns(table: pd.DataFrame) -> list[str]:
    """The columns a table on a page keeps: who the run is, what was swept, each score's final value, how it
    ended; the best-epoch columns, costs and notes are left to csv, json and --columns."""
    swept = table.attrs.get("swept", [])
    # a grouped table has no score's own column; its kid_proxy_std is the spread of kid_proxy, not that score
    scores = [s for s in SCORES if s in table and "n" not in table]
    keep = ["trial", "variant", *swept, "seed", *scores, "status", "epochs", "run_id"]
    grouped = [c for c in table.columns if c == "n" or c == "not_finished" or c.endswith(("_mean", "_std"))
               or "n" in table and c.endswith("_se")]
    return [c for c in dict.fromkeys(keep + grouped) if c in table]


def pick_columns(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    if not columns:
        raise ConfigError(f"--columns names no column; columns: {', '.join(table.columns)}")
    unknown = [c for c in columns if c not in table]
    if unknown:
        raise ConfigError(f"no column {', '.join(map(repr, unknown))}; columns: {', '.join(table.columns)}")
    picked = table[list(columns)]
    picked.attrs = dict(table.attrs)
    return picked


def _exponent(value: float, digits: int) -> str:
    """`value` to `digits` significant digits in the exponent style of learning rates, 3e-4 (a zero as 0)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def short_value(value: Any) -> str:
    """A swept value as a person writes it in a name: 3e-4, 0.5, 5."""
    if not isinstance(value, float):
        return str(value)
    return _exponent(value, 3) if abs(value) < 1e-2 else f"{value:.3g}"


def _formatter(column: pd.Series) -> Any:
    """One format for a whole numeric column, so its numbers line up and compare: small values (learning rates)
    in one exponent style (a zero as 0), large ones as plain whole numbers, the rest to four significant digits."""
    finite = [abs(v) for v in column if isinstance(v, float) and math.isfinite(v) and v != 0]
    if finite and max(finite) < 1e-2:
        def fmt(v: float) -> str:
            return _exponent(v, _SIGNIFICANT)
    elif finite and min(finite) >= 10 ** _SIGNIFICANT:
        def fmt(v: float) -> str:
            return f"{v:.0f}"
    else:
        def fmt(v: float) -> str:
            return f"{v:.{_SIGNIFICANT}g}" if abs(v) < 10 ** _SIGNIFICANT else f"{v:.0f}"
    return fmt


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text, one format per numeric column (see `_formatter`); an empty cell for a missing value."""
    def column_text(column: pd.Series) -> pd.Series:
        fmt = _formatter(column)

        def cell(value: Any) -> Any:
            if isinstance(value, float):
                return "" if math.isnan(value) else fmt(value)
            return "" if value is None else value

        return column.map(cell)

    return table.apply(column_text)


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as text in `fmt`: markdown and LaTeX ready to paste (numeric columns right-aligned), without
    pandas' index column."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        return json.dumps(records, indent=1, default=str) + "\n"  # full float precision; NaN as null
    shown = rounded(table)
    if "run_id" in shown:
        shown["run_id"] = shown["run_id"].str[:8]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    if fmt == "md":
        align = ["right" if n else "left" for n in numeric]
        return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
    if fmt == "latex":
        styler = shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        return styler.to_latex(hrules=True, column_format="".join("r" if n else "l" for n in numeric))
    return shown.to_html(index=False, border=0, classes="gansweep")


def export_table(tracking_uri: str, study: str | None = None, experiment: str | None = None,
                 metrics: Sequence[str] = DEFAULT_METRICS, group_by: Sequence[str] = (),
                 mixed_scoring: bool = False, sort: str | None = None) -> pd.DataFrame:
    """The table of a study or an experiment, sorted by `sort` (default: the study's objective, or the first of
    `metrics` present, best first); refused when its runs were scored in different ways (see scoring.py), unless
    `mixed_scoring`. `attrs["replaced"]`: how many earlier attempts of points run again it leaves out."""
    from gansweep.scoring import require_one_scoring
    from gansweep.tracking import client_for

    client = client_for(tracking_uri, create=False)
    runs, parent, again = find_runs(client, study, experiment)
    require_one_scoring(runs, mixed_scoring)
    table = comparison_table(client, runs, metrics)
    if table.empty:
        raise GansweepError("no runs to export yet")
    swept = table.attrs.get("swept", [])
    if group_by:
        table = group_table(table, group_by, metrics)
    if sort is None:
        objective = study_objective(parent)[0] if parent is not None else None
        present = [m for m in ([objective] if objective else []) + list(metrics)
                   if (f"{m}_mean" if group_by else m) in table]
        sort = (f"{present[0]}_mean" if group_by else present[0]) if present else None
    if sort is not None:
        table = sort_table(table, sort)
    table.attrs.update(swept=[c for c in swept if c in table], replaced=again)
    return table
