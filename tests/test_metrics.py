"""The proxy scores: closed forms worked out by hand, torchmetrics as an independent reference, and the
behaviour each score must show on real mnist-5k digits in the feature space of its trained classifier."""

import hashlib
import json
import math
import shutil

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance  # the modules, not torchmetrics.image: no torch-fidelity
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from gansweep import classifier
from gansweep.classifier import cached_path, digit_accuracy, get_classifier, shipped_dir
from gansweep.errors import GansweepError
from gansweep.feature_training import Recipe, train_classifier
from gansweep import evaluation
from gansweep.evaluation import Evaluator, ScoreHook, parzen
from gansweep.metrics import (GaussianStats, class_coverage, classifier_score, conditional_accuracy, digit_predictions,
                              frechet_distance, gaussian_stats, kid, neighbour_radii, parzen_log_likelihood,
                              precision_recall)
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY


def stats(mean, cov):
    return GaussianStats(torch.tensor(mean, dtype=torch.float64), torch.tensor(cov, dtype=torch.float64))


def test_frechet_distance_of_two_known_gaussians():
    """N(0, diag(1, 4)) vs N(0, diag(4, 1)): 0 + 5 + 5 - 2 * (sqrt(4) + sqrt(4)) = 2."""
    a = stats([0.0, 0.0], [[1.0, 0.0], [0.0, 4.0]])
    b = stats([0.0, 0.0], [[4.0, 0.0], [0.0, 1.0]])
    assert frechet_distance(a, b) == pytest.approx(2.0, rel=1e-6)


def test_frechet_distance_has_the_same_bits_on_any_thread_count_and_leaves_the_count_as_it_was():
    """LAPACK's eigenvalue routine rounds differently at some thread counts from 4 on than with 1 on this
    project's CPU (which counts depends on the matrix); the distance must not, and the caller's count must come
    back."""
    generator = torch.Generator().manual_seed(0)
    a = gaussian_stats(torch.randn(500, 128, generator=generator))
    b = gaussian_stats(torch.randn(500, 128, generator=generator) * 1.2 + 0.1)
    threads = torch.get_num_threads()
    try:
        distances = []
        for k in (1, 2, 3, 4, 5, 8, 12, 16):
            torch.set_num_threads(k)
            distances.append(frechet_distance(a, b))
            assert torch.get_num_threads() == k
        assert len(set(distances)) == 1, distances
    finally:
        torch.set_num_threads(threads)


def test_frechet_distance_with_correlated_covariances():
    """S_a = [[2, 1], [1, 2]] (eigenvalues 3, 1), S_b = I, means 3 apart: 9 + 4 + 2 - 2 (sqrt 3 + 1)."""
    a = stats([0.0, 0.0], [[2.0, 1.0], [1.0, 2.0]])
    b = stats([3.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])
    assert frechet_distance(a, b) == pytest.approx(15 - 2 * (math.sqrt(3) + 1), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 20)
    assert frechet_distance(gaussian_stats(x), gaussian_stats(x)) == pytest.approx(0.0, abs=1e-6)


def test_kid_by_hand_on_two_points_per_set():
    """d = 1, kernel (xy + 1)^3. X = {0, 1}, Y = {0, 2}: k(0,1) = 1, k(0,2) = 1, k(0,0) = 1, k(1,2) = 27,
    k(1,0) = 1. within = (2 k(0,1) + 2 k(0,2)) / 2 = 2; across = (1 + 1 + 1 + 27) / 4 = 7.5; MMD^2 = 2 - 15."""
    mean, std = kid(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]]), subsets=3, subset_size=2)
    assert mean == pytest.approx(-13.0) and std == pytest.approx(0.0)


def test_classifier_score_bounds():
    """Confident and uniform over 4 classes: exp(log 4) = 4. All the same class: 1."""
    confident = torch.eye(4).repeat(25, 1) * 50
    assert classifier_score(confident) == pytest.approx(4.0, rel=1e-6)
    assert classifier_score(torch.zeros(10, 4).index_fill_(1, torch.tensor([2]), 50.0)) == pytest.approx(1.0)


def test_class_coverage_by_hand():
    """10 classes, 100 samples: 60 in class 0, 40 in class 1 -> 2 of 10 covered, KL = .6 log 6 + .4 log 4."""
    classes = torch.tensor([0] * 60 + [1] * 40)
    coverage, kl = class_coverage(classes, 10)
    assert coverage == pytest.approx(0.2)
    assert kl == pytest.approx(0.6 * math.log(6) + 0.4 * math.log(4))
    assert class_coverage(torch.tensor([], dtype=torch.long), 10) == (0.0, pytest.approx(math.log(10)))


def test_digit_predictions_by_hand():
    """Three classes and the rejection column. Probabilities (.7, .1, .1, .1): class 0, confident. (.4, .3, .2,
    .1): class 0 but below 0.5, counted nowhere. (.1, .1, .1, .7): rejected. One of three rejected."""
    probabilities = torch.tensor([[.7, .1, .1, .1], [.4, .3, .2, .1], [.1, .1, .1, .7]])
    classes, rejected = digit_predictions(probabilities.log())
    assert classes.tolist() == [0] and rejected == pytest.approx(1 / 3)


def test_precision_recall_by_hand():
    """k=1. Real points 0..4 on a line: every real ball has radius 1. Fakes at 2 and 10: 10 is outside every
    real ball, so precision is 1/2. Each fake ball reaches the other fake (radius 8), so it holds every real
    point: recall 1."""
    real = torch.arange(5.0)[:, None]
    fake = torch.tensor([[2.0], [10.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(1.0)


def test_precision_recall_with_the_real_radii_held_by_the_caller():
    """The line above: its radii are all 1. Radii of 0.5 still hold the fake at 2 (a real point, at distance 0)
    and not the one at 10: precision 1/2; radii of -1 hold no fake: precision 0, so the radii given are the
    ones used. On random sets the radii given equal the ones worked out, to the bit."""
    real = torch.arange(5.0)[:, None]
    fake = torch.tensor([[2.0], [10.0]])
    assert neighbour_radii(real, 1).tolist() == [1.0] * 5
    assert precision_recall(real, fake, 1, torch.full((5,), 0.5)) == (0.5, 1.0)
    assert precision_recall(real, fake, 1, torch.full((5,), -1.0)) == (0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g) + 0.3
    assert precision_recall(real, fake, 3, neighbour_radii(real, 3)) == precision_recall(real, fake, 3)


def test_kid_with_a_memo_of_the_real_sums():
    """A memo kept for one real set changes nothing, to the bit, at its first use and after, with other fake sets;
    it holds one entry per draw of subsets, and that entry is what is read: one made 0 changes the result by
    the real sums' mean over m(m - 1)."""
    g = torch.Generator().manual_seed(0)
    real, fakes = torch.randn(200, 8, generator=g), [torch.randn(150, 8, generator=g) + s for s in (0.0, 0.5)]
    memo: dict = {}
    for fake in [*fakes, fakes[0]]:
        assert (kid(real, fake, 10, 50, torch.Generator().manual_seed(3), memo)
                == kid(real, fake, 10, 50, torch.Generator().manual_seed(3)))
    assert len(memo) == 1
    kid(real, fakes[0], 10, 50, torch.Generator().manual_seed(4), memo)
    assert len(memo) == 2
    key, sums = next(iter(memo.items()))  # seed 3's draw, the first kept
    plain, _ = kid(real, fakes[0], 10, 50, torch.Generator().manual_seed(3))
    memo[key] = torch.zeros_like(sums)
    emptied, _ = kid(real, fakes[0], 10, 50, torch.Generator().manual_seed(3), memo)
    assert emptied == pytest.approx(plain - float(sums.mean()) / (50 * 49), rel=1e-12, abs=1e-12)


def test_parzen_of_one_sample_is_a_gaussian_density():
    """One sample at 0, a point at distance 1 in 2-D, sigma 0.5: log N = -1/(2 .25) - log(2 pi .25)."""
    ll = parzen_log_likelihood(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 0.5)
    assert float(ll[0]) == pytest.approx(-2.0 - math.log(2 * math.pi * 0.25), rel=1e-9)


class Features(nn.Module):
    """The classifier's penultimate features as the module torchmetrics expects."""

    def __init__(self, classifier, logits=False):
        super().__init__()
        self.classifier, self.logits, self.num_features = classifier, logits, 11 if logits else 128

    def forward(self, x):
        features, logits = self.classifier.embed(x)
        return logits if self.logits else features


def test_the_shipped_network_is_what_its_record_says(mnist5k_classifier):
    record = json.loads((shipped_dir() / "mnist.json").read_text())
    assert mnist5k_classifier.shipped and mnist5k_classifier.name == "mnist"
    assert mnist5k_classifier.checksum == record["checksum"]
    assert hashlib.sha256((shipped_dir() / "mnist.pt").read_bytes()).hexdigest() == record["sha256"]
    assert record["measured"]["accuracy"] >= 0.99 and record["bytes"] < 2_000_000


def test_a_damaged_shipped_network_is_refused(tmp_path, monkeypatch, mnist5k):
    damaged = tmp_path / "feature_nets"
    shutil.copytree(shipped_dir(), damaged)
    blob = bytearray((damaged / "mnist.pt").read_bytes())
    blob[len(blob) // 2] ^= 1
    (damaged / "mnist.pt").write_bytes(bytes(blob))
    monkeypatch.setattr(classifier, "shipped_dir", lambda: damaged)
    with pytest.raises(GansweepError, match="reinstall gansweep"):
        get_classifier(mnist5k)


def test_a_dataset_without_shipped_weights_trains_and_caches_its_own(tiny_data, capsys):
    first = get_classifier(tiny_data)
    assert not first.shipped and cached_path("synthetic", tiny_data.record.checksum).is_file()
    assert "no network ships for synthetic" in capsys.readouterr().err
    again = get_classifier(tiny_data, log=False)
    assert again.checksum == first.checksum and again.accuracy == first.accuracy


def test_scores_agree_with_torchmetrics(mnist5k, mnist5k_classifier):
    real, fake = mnist5k.test_images[:600], mnist5k.train_images[:600]
    features = Features(mnist5k_classifier)
    ours = frechet_distance(gaussian_stats(features(fake)), gaussian_stats(features(real)))
    fid = FrechetInceptionDistance(feature=features, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert ours == pytest.approx(float(fid.compute()), rel=1e-6)

    torch.manual_seed(7)  # torchmetrics draws its subsets from torch's global generator, ours from this one
    reference = KernelInceptionDistance(feature=features, subsets=20, subset_size=300, normalize=True)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    ref_mean, ref_std = reference.compute()
    mean, std = kid(features(real), features(fake), 20, 300, torch.Generator().manual_seed(7))
    assert mean == pytest.approx(float(ref_mean), rel=1e-4) and std == pytest.approx(float(ref_std), rel=1e-3)

    inception = InceptionScore(feature=Features(mnist5k_classifier, logits=True), splits=1)  # no uint8 cast
    inception.update(fake)
    assert classifier_score(Features(mnist5k_classifier, logits=True)(fake)) == pytest.approx(
        float(inception.compute()[0]), rel=1e-5)


@pytest.fixture(scope="module")
def evaluator(mnist5k, mnist5k_classifier):
    return Evaluator(mnist5k_classifier, mnist5k, n=1000)


def test_real_data_sits_far_below_noise(evaluator, mnist5k):
    noise = evaluator.score(torch.rand(1000, 1, 28, 28) * 2 - 1)
    floor = evaluator.floor
    assert floor["fid_proxy"] < 0.05 * noise["fid_proxy"]
    assert floor["kid_proxy"] < 0.05 * noise["kid_proxy"]
    assert floor["coverage"] == 1.0 and floor["is_proxy"] > 8
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8


def test_kid_is_unbiased_on_real_against_real(evaluator, mnist5k):
    """Two halves of the same distribution: the mean MMD^2 over subsets is about 0 (it may be negative)."""
    features, _ = evaluator.classifier.embed(mnist5k.train_images[:2000])
    mean, std = kid(features[:1000], features[1000:], 50, 500, torch.Generator().manual_seed(0))
    noise_features, _ = evaluator.classifier.embed(torch.rand(1000, 1, 28, 28) * 2 - 1)
    far, _ = kid(features[:1000], noise_features, 50, 500, torch.Generator().manual_seed(0))
    assert abs(mean) < 0.01 * far and abs(mean) < 3 * std + 1e-9


def test_a_generator_of_one_digit_is_caught(evaluator, mnist5k):
    """Real images, but only sevens: coverage 1/10, classifier score ~1, low recall, precision still high."""
    sevens = mnist5k.train_images[mnist5k.train_labels == 7][:300]
    scores = evaluator.score(sevens)
    assert scores["coverage"] == pytest.approx(0.1)
    assert scores["is_proxy"] < 1.3
    assert scores["recall"] < 0.3 and scores["precision"] > 0.8
    assert scores["class_kl"] > 0.9 * math.log(10)


def test_blur_makes_fid_proxy_grow_monotonically(evaluator, mnist5k):
    images = mnist5k.train_images[:1000]
    values = [evaluator.score(TF.gaussian_blur(images, 9, sigma) if sigma else images)["fid_proxy"]
              for sigma in (0, 0.7, 1.2, 2.0, 3.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_conditional_accuracy_follows_the_labels(evaluator, mnist5k, mnist5k_classifier):
    images, labels = mnist5k.test_images, mnist5k.test_labels
    right = evaluator.score(images, labels)["cond_accuracy"]
    assert right == pytest.approx(digit_accuracy(mnist5k_classifier.net, images, labels), abs=1e-6) and right > 0.97
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert conditional_accuracy(evaluator.classifier.embed(images)[1], shuffled) == pytest.approx(0.1, abs=0.04)


def test_parzen_prefers_real_samples_to_noise(mnist5k):
    validation, test = mnist5k.train_images[-500:], mnist5k.test_images[:300]
    real = parzen(mnist5k.train_images[:2000], validation, test)
    noise = parzen(torch.rand(2000, 1, 28, 28) * 2 - 1, validation, test)
    assert real["parzen_ll"] > noise["parzen_ll"] + 10 * real["parzen_ll_stderr"]
    assert 0 < real["parzen_ll_stderr"] < abs(real["parzen_ll"])


def test_score_hook_scores_every_epoch(tiny_data):
    classifier = train_classifier(tiny_data, Recipe(epochs=1))
    seen = []

    class Seen(ScoreHook):
        def on_epoch_end(self, state):
            super().on_epoch_end(state)
            seen.append(dict(state.scores))

    hook = Seen(Evaluator(classifier, tiny_data, n=64))
    variant = get_variant("cgan")
    result = train(variant, variant.config(**{**TINY, "epochs": 2}), tiny_data, [hook])
    assert len(seen) == 2 and all(s["score/fid_proxy"] > 0 for s in seen)
    assert "score/cond_accuracy" in seen[0] and "floor/cond_accuracy" in seen[0]
    assert result.scores["score/fid_proxy"] == seen[-1]["score/fid_proxy"]


def test_the_two_slices_split_the_held_out_images_and_the_floor_is_a_mean_over_draws(evaluator, mnist5k):
    n = evaluator.n
    assert n == len(mnist5k.test_images) // 2
    order = torch.randperm(len(mnist5k.test_images), generator=torch.Generator().manual_seed(evaluation.SLICE_SEED))
    assert torch.equal(evaluator.slices["validation"].images, mnist5k.test_images[order[:n]])
    assert torch.equal(evaluator.slices["test"].images, mnist5k.test_images[order[n:2 * n]])
    assert not set(order[:n].tolist()) & set(order[n:2 * n].tolist())
    draws = [evaluator.score(mnist5k.train_images[k * n:(k + 1) * n], mnist5k.train_labels[k * n:(k + 1) * n],
                             "test")["fid_proxy"] for k in range(evaluation.FLOOR_DRAWS)]
    assert evaluator.floor["fid_proxy"] == pytest.approx(sum(draws) / len(draws), rel=1e-12)
    spread = math.sqrt(sum((d - evaluator.floor["fid_proxy"]) ** 2 for d in draws) / (len(draws) - 1))
    assert evaluator.floor_sd["fid_proxy"] == pytest.approx(spread, rel=1e-12) and spread > 0


def test_standard_errors_match_the_binomial_and_cover_a_second_draw(evaluator, mnist5k):
    """Half digits, half noise: `rejected` is a share, so its bootstrap error is close to sqrt(p (1 - p) / n).
    Two disjoint sets of real digits differ in fid_proxy by about their standard errors, not by far more."""
    n = evaluator.n
    noise = torch.rand(n // 2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mixed = torch.cat([mnist5k.train_images[2000:2000 + n - n // 2], noise])
    scores, se = evaluator.measure(mixed)
    p = scores["rejected"]
    assert 0.4 < p < 0.6 and se["rejected"] == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.5)
    assert se["precision"] == pytest.approx(math.sqrt(scores["precision"] * (1 - scores["precision"]) / n))
    first, first_se = evaluator.measure(mnist5k.train_images[2000:2000 + n], against="test")
    second, second_se = evaluator.measure(mnist5k.train_images[3000:3000 + n], against="test")
    both = math.hypot(first_se["fid_proxy"], second_se["fid_proxy"])
    assert 0 < both and abs(first["fid_proxy"] - second["fid_proxy"]) < 4 * both


def test_each_epoch_is_chosen_on_validation_and_reported_on_test(tiny_data):
    """Other noise against other real images: the reported number is not the one the choice was made on."""
    hook = ScoreHook(Evaluator(train_classifier(tiny_data, Recipe(epochs=1)), tiny_data, n=32))
    variant = get_variant("gan")
    result = train(variant, variant.config(**TINY), tiny_data, [hook])
    for prefix in ("score", "test", "se", "test_se", "floor", "floor_sd"):
        assert math.isfinite(result.scores[f"{prefix}/fid_proxy"]), prefix
    assert result.scores["test/fid_proxy"] != result.scores["score/fid_proxy"]
