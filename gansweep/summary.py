"""The study's summary on its parent run, what a person opening the parent in MLflow sees first: how many trials
ended which way and the best so far (metrics, kept current as trials end), and at the end of every invocation
the comparison table (`summary/trials.csv`) and the study's key pictures (`summary/sensitivity.png`,
`summary/contact_sheet.png`), without a separate `gansweep report`."""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from optuna.trial import TrialState

from gansweep.attempts import ENDINGS, RUN_AGAIN
from gansweep.spec import StudySpec
from gansweep.tracking import mlflow_settings

__all__ = ["record_counts", "record_summary"]


def record_counts(client: Any, parent_id: str, study: Any, spec: StudySpec) -> tuple[int, tuple[int, float] | None]:
    """The parent's metrics trials/NAME (trials ended each way) and best/OBJECTIVE with best/trial, at a step
    of how many trials have ended, so the parent's charts show the study as it went. Returns how many are done
    (ended in a way that is not run again) and the best (trial, value), if any."""
    from gansweep.liveness import is_lost

    trials = study.get_trials(deepcopy=False)
    endings = [t.user_attrs.get("status") or ("lost" if is_lost(t) else None) for t in trials]
    counts = Counter(e for e in endings if e in ENDINGS)
    now, step = int(time.time() * 1000), sum(counts.values())
    metrics = [Metric(f"trials/{name}", counts.get(name, 0), now, step) for name in ENDINGS]
    scored = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    best = None
    if scored:
        sign = 1 if spec.objective.direction == "minimize" else -1
        top = min(scored, key=lambda t: sign * t.value)
        best = (top.number, top.value)
        metrics += [Metric(f"best/{spec.objective.key}", top.value, now, step),
                    Metric("best/trial", top.number, now, step)]
    client.log_batch(parent_id, metrics=metrics)
    return sum(counts[name] for name in ENDINGS if name not in RUN_AGAIN), best


def record_summary(client: Any, parent_id: str, study: Any, spec: StudySpec, table: Any) -> None:
    """The counts, the table and the pictures, replacing those of the invocation before."""
    from gansweep.figures import LOG_AXES, colors, contact_sheet, sensitivity

    record_counts(client, parent_id, study, spec)
    if table.empty:
        return
    client.log_text(parent_id, table.to_csv(index=False), "summary/trials.csv")
    metric = spec.objective.metric
    if metric not in table:
        return
    varied = [name for name in spec.space if name in table and table[name].nunique(dropna=True) > 1]
    axis = next((name for name in varied if name in LOG_AXES), varied[0] if varied else None)
    runs = table.dropna(subset=["run_id"])
    with tempfile.TemporaryDirectory(prefix="gansweep-summary-") as folder:
        out = Path(folder)
        sensitivity(table, axis, metric, colors(sorted(table["variant"].dropna().unique())),
                    out / "sensitivity.png")
        finals = {}
        with mlflow_settings(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):  # a bar per download says nothing
            for run_id in runs["run_id"]:
                grids = sorted(a.path for a in client.list_artifacts(run_id, "samples") if a.path.endswith(".png"))
                if grids:
                    (out / run_id).mkdir()
                    finals[run_id] = Path(client.download_artifacts(run_id, grids[-1], str(out / run_id)))
        if finals:
            contact_sheet(runs, finals, axis, metric, out / "contact_sheet.png")
        for name in ("sensitivity.png", "contact_sheet.png"):
            if (out / name).exists():
                client.log_artifact(parent_id, str(out / name), "summary")
