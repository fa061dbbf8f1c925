"""Looking at a trained generator: image grids from a tracked run's checkpoint, and its scores recomputed."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gansweep.atomic import refuse_existing
from gansweep.checkpoint import Checkpoint, load_checkpoint
from gansweep.errors import ConfigError, GansweepError
from gansweep.nets import generate
from gansweep.samples import grid_columns, save_grid

__all__ = ["CHECKPOINTS", "sample_run", "interpolate_run", "best_run", "EvaluationReport", "evaluate_run"]

CHECKPOINTS = ("last", "best")  # artifacts checkpoints/last.pt and checkpoints/best.pt of a trial's run
MAX_IMAGES = 4096  # images in one picture: beyond this a grid is no longer something to look at
MAX_STEPS = 64  # images along one interpolation line, and lines in one picture


def _check_picture(which: str, seed: int) -> None:
    from gansweep.config import MAX_SEED

    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {seed}")


def sample_run(run_id: str, out: Path, tracking_uri: str, n: int = 64, label: int | None = None, seed: int = 0,
               which: str = "last") -> Path:
    """Write a grid of `n` images from the run's checkpoint; conditional runs take `label`, else cycle classes."""
    refuse_existing(out)
    _check_picture(which, seed)
    if not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"n must be in [1, {MAX_IMAGES}], got {n}")
    checkpoint = _run_checkpoint(run_id, which, tracking_uri)
    n_classes = checkpoint.n_classes
    if label is not None and (not n_classes or not 0 <= label < n_classes):
        raise ConfigError(f"label must be in [0, {n_classes}) for {checkpoint.variant.name}, got {label}"
                          if n_classes else f"{checkpoint.variant.name} is unconditional; leave out --label")
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, checkpoint.config.z_dim, generator=rng)
    labels = None
    if n_classes:
        labels = torch.full((n,), label) if label is not None else torch.arange(n) % n_classes
    return save_grid(generate(checkpoint.g, z, labels), out, grid_columns(n, n_classes if label is None else 0))


def interpolate_run(run_id: str, out: Path, tracking_uri: str, steps: int = 10, pairs: int = 8, seed: int = 0,
                    which: str = "last") -> Path:
    """Rows of images along straight lines between random pairs of latent points, one row per pair. For a
    conditional variant, each row keeps one class, and as many rows again keep the noise fixed and blend the
    embedding of one class into another's."""
    refuse_existing(out)
    _check_picture(which, seed)
    if not 2 <= steps <= MAX_STEPS or not 1 <= pairs <= MAX_STEPS:
        raise ConfigError(f"steps must be in [2, {MAX_STEPS}] and pairs in [1, {MAX_STEPS}], got {steps} and {pairs}")
    checkpoint = _run_checkpoint(run_id, which, tracking_uri)
    rng = torch.Generator().manual_seed(seed)
    z_dim, n_classes = checkpoint.config.z_dim, checkpoint.n_classes
    start, end = torch.randn(pairs, z_dim, generator=rng), torch.randn(pairs, z_dim, generator=rng)
    t = torch.linspace(0, 1, steps)[None, :, None]
    z = (start[:, None] * (1 - t) + end[:, None] * t).reshape(-1, z_dim)  # row-major: pair, then step
    labels = None
    if n_classes:
        row_class = torch.randint(0, n_classes, (pairs,), generator=rng)
        labels = row_class.repeat_interleave(steps)
        a, b = row_class, (row_class + torch.randint(1, n_classes, (pairs,), generator=rng)) % n_classes
        blend = F.one_hot(a, n_classes)[:, None] * (1 - t) + F.one_hot(b, n_classes)[:, None] * t
        fixed = start.repeat_interleave(steps, dim=0)
        images = torch.cat([generate(checkpoint.g, z, labels),
                            generate(checkpoint.g, fixed, blend.reshape(-1, n_classes))])
    else:
        images = generate(checkpoint.g, z, None)
    return save_grid(images, out, steps)


def best_run(tracking_uri: str, study: str) -> str:
    """The run id of the study's best finished trial by its objective (latest parent run)."""
    from gansweep.export import best_row, comparison_table, find_runs, study_objective
    from gansweep.tracking import client_for

    client = client_for(tracking_uri, create=False)
    runs, parent, _ = find_runs(client, study=study)
    metric, direction = study_objective(parent)
    table = comparison_table(client, runs, [metric], chosen_by=metric)
    if table.empty or metric not in table or table[metric].isna().all():
        raise GansweepError(f"study {study!r} has no scored trial yet")
    table = table[table["status"] == "finished"] if (table["status"] == "finished").any() else table
    return str(best_row(table, metric, direction)["run_id"])


def _run_checkpoint(run_id: str, which: str, tracking_uri: str, device: torch.device | str = "cpu") -> Checkpoint:
    """The run's checkpoints/{which}.pt, checked against the SHA-256 its run recorded and loaded; the download
    goes to a temporary folder that is gone when this returns."""
    from gansweep.resume import fetch_checkpoint
    from gansweep.tracking import client_for

    client = client_for(tracking_uri, create=False)
    with tempfile.TemporaryDirectory(prefix="gansweep-checkpoint-") as directory:
        path, recorded = fetch_checkpoint(client, run_id, f"{which}.pt", Path(directory))
        return load_checkpoint(path, device, recorded)


@dataclass(frozen=True)
class EvaluationReport:
    variant: str
    dataset: str
    epoch: int
    n: int
    feature_net: str  # the classifier's weights checksum
    accuracy: float
    scores: dict[str, float]  # on the validation slice, with the evaluation noise of training: as logged then
    test: dict[str, float]  # on the test slice, with the test noise
    test_se: dict[str, float]  # standard errors of `test`
    floor: dict[str, float]


def evaluate_run(run_id: str, tracking_uri: str, which: str = "last", n_eval: int | None = None,
                 parzen: bool = False, device: str = "auto", data_root: str | None = None,
                 log_to_run: bool = False, any_network: bool = False) -> EvaluationReport:
    """Recompute a run's scores from its checkpoint, on the data it trained on (checked by checksum), with the
    feature network and (unless `n_eval` says otherwise) the evaluation size it was scored with."""
    from gansweep.classifier import get_classifier
    from gansweep.config import DataConfig
    from gansweep.data import load_dataset
    from gansweep.evaluation import TEST_NOISE_SEED, Evaluator, eval_inputs, parzen as parzen_scores
    from gansweep.scores import check_eval_size
    from gansweep.trainer import resolve_device

    check_eval_size(n_eval, "n")
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    torch_device = resolve_device(device)
    checkpoint = _run_checkpoint(run_id, which, tracking_uri, torch_device)
    data = load_dataset(DataConfig(dataset=checkpoint.data.name, **({"data_root": data_root} if data_root else {})),
                        torch_device)
    if data.record.checksum != checkpoint.data.checksum:
        raise GansweepError(f"the {data.record.name} data here (checksum {data.record.checksum}) is not the data "
                            f"run {run_id} trained on ({checkpoint.data.checksum})")
    from gansweep.scoring import run_evaluator
    from gansweep.tracking import client_for

    client = client_for(tracking_uri, create=False)
    run = client.get_run(run_id)
    recorded_n = run.data.params.get("eval.n")
    n = n_eval if n_eval is not None or recorded_n is None else int(recorded_n)
    evaluator = run_evaluator(client, run, data, Evaluator(get_classifier(data), data, n), any_network)
    z, labels = eval_inputs(evaluator.n, checkpoint.config.z_dim, data.record.n_classes,
                            checkpoint.n_classes > 0, torch_device)
    fake = generate(checkpoint.g, z, labels)
    scores = evaluator.score(fake, labels)
    test_z, _ = eval_inputs(evaluator.n, checkpoint.config.z_dim, data.record.n_classes, checkpoint.n_classes > 0,
                            torch_device, TEST_NOISE_SEED)
    test, test_se = evaluator.measure(generate(checkpoint.g, test_z, labels), labels, "test")
    floor = {k: v for k, v in evaluator.floor.items() if k in scores}
    if parzen:
        n_val = min(len(data.train_images) // 5, 1000)
        scores.update(parzen_scores(fake, data.train_images[-n_val:], data.test_images))
    if log_to_run:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{prefix}/{k}", v, now, checkpoint.epoch)
                                          for prefix, values in (("eval", scores), ("eval_test", test))
                                          for k, v in values.items()])
    return EvaluationReport(checkpoint.variant.name, data.record.name, checkpoint.epoch, evaluator.n,
                            evaluator.classifier.checksum, evaluator.classifier.accuracy, scores, test, test_se,
                            floor)
