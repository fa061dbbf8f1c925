"""A study's scoring, pinned: the feature network and evaluation size that all of a study's trials are scored with,
whatever machine or device runs them, and the rule that a table ranks only runs scored alike.

The study's first worker records both on the parent run, with the network's file as an artifact, before any
trial starts; every other worker (another machine, a dataset whose network was trained there) scores with those.
A run records the same two values as params, which is what `export`, `report` and `evaluate` check.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gansweep.errors import ConfigError, GansweepError

if TYPE_CHECKING:
    from gansweep.data import Dataset
    from gansweep.evaluation import Evaluator

__all__ = ["SCORING_PARAMS", "NETWORK_ARTIFACTS", "pin", "pinned_evaluator", "run_evaluator", "scoring_of",
           "require_one_scoring"]

SCORING_PARAMS = ("feature_net.checksum", "eval.n")  # what makes two runs' scores comparable
NETWORK_ARTIFACTS = "feature_net"  # the parent run's folder holding the study's network file


def pin(client: Any, parent_id: str, evaluator: Evaluator) -> None:
    """Record the study's scoring on its new parent run: params, and the network file to score with."""
    from mlflow.entities import Param

    from gansweep.classifier import network_bytes

    classifier = evaluator.classifier
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in evaluator.params().items()])
    with tempfile.TemporaryDirectory(prefix="gansweep-pin-") as folder:
        path = Path(folder) / f"{classifier.checksum}.pt"
        path.write_bytes(network_bytes(classifier.net, {"dataset": classifier.name,
                                                        "data_checksum": classifier.data_checksum,
                                                        "accuracy": classifier.accuracy}))
        client.log_artifact(parent_id, str(path), NETWORK_ARTIFACTS)


def _fetched_network(client: Any, run_id: str, checksum: str, data: Dataset) -> Any:
    """The network `checksum` that run `run_id` holds as an artifact, or None when it holds none."""
    from mlflow.exceptions import MlflowException

    from gansweep.classifier import load_network_file, shipped_records

    with tempfile.TemporaryDirectory(prefix="gansweep-pin-") as folder:
        try:
            local = client.download_artifacts(run_id, f"{NETWORK_ARTIFACTS}/{checksum}.pt", folder)
        except (MlflowException, OSError):
            return None
        classifier = load_network_file(Path(local), data.record.image_shape[0], data.record.n_classes)
    if classifier.checksum != checksum:
        raise GansweepError(f"the feature network stored with run {run_id} has checksum {classifier.checksum}, "
                            f"not the {checksum} recorded for it; the store is damaged")
    shipped = checksum in {record["checksum"] for record in shipped_records()}
    return dataclasses.replace(classifier, shipped=shipped).to(data.train_images.device)


def pinned_evaluator(client: Any, parent: Any, local: Callable[[], Evaluator], data: Dataset,
                     requested_n: int | None) -> Evaluator:
    """The evaluator of the study whose parent run is `parent`: its pinned network, as the parent holds it, and
    its evaluation size. `local` gives this machine's evaluator, and is called only where it is needed (it may
    train a network): to pin a parent of an older gansweep that recorded no scoring, or where the parent holds
    no copy. An evaluation size asked for (`requested_n`) that is not the study's is refused: its trials would
    not compare."""
    from gansweep.evaluation import Evaluator, eval_size

    recorded = parent.data.params
    if SCORING_PARAMS[0] not in recorded:
        evaluator = local()
        _refuse_older_scoring(client, parent, evaluator)
        pin(client, parent.info.run_id, evaluator)
        return evaluator
    checksum, n = recorded["feature_net.checksum"], int(recorded["eval.n"])
    asked = None if requested_n is None else eval_size(requested_n, data)
    if asked is not None and asked != n:
        raise ConfigError(f"this study's trials are scored on {n} images, now asked for {asked}: they would not "
                          "compare; leave out n_eval to continue it, or add --fresh to start a new study")
    classifier = _fetched_network(client, parent.info.run_id, checksum, data)
    if classifier is None:
        evaluator = local()
        if evaluator.classifier.checksum != checksum:
            raise GansweepError(f"this study's trials are scored with feature network {checksum}, which its parent "
                                f"run {parent.info.run_id} does not hold, and this machine's is "
                                f"{evaluator.classifier.checksum}; add --fresh to start the study anew")
        if evaluator.n == n:
            return evaluator
        classifier = evaluator.classifier
    return Evaluator(classifier, data, n)


def _refuse_older_scoring(client: Any, parent: Any, evaluator: Evaluator) -> None:
    """A parent that pinned nothing (an earlier gansweep's) takes this worker's scoring only if no trial of it
    was scored otherwise: its trials would not compare with the ones to come."""
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=50000)
    mine = (evaluator.classifier.checksum, str(evaluator.n))
    other = next((scoring_of(r) for r in children if _scored(r) and scoring_of(r) != mine), None)
    if other is not None:
        raise ConfigError(f"this study's trials were scored by an earlier gansweep (feature network {other[0][:8]}, "
                          f"n={other[1]}) and this one scores with {mine[0][:8]}, n={mine[1]}: they would not "
                          "compare; add --fresh to start the study anew")


def run_evaluator(client: Any, run: Any, data: Dataset, evaluator: Evaluator, any_network: bool) -> Evaluator:
    """`evaluator` with the network `run` was scored with: this machine's, else its study's copy; refused where
    neither holds it, unless `any_network`."""
    from gansweep.evaluation import Evaluator

    checksum = run.data.params.get("feature_net.checksum")
    if checksum is None or checksum == evaluator.classifier.checksum or any_network:
        return evaluator
    parent_id = run.data.tags.get("mlflow.parentRunId")
    classifier = _fetched_network(client, parent_id, checksum, data) if parent_id else None
    if classifier is None:
        raise GansweepError(f"run {run.info.run_id} was scored with feature network {checksum} and this machine "
                            f"scores with {evaluator.classifier.checksum}: the numbers would not compare with the "
                            "run's own; add --any-network to score with this machine's anyway")
    return Evaluator(classifier, data, evaluator.n)


def scoring_of(run: Any) -> tuple[str, str]:
    return tuple(run.data.params.get(k, "unrecorded") for k in SCORING_PARAMS)


def _scored(run: Any) -> bool:
    """Whether a run holds scores at all: one that failed before its first epoch does not, and ranks nowhere."""
    return SCORING_PARAMS[0] in run.data.params or any(k.startswith("score/") for k in run.data.metrics)


def require_one_scoring(runs: Sequence[Any], mixed: bool) -> None:
    """Refuse to rank runs scored with different feature networks or evaluation sizes, unless `mixed`."""
    counts = Counter(scoring_of(r) for r in runs if _scored(r))
    if len(counts) <= 1 or mixed:
        return
    kinds = "; ".join(f"{n} run(s) with network {net[:8]}, n={size}" for (net, size), n in counts.most_common())
    raise GansweepError(f"these runs were scored in {len(counts)} different ways ({kinds}): their scores are not "
                        "on one scale; choose one study, or add --mixed-scoring to rank them anyway")
