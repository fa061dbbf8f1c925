"""Judging a generator: its samples against the held-out split, in the feature space of the dataset's classifier.

An `Evaluator` featurises the real images once; `ScoreHook` scores a training run after every epoch with it, and
`evaluate_checkpoint` scores any saved generator the same way. Every score is read against its floor: the same
score for held-out real images against training real images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gansweep.classifier import Classifier
from gansweep.data import Dataset
from gansweep.errors import ConfigError, GansweepError
from gansweep.nets import generate
from gansweep.metrics import (class_coverage, classifier_score, conditional_accuracy, frechet_distance,
                              gaussian_stats, kid, parzen_log_likelihood, precision_recall)
from gansweep.trainer import Hook, StopTraining, TrainState

__all__ = ["Score", "SCORES", "N_EVAL", "eval_size", "Evaluator", "ScoreHook", "parzen", "EVAL_NOISE_SEED",
           "MODE_COLLAPSE_COVERAGE", "collapsed", "eval_inputs", "PARZEN_SIGMAS", "NonFiniteSamples", "MAX_EVAL",
           "check_eval_size"]


@dataclass(frozen=True)
class Score:
    name: str
    direction: str  # minimize or maximize: what "better" means, for objectives and for "best so far"
    summary: str
    conditional_only: bool = False


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("fid_proxy", "minimize", "Frechet distance between Gaussian fits of classifier features"),
    Score("kid_proxy", "minimize", "unbiased MMD^2, cubic kernel on classifier features, mean over subsets"),
    Score("kid_proxy_std", "minimize", "spread of kid_proxy over its subsets"),
    Score("is_proxy", "maximize", "exp E KL(p(y|x) || p(y)) under the classifier, 1 to n_classes"),
    Score("coverage", "maximize", "share of classes that get at least half a uniform share of samples"),
    Score("class_kl", "minimize", "KL(class histogram of samples || uniform)"),
    Score("precision", "maximize", "share of samples inside the real k-NN manifold (k=3)"),
    Score("recall", "maximize", "share of real images inside the samples' k-NN manifold (k=3)"),
    Score("cond_accuracy", "maximize", "how often the classifier names the requested label", True),
)}

N_EVAL = {"cpu": 2000, "cuda": 10000}  # images per evaluation, bounded by the held-out split
MAX_EVAL = 100_000  # the most images an evaluation may be asked for; every split here is smaller anyway
EVAL_NOISE_SEED = 4321  # the same evaluation noise every epoch, so a score's change is G's change
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0
MODE_COLLAPSE_COVERAGE = 0.5  # below this coverage a run is tagged mode_collapse (5 of 10 classes missing)


def check_eval_size(requested: int | None, name: str) -> None:
    """The one rule for a requested evaluation size (None: the device's default), checked before data load."""
    if requested is not None and not 2 <= requested <= MAX_EVAL:
        raise ConfigError(f"{name} must be in [2, {MAX_EVAL}], got {requested!r}")


def eval_size(requested: int | None, data: Dataset) -> int:
    """Images per evaluation: as asked (else the device's default), at most the held-out and train splits."""
    check_eval_size(requested, "n_eval")
    device = data.test_images.device.type
    n = requested if requested is not None else N_EVAL.get(device, N_EVAL["cpu"])
    return min(n, len(data.test_images), len(data.train_images))


class NonFiniteSamples(GansweepError):
    """Generated images, or their features, hold a NaN or an infinity: no score is defined for them."""


def _require_finite(x: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(x.flatten(1))).any(dim=1).sum())
    if bad:
        raise NonFiniteSamples(f"non-finite {what} ({bad} of {len(x)})")


class Evaluator:
    """Scores n generated images against n held-out real ones; the real side is featurised once, here."""

    def __init__(self, classifier: Classifier, data: Dataset, n: int | None = None):
        self.classifier, self.n = classifier, eval_size(n, data)
        self.n_classes = data.record.n_classes
        self.real_features, _ = classifier.embed(data.test_images[:self.n])
        self.real_stats = gaussian_stats(self.real_features)
        self.floor = self.score(data.train_images[:self.n], data.train_labels[:self.n])

    def params(self) -> dict[str, object]:
        return {"feature_net.checksum": self.classifier.checksum, "feature_net.accuracy": self.classifier.accuracy,
                "eval.n": self.n}

    def score(self, images: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Every score of `images`; non-finite images or features are refused before any metric sees them."""
        _require_finite(images, "generated images")
        features, logits = self.classifier.embed(images)
        _require_finite(torch.cat([features, logits], dim=1), "classifier features of the generated images")
        kid_mean, kid_std = kid(self.real_features, features, KID_SUBSETS, min(KID_SUBSET_SIZE, self.n // 2),
                                torch.Generator().manual_seed(KID_SEED))
        coverage, class_kl = class_coverage(logits)
        precision, recall = precision_recall(self.real_features, features)
        scores = {"fid_proxy": frechet_distance(gaussian_stats(features), self.real_stats), "kid_proxy": kid_mean,
                  "kid_proxy_std": kid_std, "is_proxy": classifier_score(logits), "coverage": coverage,
                  "class_kl": class_kl, "precision": precision, "recall": recall}
        if labels is not None:
            scores["cond_accuracy"] = conditional_accuracy(logits, labels)
        return scores


def eval_inputs(n: int, z_dim: int, n_classes: int, conditional: bool, device: torch.device,
                seed: int = EVAL_NOISE_SEED) -> tuple[Tensor, Tensor | None]:
    """Evaluation noise, and labels cycling through the classes for a conditional G."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return z, (torch.arange(n, device=device) % n_classes) if conditional else None


def collapsed(peak: float, coverage: float) -> bool:
    """Mode collapse: coverage has fallen below MODE_COLLAPSE_COVERAGE after reaching it. Every GAN starts out
    drawing blobs that the classifier puts in one or two classes; that is not a collapse yet."""
    return peak >= MODE_COLLAPSE_COVERAGE > coverage


class ScoreHook(Hook):
    """Puts `score/NAME` into `state.scores` after every epoch, `floor/NAME` once at the start, and notes the
    first epoch whose coverage falls below MODE_COLLAPSE_COVERAGE (after reaching it) as `mode_collapse`.
    Samples that cannot be scored end the run as diverged."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.peak = 0.0  # the best coverage so far

    def state_dict(self) -> dict[str, float]:
        return {"peak": self.peak}

    def load_state_dict(self, saved: dict[str, float]) -> None:
        self.peak = saved["peak"]

    def on_start(self, state: TrainState) -> None:
        self.z, self.labels = eval_inputs(self.evaluator.n, state.config.z_dim, state.data.n_classes,
                                          state.conditional, state.device)
        for name, value in self.evaluator.floor.items():
            if name != "cond_accuracy" or state.conditional:
                state.scores[f"floor/{name}"] = value

    def on_epoch_end(self, state: TrainState) -> None:
        fake = generate(state.g, self.z, self.labels)
        try:
            scores = self.evaluator.score(fake, self.labels)
        except NonFiniteSamples as e:
            raise StopTraining("diverged", f"{e} at step {state.step}") from None
        for name, value in scores.items():
            state.scores[f"score/{name}"] = value
        coverage = state.scores["score/coverage"]
        if collapsed(self.peak, coverage) and "mode_collapse" not in state.notes:
            state.notes["mode_collapse"] = f"epoch {state.epoch}: coverage {coverage:.2f}"
        self.peak = max(self.peak, coverage)


PARZEN_SIGMAS = tuple(float(s) for s in torch.logspace(-1, 0, 10))  # bandwidths tried, pixels in [0, 1]


def parzen(samples: Tensor, validation: Tensor, test: Tensor) -> dict[str, float]:
    """Goodfellow et al. 2014: choose sigma on a validation split, then the test split's mean log-likelihood
    and its standard error, all in [0, 1] pixel space."""
    def unit(x: Tensor) -> Tensor:
        return (x + 1) / 2

    samples, validation, test = unit(samples), unit(validation), unit(test)
    sigma = max(PARZEN_SIGMAS, key=lambda s: float(parzen_log_likelihood(samples, validation, s).mean()))
    per_point = parzen_log_likelihood(samples, test, sigma)
    stderr = float(per_point.std()) / math.sqrt(len(per_point))
    return {"parzen_ll": float(per_point.mean()), "parzen_ll_stderr": stderr, "parzen_sigma": sigma}
