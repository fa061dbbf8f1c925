import math

import pytest
import torch

from gansweep.losses import LOSSES

LN2 = math.log(2)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


# (loss, real scores, fake scores, real target, expected D loss) worked out by hand.
D_CASES = [
    ("non-saturating", t(0.0), t(0.0), 1.0, 2 * LN2),  # -log(1/2) twice
    ("minimax", t(0.0), t(0.0), 1.0, 2 * LN2),
    # target 0.9 at logit 0: BCE = 0.9 ln2 + 0.1 ln2 = ln2, unchanged at the midpoint ...
    ("non-saturating", t(0.0), t(0.0), 0.9, 2 * LN2),
    # ... but not at logit 2: 0.9*softplus(-2) + 0.1*softplus(2) + softplus(-inf-ish fake 0 -> ln2)
    ("non-saturating", t(2.0), t(0.0), 0.9,
     0.9 * math.log1p(math.exp(-2)) + 0.1 * math.log1p(math.exp(2)) + LN2),
    ("wasserstein", t(3.0, 1.0), t(0.5, -0.5), 1.0, 0.0 - 2.0),
    ("least-squares", t(1.0), t(0.0), 1.0, 0.0),
    ("least-squares", t(0.0), t(1.0), 1.0, 0.5 + 0.5),
    ("least-squares", t(1.0), t(0.0), 0.8, 0.5 * 0.2 ** 2),
    ("hinge", t(1.0), t(-1.0), 1.0, 0.0),
    ("hinge", t(0.0), t(0.0), 1.0, 2.0),
    ("hinge", t(3.0, -1.0), t(-3.0, 1.0), 1.0, (0 + 2) / 2 + (0 + 2) / 2),
]

G_CASES = [
    ("non-saturating", t(0.0), LN2),
    ("minimax", t(0.0), -LN2),
    ("non-saturating", t(2.0), math.log1p(math.exp(-2))),
    ("minimax", t(2.0), -math.log1p(math.exp(2))),
    ("wasserstein", t(1.0, 3.0), -2.0),
    ("least-squares", t(0.0), 0.5),
    ("least-squares", t(1.0), 0.0),
    ("hinge", t(-1.0, 2.0), -0.5),
]


@pytest.mark.parametrize("name, real, fake, target, expected", D_CASES)
def test_d_loss_by_hand(name, real, fake, target, expected):
    assert LOSSES[name].d_loss(real, fake, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name, fake, expected", G_CASES)
def test_g_loss_by_hand(name, fake, expected):
    assert LOSSES[name].g_loss(fake).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_moves_the_real_target():
    """With target 1 - s, D's loss is minimal where sigmoid(score) = 1 - s, not at ever larger scores."""
    loss = LOSSES["non-saturating"]
    scores = torch.linspace(-6, 6, 1201)
    per_score = torch.stack([loss.d_loss(s.view(1), torch.tensor([-30.0]), 0.8) for s in scores])
    best = torch.sigmoid(scores[per_score.argmin()]).item()
    assert best == pytest.approx(0.8, abs=0.01)


def test_saturating_g_has_vanishing_gradient_when_d_rejects_fakes():
    fake = torch.tensor([-8.0], requires_grad=True)
    LOSSES["minimax"].g_loss(fake).backward()
    saturating = fake.grad.abs().item()
    fake.grad = None
    LOSSES["non-saturating"].g_loss(fake).backward()
    assert saturating < 1e-3 < fake.grad.abs().item()


@pytest.mark.parametrize("name, smoothable", [("minimax", True), ("non-saturating", True),
                                              ("least-squares", True), ("wasserstein", False), ("hinge", False)])
def test_which_losses_have_a_real_target(name, smoothable):
    assert LOSSES[name].has_real_target is smoothable
