"""The MLflow run table a study links to: its address, and the shared view that sorts it by the objective with
the objective and the swept values as columns.

MLflow's UI shows only the run name and a few dates until a person picks columns, out of a hundred. It can open
a view someone shared instead: a `mlflow.sharedViewState.KEY` tag on the experiment, named by the
`viewStateShareKey` of the link. gansweep writes that tag for each study, so its printed link opens the table
as a person comparing trials wants it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["experiment_url", "view_key", "share_study_view", "VIEW_TAG_PREFIX"]

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's own name for a shared view's experiment tag


def experiment_url(host: str, port: int, experiment: str, view: str | None = None) -> str:
    """The run table of an experiment, in the shared view `view` when given. workflowType avoids the GenAI
    view that hides runs; the URL holds no sort of its own, since MLflow ignores a shared view beside one."""
    url = f"http://{host}:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    if view is not None:
        url += f"&viewStateShareKey={quote(view, safe='')}"
    return url


def view_key(study: str) -> str:
    """The shared view's key of a study: one per study, so that studies sharing an experiment keep their own."""
    return "gansweep-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in study)


def _metric(name: str) -> str:
    return f"metrics.`{name}`"


def _param(name: str) -> str:
    return f"params.`{name}`"


def share_study_view(client: Any, experiment: str, study: str, optuna_study: str, objective: str, ascending: bool,
                     swept: Sequence[str]) -> str:
    """Write the study's view on its experiment: the runs of its Optuna study alone (not an older --fresh one's,
    nor another study's in a shared experiment), sorted by the objective, best first, with the objective's
    validation and test values, every swept value, the variant and the seed as columns (MLflow's own Dataset and
    Source columns would push them out of sight). Written again by each invocation, so that it follows the
    latest study of that name. Returns the view's key."""
    columns = [_metric(f"score/{objective}"), _metric(f"test/{objective}"),
               *(_param(f"swept.{name}") for name in swept), _param("variant"), _param("seed")]
    quote_mark = '"' if "'" in optuna_study else "'"
    state = {"orderByKey": _metric(f"score/{objective}"), "orderByAsc": ascending,
             "searchFilter": f"tags.`gansweep.optuna_study` = {quote_mark}{optuna_study}{quote_mark}",
             "selectedColumns": list(dict.fromkeys(columns)), "runsExpanded": {}}
    key = view_key(study)
    client.set_experiment_tag(experiment, VIEW_TAG_PREFIX + key, json.dumps(state))
    return key
