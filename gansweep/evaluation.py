"""Judging a generator: its samples against held-out real images, in the feature space of the dataset's classifier.

The held-out split gives two disjoint slices of N images, drawn by one seeded permutation. The **validation**
slice chooses: the best epoch, the best checkpoint, a study's best trial, pruning and the collapse judgement read
`score/NAME`. The **test** slice reports: `test/NAME` scores other samples of the same G (other evaluation noise)
against it, so a number in a table is not the one it was chosen by. Every score has a standard error over the
generated samples beside it, and a floor: the same score for training images, the mean over several draws, with
its spread.

An `Evaluator` featurises the real images once; `ScoreHook` scores a training run after every epoch with it, and
`evaluate` scores any saved generator the same way.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gansweep.classifier import Classifier
from gansweep.collapse import judge
from gansweep.data import Dataset
from gansweep.errors import ConfigError, GansweepError
from gansweep.hooks import Hook, StopTraining, TrainState
from gansweep.nets import chunks, generate
from gansweep.metrics import (GaussianStats, class_coverage, classifier_score, conditional_accuracy,
                              digit_predictions, frechet_distance, gaussian_stats, kid, neighbour_radii,
                              parzen_log_likelihood, precision_recall)
from gansweep.scores import MIN_EVAL, N_EVAL, check_eval_size

__all__ = ["eval_size", "Evaluator", "ScoreHook", "parzen", "EVAL_NOISE_SEED", "TEST_NOISE_SEED", "eval_inputs",
           "PARZEN_SIGMAS", "NonFiniteSamples", "SLICES", "SLICE_SEED", "FLOOR_DRAWS", "BOOTSTRAP"]


EVAL_NOISE_SEED = 4321  # the same evaluation noise every epoch, so a score's change is G's change
TEST_NOISE_SEED = 8642  # other noise for the test slice: its samples are not the ones the choice was made on
SLICES = ("validation", "test")  # disjoint halves of the held-out split, drawn by one seeded permutation
SLICE_SEED = 0  # the permutation: MNIST's test file is in writer order, so its two halves are not alike
FLOOR_DRAWS = 4  # disjoint draws of training images whose scores give a floor's mean and spread
BOOTSTRAP, BOOTSTRAP_SEED = 20, 0  # resamples of the generated samples behind each standard error
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0
NEIGHBOURS = 3  # precision and recall: each set's manifold reaches each point's k-th neighbour (Kynkaanniemi et al.)


def eval_size(requested: int | None, data: Dataset) -> int:
    """Images per slice: as asked (else N_EVAL), at most half the held-out split and all of the train split."""
    check_eval_size(requested, "n_eval")
    n = min(requested if requested is not None else N_EVAL, len(data.test_images) // 2, len(data.train_images))
    if n < MIN_EVAL:
        raise ConfigError(f"{data.record.name} holds {len(data.test_images)} held-out images: too few for two "
                          f"slices of at least {MIN_EVAL}")
    return n


class NonFiniteSamples(GansweepError):
    """Generated images, or their features, hold a NaN or an infinity: no score is defined for them."""


def _require_finite(x: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(x.flatten(1))).any(dim=1).sum())
    if bad:
        raise NonFiniteSamples(f"non-finite {what} ({bad} of {len(x)})")


@dataclass(frozen=True)
class _Slice:
    """N held-out real images and what the scores need of them, featurised once."""

    images: Tensor
    labels: Tensor
    features: Tensor
    stats: GaussianStats
    radii: Tensor  # each image's distance to its NEIGHBOURS-th neighbour in feature space (precision, recall)
    kid_memo: dict[tuple, Tensor] = field(default_factory=dict)  # KID's sums over this slice alone (metrics.kid)


class Evaluator:
    """Scores N generated images against one of two slices of N held-out real images (validation, test)."""

    def __init__(self, classifier: Classifier, data: Dataset, n: int | None = None):
        self.classifier, self.n = classifier, eval_size(n, data)
        self.n_classes = data.record.n_classes
        n = self.n
        self.slices: dict[str, _Slice] = {}
        order = torch.randperm(len(data.test_images), generator=torch.Generator().manual_seed(SLICE_SEED))
        for k, name in enumerate(SLICES):
            chosen = order[k * n:(k + 1) * n].to(data.test_images.device)
            images, labels = data.test_images[chosen], data.test_labels[chosen]
            features, _ = classifier.embed(images)
            self.slices[name] = _Slice(images, labels, features, gaussian_stats(features),
                                        neighbour_radii(features, NEIGHBOURS))
        self.seen = data.train_images[:n], data.train_labels[:n]  # what D trained on
        draws = [self.score(data.train_images[k * n:(k + 1) * n], data.train_labels[k * n:(k + 1) * n], "test")
                 for k in range(max(1, min(FLOOR_DRAWS, len(data.train_images) // n)))]
        self.floor = {name: statistics.fmean(d[name] for d in draws) for name in draws[0]}
        self.floor_sd = {name: statistics.stdev(d[name] for d in draws) if len(draws) > 1 else math.nan
                         for name in draws[0]}

    def params(self) -> dict[str, object]:
        return {"feature_net.checksum": self.classifier.checksum, "feature_net.accuracy": self.classifier.accuracy,
                "feature_net.name": self.classifier.name, "feature_net.shipped": self.classifier.shipped,
                "eval.n": self.n}

    def _embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits; non-finite images or features are refused before any metric sees them."""
        _require_finite(images, "generated images")
        features, logits = self.classifier.embed(images)
        _require_finite(torch.cat([features, logits], dim=1), "classifier features of the generated images")
        return features, logits

    def score(self, images: Tensor, labels: Tensor | None = None, against: str = "validation") -> dict[str, float]:
        """Every score of `images` against the slice `against`."""
        return self._scores(*self._embed(images), labels, self.slices[against])

    def measure(self, images: Tensor, labels: Tensor | None = None,
                against: str = "validation") -> tuple[dict[str, float], dict[str, float]]:
        """(scores, their standard errors over the generated samples) of `images` against the slice `against`."""
        features, logits = self._embed(images)
        real = self.slices[against]
        scores = self._scores(features, logits, labels, real)
        return scores, self._standard_errors(features, logits, labels, real, scores)

    def _scores(self, features: Tensor, logits: Tensor, labels: Tensor | None, real: _Slice) -> dict[str, float]:
        kid_mean, kid_std = kid(real.features, features, KID_SUBSETS, self._kid_subset(),
                                torch.Generator().manual_seed(KID_SEED), real.kid_memo)
        classes, rejected = digit_predictions(logits)
        coverage, class_kl = class_coverage(classes, self.n_classes)
        precision, recall = precision_recall(real.features, features, NEIGHBOURS, real.radii)
        scores = {"fid_proxy": frechet_distance(gaussian_stats(features), real.stats), "kid_proxy": kid_mean,
                  "kid_proxy_std": kid_std, "is_proxy": classifier_score(logits[:, :self.n_classes]),
                  "coverage": coverage, "class_kl": class_kl, "confident": len(classes) / len(features),
                  "rejected": rejected, "precision": precision, "recall": recall}
        if labels is not None:
            scores["cond_accuracy"] = conditional_accuracy(logits, labels)
        return scores

    def _kid_subset(self) -> int:
        return min(KID_SUBSET_SIZE, self.n // 2)

    def _standard_errors(self, features: Tensor, logits: Tensor, labels: Tensor | None, real: _Slice,
                         scores: dict[str, float]) -> dict[str, float]:
        """Bootstrap over the generated samples (BOOTSTRAP resamples, seeded) for the scores that are cheap to
        recompute; the binomial error for precision and recall; for KID, its spread over subsets of size m scaled
        to N (sqrt(m / N)). The real slice is the same for every run, so its own noise is left out."""
        generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
        n = len(features)
        replicas: dict[str, list[float]] = {}
        for _ in range(BOOTSTRAP):
            idx = torch.randint(n, (n,), generator=generator).to(features.device)
            f, l = features[idx], logits[idx]
            classes, rejected = digit_predictions(l)
            coverage, class_kl = class_coverage(classes, self.n_classes)
            values = {"fid_proxy": frechet_distance(gaussian_stats(f), real.stats),
                      "is_proxy": classifier_score(l[:, :self.n_classes]), "coverage": coverage,
                      "class_kl": class_kl, "confident": len(classes) / n, "rejected": rejected}
            if labels is not None:
                values["cond_accuracy"] = conditional_accuracy(l, labels[idx])
            for name, value in values.items():
                replicas.setdefault(name, []).append(value)
        se = {name: statistics.stdev(values) for name, values in replicas.items()}
        se["precision"] = math.sqrt(scores["precision"] * (1 - scores["precision"]) / n)
        se["recall"] = math.sqrt(scores["recall"] * (1 - scores["recall"]) / len(real.features))
        se["kid_proxy"] = scores["kid_proxy_std"] * math.sqrt(self._kid_subset() / n)
        return se

    @torch.no_grad()
    def d_overfit(self, d: torch.nn.Module, conditional: bool) -> float:
        """D's mean output (logit or critic value) on N training images minus on the N validation images: about 0
        while D judges images, growing as it memorises the ones it was shown. D is in inference mode meanwhile."""
        def mean_output(images: Tensor, labels: Tensor) -> float:
            outputs = [d(images[part], labels[part] if conditional else None).flatten()
                       for part in chunks(len(images))]
            return float(torch.cat(outputs).to(torch.float64).mean())

        was_training = d.training
        d.eval()
        try:
            held_out = self.slices["validation"]
            return mean_output(*self.seen) - mean_output(held_out.images, held_out.labels)
        finally:
            d.train(was_training)


def eval_inputs(n: int, z_dim: int, n_classes: int, conditional: bool, device: torch.device,
                seed: int = EVAL_NOISE_SEED) -> tuple[Tensor, Tensor | None]:
    """Evaluation noise, and labels cycling through the classes for a conditional G."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return z, (torch.arange(n, device=device) % n_classes) if conditional else None


class ScoreHook(Hook):
    """Puts into `state.scores` after every epoch `score/NAME` (validation), `test/NAME`, and `se/NAME` and
    `test_se/NAME` (their standard errors), and once at the start `floor/NAME` and `floor_sd/NAME`; and judges
    each epoch's samples (collapse.py): the first collapsed epoch is noted as `mode_collapse` (with the epoch it
    recovered at, if it does), a fall into noise after drawing digits as `noise`, and so is a run that never drew
    digits, however it ended (finished, pruned, stopped). Samples that cannot be scored end the run as diverged."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.drew_digits = False  # some epoch so far was not judged noise
        self.noise_note: str | None = None  # the latest noise verdict while no epoch drew digits

    def state_dict(self) -> dict[str, object]:
        return {"drew_digits": self.drew_digits, "noise_note": self.noise_note}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        self.drew_digits = bool(saved.get("drew_digits", False))
        note = saved.get("noise_note")
        self.noise_note = note if isinstance(note, str) else None

    def on_start(self, state: TrainState) -> None:
        n, z_dim, n_classes = self.evaluator.n, state.config.z_dim, state.data.n_classes
        self.z, self.labels = eval_inputs(n, z_dim, n_classes, state.conditional, state.device)
        self.test_z, _ = eval_inputs(n, z_dim, n_classes, state.conditional, state.device, TEST_NOISE_SEED)
        for name, value in self.evaluator.floor.items():
            if name != "cond_accuracy" or state.conditional:
                state.scores[f"floor/{name}"] = value
                state.scores[f"floor_sd/{name}"] = self.evaluator.floor_sd[name]

    def on_epoch_end(self, state: TrainState) -> None:
        try:
            scores, se = self.evaluator.measure(generate(state.g, self.z, self.labels), self.labels, "validation")
            test, test_se = self.evaluator.measure(generate(state.g, self.test_z, self.labels), self.labels, "test")
        except NonFiniteSamples as e:
            raise StopTraining("diverged", f"{e} at step {state.step}") from None
        scores["d_overfit"] = self.evaluator.d_overfit(state.d, state.conditional)
        for prefix, values in (("score", scores), ("se", se), ("test", test), ("test_se", test_se)):
            for name, value in values.items():
                state.scores[f"{prefix}/{name}"] = value
        verdict = judge(scores, self.evaluator.n_classes)
        kind = None if verdict is None else verdict.kind
        notes = state.notes
        if kind == "mode_collapse" and "mode_collapse" not in notes:
            notes["mode_collapse"] = verdict.note(state.epoch)
        elif kind is None and "mode_collapse" in notes and "recovered" not in notes["mode_collapse"]:
            notes["mode_collapse"] += f"; recovered at epoch {state.epoch}"
        if kind == "noise" and self.drew_digits and "noise" not in notes:
            notes["noise"] = verdict.note(state.epoch)
        self.drew_digits = self.drew_digits or kind != "noise"
        if not self.drew_digits:
            self.noise_note = verdict.note(state.epoch)

    def on_stop(self, state: TrainState, status: str) -> None:
        if self.noise_note is not None and not self.drew_digits and "noise" not in state.notes:
            state.notes["noise"] = f"{self.noise_note}; it never drew digits"



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
