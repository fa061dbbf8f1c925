import pytest
import torch

from gansweep.evaluation import ScoreHook
from gansweep.metrics import GaussianStats, frechet_distance, gaussian_stats, pixel_features
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


def test_frechet_distance_mean_term():
    a = stats([1.0, 2.0], [[1.0, 0.0], [0.0, 1.0]])
    b = stats([4.0, 6.0], [[1.0, 0.0], [0.0, 1.0]])
    assert frechet_distance(a, b) == pytest.approx(25.0, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 20)
    assert frechet_distance(gaussian_stats(x), gaussian_stats(x)) == pytest.approx(0.0, abs=1e-6)


def test_pixel_fid_ranks_real_below_noise(mnist5k):
    real = gaussian_stats(pixel_features(mnist5k.test_images))
    other_real = gaussian_stats(pixel_features(mnist5k.train_images[:1000]))
    noise = gaussian_stats(pixel_features(torch.rand(1000, 1, 28, 28) * 2 - 1))
    assert frechet_distance(other_real, real) < 0.1 * frechet_distance(noise, real)


def test_score_hook_scores_every_epoch(tiny_data):
    class Seen(ScoreHook):
        values = []

        def on_epoch_end(self, state):
            super().on_epoch_end(state)
            self.values.append(state.scores["score/fid_pixel"])

    hook = Seen(tiny_data.test_images, 64)
    variant = get_variant("cgan")
    result = train(variant, variant.config(**{**TINY, "epochs": 2}), tiny_data, [hook])
    assert len(hook.values) == 2 and all(v > 0 for v in hook.values)
    assert result.scores["score/fid_pixel"] == hook.values[-1]
