import pytest
import torch
from torch import nn

from gansweep.config import TrainConfig
from gansweep.regularizers import REGULARIZERS


def linear_critic(weights):
    w = torch.tensor(weights)
    return lambda x: x.flatten(1) @ w


def test_gradient_penalty_of_a_linear_critic():
    """Weight (2, 2, 1): gradient norm 3 everywhere, so the penalty is 10 * (3 - 1)^2 = 40."""
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    gp = REGULARIZERS["gradient-penalty"].penalty(linear_critic([2.0, 2.0, 1.0]), real, fake, TrainConfig(),
                                                  torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(40.0, rel=1e-6)


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    gp = REGULARIZERS["gradient-penalty"].penalty(linear_critic([0.6, 0.8, 0.0]), torch.randn(4, 3),
                                                  torch.randn(4, 3), TrainConfig(), torch.Generator())
    assert gp.item() == pytest.approx(0.0, abs=1e-6)


def test_r1_of_a_linear_critic():
    """||grad||^2 = 9, so gamma / 2 * 9 = 45 at gamma 10, and 4.5 at gamma 1."""
    r1 = REGULARIZERS["r1"]
    critic = linear_critic([2.0, 2.0, 1.0])
    assert r1.penalty(critic, torch.randn(5, 3), None, TrainConfig(), None).item() == pytest.approx(45.0)
    assert r1.penalty(critic, torch.randn(5, 3), None, TrainConfig(r1_gamma=1.0), None).item() == pytest.approx(4.5)


def test_penalty_trains_d():
    """The penalty must stay in the graph: its gradient reaches D's weights."""
    d = nn.Linear(3, 1)
    gp = REGULARIZERS["gradient-penalty"].penalty(lambda x: d(x).squeeze(1), torch.randn(4, 3),
                                                  torch.randn(4, 3), TrainConfig(), torch.Generator())
    gp.backward()
    assert d.weight.grad is not None and d.weight.grad.abs().sum() > 0


def test_weight_clipping_clamps_every_parameter():
    d = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        for p in d.parameters():
            p.fill_(3.0)
    REGULARIZERS["weight-clipping"].after_step(d, TrainConfig(clip_value=0.05))
    assert all(p.abs().max().item() == pytest.approx(0.05) for p in d.parameters())


def test_spectral_norm_bounds_each_layer():
    d = nn.Sequential(nn.Linear(16, 16), nn.Conv2d(1, 4, 3))
    with torch.no_grad():
        d[0].weight.mul_(50)
    REGULARIZERS["spectral-norm"].prepare(d)
    for _ in range(30):  # power iteration converges over forward passes in training mode
        d[0](torch.randn(2, 16))
    assert torch.linalg.matrix_norm(d[0].weight, ord=2).item() == pytest.approx(1.0, rel=0.05)
    assert hasattr(d[1], "parametrizations")


def test_none_changes_nothing():
    none = REGULARIZERS["none"]
    assert none.penalty(linear_critic([1.0]), torch.randn(2, 1), torch.randn(2, 1), TrainConfig(), None) is None
