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
    gp = REGULARIZERS["gradient-penalty"].penalty(linear_critic([2.0, 2.0, 1.0]), real, fake, torch.rand(8),
                                                  torch.tensor(10.0))
    assert gp.item() == pytest.approx(40.0, rel=1e-6)


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    gp = REGULARIZERS["gradient-penalty"].penalty(linear_critic([0.6, 0.8, 0.0]), torch.randn(4, 3),
                                                  torch.randn(4, 3), torch.rand(4), torch.tensor(10.0))
    assert gp.item() == pytest.approx(0.0, abs=1e-6)


def test_r1_of_a_linear_critic():
    """||grad||^2 = 9, so gamma / 2 * 9 = 45 at gamma 10, and 4.5 at gamma 1."""
    r1 = REGULARIZERS["r1"]
    critic = linear_critic([2.0, 2.0, 1.0])
    assert r1.strength(TrainConfig()) == 10.0 and r1.strength(TrainConfig(r1_gamma=1.0)) == 1.0
    assert r1.penalty(critic, torch.randn(5, 3), None, None, torch.tensor(10.0)).item() == pytest.approx(45.0)
    assert r1.penalty(critic, torch.randn(5, 3), None, None, torch.tensor(1.0)).item() == pytest.approx(4.5)


def test_penalty_trains_d():
    """The penalty must stay in the graph: its gradient reaches D's weights."""
    d = nn.Linear(3, 1)
    gp = REGULARIZERS["gradient-penalty"].penalty(lambda x: d(x).squeeze(1), torch.randn(4, 3),
                                                  torch.randn(4, 3), torch.rand(4), torch.tensor(10.0))
    gp.backward()
    assert d.weight.grad is not None and d.weight.grad.abs().sum() > 0


def test_weight_clipping_clamps_every_parameter_to_its_members_bound():
    """Two members stacked, bounds 0.05 and 2: values of +-3 go to each member's bound, 1.5 stays under 2."""
    stacked = [torch.tensor([[3.0, -3.0, 1.5], [3.0, -3.0, 1.5]]), torch.full((2, 2, 2), -3.0)]
    REGULARIZERS["weight-clipping"].constrain(stacked, torch.tensor([0.05, 2.0]))
    assert stacked[0].tolist() == [[pytest.approx(0.05), pytest.approx(-0.05), pytest.approx(0.05)], [2.0, -2.0, 1.5]]
    assert stacked[1][0].eq(-0.05).all() and stacked[1][1].eq(-2.0).all()


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
    assert none.penalty(linear_critic([1.0]), torch.randn(2, 1), torch.randn(2, 1), None, torch.tensor(0.0)) is None


def test_spectral_norm_equals_torchs_step_for_step():
    """gansweep's own parametrization (vmap can batch it) against torch.nn.utils.parametrizations.spectral_norm
    from the same seed: the same normalised weights through 20 training-mode calls and in inference mode."""
    ours, theirs = nn.Conv2d(3, 8, 4), nn.Conv2d(3, 8, 4)
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(7)
    REGULARIZERS["spectral-norm"].prepare(nn.Sequential(ours))
    torch.manual_seed(7)
    nn.utils.parametrizations.spectral_norm(theirs)
    x = torch.randn(2, 3, 9, 9)
    for _ in range(20):
        torch.testing.assert_close(ours(x), theirs(x))
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight)
    assert set(ours.state_dict()) == set(theirs.state_dict())
