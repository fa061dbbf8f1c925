"""A study's table as it stands, read from its Optuna trials: what `gansweep study` prints at the end and logs to
the parent run. MLflow's own tables (`export`) read the runs instead."""

from __future__ import annotations

from typing import Any

from gansweep.spec import StudySpec

__all__ = ["ranked_table", "seed_spread", "format_table", "TABLE_SCORES"]

TABLE_SCORES = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "precision", "recall", "cond_accuracy")


def ranked_table(study: Any, spec: StudySpec) -> Any:
    """One row per trial of the study (duplicates left out), best objective first, unfinished last. Trials are
    ranked by the objective on the validation slice (`NAME_val`, the trial's value in Optuna); every score shown
    under its own name is the test slice's."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("status") == "duplicate" or t.state.name in ("RUNNING", "WAITING"):
            continue
        row = {"trial": t.number, "variant": t.params.get("variant"),
               "seed": t.params.get("seed", t.user_attrs.get("seed"))}
        row.update({k: v for k, v in t.params.items() if k not in ("variant", "seed")})
        row[f"{spec.objective.metric}_val"] = t.value
        for name in (spec.objective.metric, *(n for n in TABLE_SCORES if n != spec.objective.metric)):
            if f"final.{name}" in t.user_attrs:
                row[name] = t.user_attrs[f"final.{name}"]
        if "phase" in t.user_attrs and spec.best_seeds:
            row["phase"] = t.user_attrs["phase"]
        row["status"] = t.user_attrs.get("status", t.state.name.lower())
        row["epochs"] = t.user_attrs.get("epochs")
        row["wall_s"] = t.user_attrs.get("wall_time_s")
        row["run_id"] = t.user_attrs.get("mlflow_run_id")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(f"{spec.objective.metric}_val", ascending=spec.objective.direction == "minimize",
                             na_position="last", kind="stable").reset_index(drop=True)


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
    if table.empty:
        return "(no trials)"
    shown = table.drop(columns=["run_id"]).copy()
    shown["run"] = table["run_id"].str[:8]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")

