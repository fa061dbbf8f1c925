"""A study's table as it stands, read from its Optuna trials: what `gansweep study` prints at the end and logs to
the parent run. MLflow's own tables (`export`) read the runs instead."""

from __future__ import annotations

from typing import Any

from gansweep.attempts import asked_params, point_key, replaced
from gansweep.liveness import is_lost
from gansweep.spec import StudySpec

__all__ = ["ranked_table", "seed_spread", "format_table", "TABLE_SCORES"]

TABLE_SCORES = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy")


def ranked_table(study: Any, spec: StudySpec) -> Any:
    """One row per point of the study: its latest trial (duplicates and attempts run again left out, counted in
    `attrs["replaced"]`), best objective first, unfinished last. Trials are ranked by the objective on the
    validation slice (`NAME_val`, the trial's value in Optuna); every score shown under its own name is the test
    slice's."""
    import pandas as pd

    from gansweep.export import STATUS_LABELS

    metric = spec.objective.metric
    scores = [metric, *(n for n in TABLE_SCORES if n != metric)]
    rows, points = [], []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("status") == "duplicate" or t.state.name in ("RUNNING", "WAITING"):
            continue
        row = {"trial": t.number, "variant": t.params.get("variant"),
               "seed": t.params.get("seed", t.user_attrs.get("seed"))}
        row.update({k: v for k, v in t.params.items() if k not in ("variant", "seed")})
        row[f"{metric}_val"] = t.value
        row.update({name: t.user_attrs[f"final.{name}"] for name in scores if f"final.{name}" in t.user_attrs})
        if "phase" in t.user_attrs and spec.best_seeds:
            row["phase"] = t.user_attrs["phase"]
        status = t.user_attrs.get("status") or ("lost" if is_lost(t) else t.state.name.lower())
        row["status"] = STATUS_LABELS.get(status, status)  # as export names it
        row["epochs"] = t.user_attrs.get("epochs")
        row["wall_s"] = t.user_attrs.get("wall_time_s")
        row["run_id"] = t.user_attrs.get("mlflow_run_id")
        rows.append(row)
        points.append(point_key(asked_params(t)))  # whatever its phase: a re-run can resume a search trial's run
    gone = replaced([(point, row["trial"], row["status"]) for point, row in zip(points, rows)])
    # the same columns in the same order whichever trial comes first: one that stopped early has no scores
    head = ["trial", "variant", "seed", *spec.space]
    tail = [f"{metric}_val", *scores, "phase", "status", "epochs", "wall_s", "run_id"]
    table = pd.DataFrame([row for i, row in enumerate(rows) if i not in gone])
    table = table[[c for c in head if c in table] + [c for c in table if c not in head + tail]
                  + [c for c in tail if c in table]]
    if not table.empty:
        table = table.sort_values(f"{metric}_val", ascending=spec.objective.direction == "minimize",
                                  na_position="last", kind="stable").reset_index(drop=True)
    table.attrs["replaced"] = len(gone)
    return table


def seed_spread(table: Any, spec: StudySpec) -> Any:
    """Per variant, the objective over the re-runs of its best parameters: the answer of a fair comparison is a
    distribution per variant, not one lucky run. Empty unless the study has best_seeds."""
    import pandas as pd

    metric = spec.objective.metric
    if table.empty or "phase" not in table:
        return pd.DataFrame()
    reruns = table[table["phase"] == "rerun"]
    if reruns.empty:
        return pd.DataFrame()
    spread = reruns.groupby("variant")[metric].agg(["count", "mean", "std", "min", "max"])
    return spread.sort_values("mean", ascending=spec.objective.direction == "minimize").reset_index()


def format_table(table: Any) -> str:
    """The table for a terminal, its numbers as `export` writes them (one format per column)."""
    from gansweep.export import rounded

    if table.empty:
        return "(no trials)"
    shown = rounded(table.drop(columns=["run_id"])).replace("", "-")
    shown["run"] = table["run_id"].str[:8].fillna("-")  # a trial lost before its run was made has none
    return shown.to_string(index=False)

