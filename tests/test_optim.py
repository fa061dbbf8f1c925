"""The member optimizers against torch.optim, each member with its own hyperparameters, step by step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gansweep.optim import Adam, RMSprop

LRS = (1e-3, 3e-2, 2e-4)
BETAS = ((0.5, 0.999), (0.0, 0.9), (0.9, 0.99))


def _models() -> list[nn.Module]:
    models = []
    for seed in range(len(LRS)):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1)))
    return models


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(16, 5, generator=generator)
    return ((model(x) - x.sum(1, keepdim=True).sin()) ** 2).mean()


def _stacked(models: list[nn.Module]) -> list[torch.Tensor]:
    return [torch.stack([p.detach() for p in ps]) for ps in zip(*(m.parameters() for m in models))]


def _pair(kind: str, models: list[nn.Module]):
    params = _stacked(models)
    lr = torch.tensor(LRS, dtype=torch.float64)  # as a population gives them: the very floats torch.optim gets
    if kind == "adam":
        ours = Adam(params, lr, torch.tensor(BETAS, dtype=torch.float64))
        theirs = [torch.optim.Adam(m.parameters(), lr=lr_, betas=b) for m, lr_, b in zip(models, LRS, BETAS)]
    else:
        ours = RMSprop(params, lr)
        theirs = [torch.optim.RMSprop(m.parameters(), lr=lr_) for m, lr_ in zip(models, LRS)]
    return params, ours, theirs


def _member_grads(params: list[torch.Tensor], shapes: nn.Module, step: int) -> list[torch.Tensor]:
    """Each member's gradient at its current stacked parameters, computed on a plain copy of the module."""
    grads = []
    for k in range(params[0].shape[0]):
        with torch.no_grad():
            for p, stacked in zip(shapes.parameters(), params):
                p.copy_(stacked[k])
        shapes.zero_grad()
        _loss(shapes, step).backward()
        grads.append([p.grad.clone() for p in shapes.parameters()])
    return [torch.stack(g) for g in zip(*grads)]


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_every_member_follows_its_own_torch_optimizer_for_200_steps(kind):
    models = _models()
    params, ours, theirs = _pair(kind, models)
    shapes = _models()[0]
    for step in range(200):
        grads = _member_grads(params, shapes, step)
        ours.step(grads, torch.ones(len(LRS)))
        for model, optimizer in zip(models, theirs):
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()
    for k, model in enumerate(models):
        for stacked, p in zip(params, model.parameters()):
            torch.testing.assert_close(stacked[k], p.detach(), rtol=1e-5, atol=1e-6)
    assert [float(s) for s in ours.steps] == [200.0] * len(LRS)


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_an_inactive_member_stays_as_it_is_moments_and_all(kind):
    models = _models()
    params, ours, _ = _pair(kind, models)
    shapes = _models()[0]
    ours.step(_member_grads(params, shapes, 0), torch.ones(len(LRS)))
    before = [p[1].clone() for p in params], ours.state_dict(1)
    for step in range(1, 6):
        ours.step(_member_grads(params, shapes, step), torch.tensor([1.0, 0.0, 1.0]))
    assert all(torch.equal(p[1], b) for p, b in zip(params, before[0]))
    after = ours.state_dict(1)
    assert after["state"][0]["step"] == before[1]["state"][0]["step"] == 1
    for i in after["state"]:
        assert all(torch.equal(after["state"][i][k], before[1]["state"][i][k]) for k in after["state"][i])
    assert not torch.equal(params[0][0], _stacked(_models())[0][0])  # the active ones did move


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_a_step_with_no_member_ended_is_the_masked_step_bit_for_bit(kind):
    """The unmasked step (no mask: the host knows no member has ended) is the masked step with every member
    active, to the last bit, parameters, moments and step counts."""
    shapes = _models()[0]
    (masked, ours_masked, _), (unmasked, ours, _) = _pair(kind, _models()), _pair(kind, _models())
    for step in range(20):
        ours_masked.step(_member_grads(masked, shapes, step), torch.ones(len(LRS)))
        ours.step(_member_grads(unmasked, shapes, step))
    assert all(torch.equal(a, b) for a, b in zip(masked, unmasked))
    assert torch.equal(ours.steps, ours_masked.steps)
    for name, moments in ours.moments.items():
        assert all(torch.equal(a, b) for a, b in zip(moments, ours_masked.moments[name])), name


def _torch_optimizer(kind: str, model: nn.Module, member: int) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=LRS[member], betas=BETAS[member])
    return torch.optim.RMSprop(model.parameters(), lr=LRS[member])


def _steps(ours, params, optimizer, model, shapes, steps: range) -> None:
    for step in steps:
        ours.step(_member_grads(params, shapes, step), torch.ones(len(LRS)))
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_a_state_dict_goes_on_in_torch_optim_and_back(kind):
    """A member's state_dict loads into torch.optim, which then steps as the member does; torch.optim's own
    state_dict loads back into a fresh member optimizer, which then steps as torch.optim does."""
    params, ours, _ = _pair(kind, _models())
    shapes = _models()[0]
    for step in range(10):
        ours.step(_member_grads(params, shapes, step), torch.ones(len(LRS)))
    member, model = 2, _models()[0]
    with torch.no_grad():
        for p, stacked in zip(model.parameters(), params):
            p.copy_(stacked[member])
    optimizer = _torch_optimizer(kind, model, member)
    optimizer.load_state_dict(ours.state_dict(member))
    _steps(ours, params, optimizer, model, shapes, range(10, 20))
    for stacked, p in zip(params, model.parameters()):
        torch.testing.assert_close(stacked[member], p.detach(), rtol=1e-5, atol=1e-6)

    fresh_params, fresh, _ = _pair(kind, _models())
    with torch.no_grad():
        for f, p in zip(fresh_params, model.parameters()):
            f.copy_(p.detach().expand_as(f))
    fresh.load_state_dict(member, optimizer.state_dict())
    _steps(fresh, fresh_params, optimizer, model, shapes, range(20, 30))
    for stacked, p in zip(fresh_params, model.parameters()):
        torch.testing.assert_close(stacked[member], p.detach(), rtol=1e-5, atol=1e-6)
    assert float(fresh.state_dict(member)["state"][0]["step"]) == 30


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_a_step_of_each_member_on_its_own_slices_is_its_torch_optimizer_and_leaves_the_others(kind):
    """step_each, the update of a step that is not vmapped: Adam is torch.optim.Adam(fused=True) on each listed
    member, to the last bit (RMSprop, without a fused kernel, its masked stacked step, held to torch.optim above);
    an unlisted member's parameters, moments and step count stay as they are. The weights' gradients come in
    column-major, as autograd may give them through a penalty: the kernel must not read them as row-major."""
    models = _models()
    params, ours, _ = _pair(kind, models)
    shapes = _models()[0]
    theirs = [torch.optim.Adam(m.parameters(), lr=lr, betas=b, fused=True) if kind == "adam"
              else torch.optim.RMSprop(m.parameters(), lr=lr) for m, lr, b in zip(models, LRS, BETAS)]
    for step in range(30):
        grads = [g.transpose(1, 2).contiguous().transpose(1, 2) if g.dim() == 3 else g
                 for g in _member_grads(params, shapes, step)]
        assert not all(g.is_contiguous() for g in grads)
        ours.step_each(grads, [0, 2])
        for k in (0, 2):
            theirs[k].zero_grad()
            _loss(models[k], step).backward()
            theirs[k].step()
    untouched = _stacked(_models())
    for k, model in enumerate(models):
        for stacked, p, first in zip(params, model.parameters(), untouched):
            if k == 1:
                assert torch.equal(stacked[k], first[k])
            elif kind == "adam":
                assert torch.equal(stacked[k], p.detach())
            else:
                torch.testing.assert_close(stacked[k], p.detach(), rtol=1e-5, atol=1e-6)
    assert ours.steps.tolist() == [30.0, 0.0, 30.0]
    assert ours.state_dict(1)["state"] == {}
    for name, moments in ours.moments.items():
        assert all(not m[1].any() for m in moments), name
