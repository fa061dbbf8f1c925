"""Mode collapse and noise, judged from what a generator draws: fixed sets of mnist-5k images played as the samples
of successive epochs through the real scoring path (the shipped feature network, Evaluator, ScoreHook)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from gansweep.collapse import Verdict, judge
from gansweep.evaluation import Evaluator, ScoreHook
from gansweep.hooks import TrainResult

N = 500  # half of mnist-5k's held-out split: the evaluation size there


class Frames(nn.Module):
    """A 'generator' that draws the given image set of the current epoch; z is the index of the image."""

    def __init__(self, frames: list[torch.Tensor]):
        super().__init__()
        self.frames, self.epoch = frames, 0

    def forward(self, z, labels=None):
        return self.frames[self.epoch][z[:, 0].long()]


class MeanPixel(nn.Module):
    """A 'discriminator' whose output is the image's mean pixel."""

    def forward(self, x, labels=None):
        return x.flatten(1).mean(1)


@pytest.fixture(scope="module")
def evaluator(mnist5k, mnist5k_classifier):
    return Evaluator(mnist5k_classifier, mnist5k, n=N)


def _images(mnist5k, classes=None) -> torch.Tensor:
    """N training images (repeated as needed) of the given classes, else of all classes."""
    images, labels = mnist5k.train_images[2000:], mnist5k.train_labels[2000:]  # not among the floor draws
    if classes is not None:
        images = images[torch.isin(labels, torch.tensor(classes))]
    return images[torch.arange(N) % len(images)]


def _played(evaluator, frames: list[torch.Tensor], budget: int | None = None
            ) -> tuple[dict[str, str], list[dict[str, float]]]:
    """The notes a run of `budget` epochs (else as many as frames) gets, and its scores per epoch, when G draws
    `frames[k]` at epoch k + 1 and the run stops after the last frame."""
    g = Frames(frames)
    state = SimpleNamespace(g=g, d=MeanPixel(), conditional=False, scores={}, notes={}, epoch=0, step=0,
                            device=torch.device("cpu"), config=SimpleNamespace(z_dim=1, epochs=budget or len(frames)),
                            data=SimpleNamespace(n_classes=10))
    hook = ScoreHook(evaluator)
    hook.on_start(state)
    hook.z = hook.test_z = torch.arange(N, dtype=torch.float32)[:, None]
    scores = []
    for epoch in range(len(frames)):
        g.epoch, state.epoch = epoch, epoch + 1
        hook.on_epoch_end(state)
        scores.append({k.removeprefix("score/"): v for k, v in state.scores.items() if k.startswith("score/")})
    hook.on_stop(state, "finished" if len(frames) == state.config.epochs else "pruned")
    return state.notes, scores


def test_real_digits_get_no_tag(evaluator, mnist5k):
    notes, scores = _played(evaluator, [_images(mnist5k)] * 2)
    assert notes == {}
    assert scores[-1]["coverage"] == 1.0 and scores[-1]["rejected"] < 0.05 and scores[-1]["confident"] > 0.9


def test_only_ones_from_the_first_epoch_is_a_collapse_at_epoch_1(evaluator, mnist5k):
    notes, scores = _played(evaluator, [_images(mnist5k, [1])] * 3)
    assert set(notes) == {"mode_collapse"} and notes["mode_collapse"].startswith("epoch 1: 1 of 10 classes")
    assert scores[0]["precision"] > 0.5 and scores[0]["recall"] < 0.3


def test_only_zeros_and_ones_is_a_collapse(evaluator, mnist5k):
    notes, _ = _played(evaluator, [_images(mnist5k, [0, 1])])
    assert set(notes) == {"mode_collapse"} and notes["mode_collapse"].startswith("epoch 1: 2 of 10 classes")


def test_real_then_one_class_collapses_at_that_epoch_and_recovery_is_noted(evaluator, mnist5k):
    real, sevens = _images(mnist5k), _images(mnist5k, [7])
    notes, _ = _played(evaluator, [real, real, sevens, sevens, real])
    assert set(notes) == {"mode_collapse"}
    assert notes["mode_collapse"].startswith("epoch 3: 1 of 10 classes")
    assert notes["mode_collapse"].endswith("; recovered at epoch 5")


def test_real_then_uniform_noise_is_noise_not_collapse(evaluator, mnist5k):
    noise = torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    notes, scores = _played(evaluator, [_images(mnist5k), noise])
    assert set(notes) == {"noise"} and notes["noise"].startswith("epoch 2: ")
    assert scores[1]["rejected"] > 0.9


def test_blurred_digits_of_every_class_are_no_collapse(evaluator, mnist5k):
    blurred = TF.gaussian_blur(_images(mnist5k), 9, 1.5)
    notes, scores = _played(evaluator, [blurred])
    assert "mode_collapse" not in notes
    assert scores[0]["fid_proxy"] > 5 * _played(evaluator, [_images(mnist5k)])[1][0]["fid_proxy"]


def _noise(k: int) -> torch.Tensor:
    return torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(k)) * 2 - 1


@pytest.mark.parametrize("epochs", [3, 1])  # 1 of 3: a run pruned after its first epoch
def test_noise_from_start_to_end_is_noted_once_when_the_run_stops(evaluator, epochs):
    notes, _ = _played(evaluator, [_noise(k) for k in range(epochs)], budget=3)
    assert set(notes) == {"noise"} and notes["noise"].startswith(f"epoch {epochs}: ")
    assert notes["noise"].endswith("it never drew digits")


def test_noise_that_turns_into_digits_is_no_noise(evaluator, mnist5k):
    notes, _ = _played(evaluator, [_noise(0), _images(mnist5k)])
    assert notes == {}


def test_d_overfit_is_the_gap_between_training_and_held_out_images(evaluator, mnist5k):
    _, scores = _played(evaluator, [_images(mnist5k)])
    held_out = evaluator.slices["validation"].images
    by_hand = float(mnist5k.train_images[:N].double().mean() - held_out.double().mean())
    assert scores[0]["d_overfit"] == pytest.approx(by_hand, abs=1e-6)  # D averages each image in float32


@pytest.mark.parametrize("scores, kind", [
    ({"rejected": 0.5, "confident": 0.4, "coverage": 1.0}, "noise"),  # half not digits: noise before anything
    ({"rejected": 0.49, "confident": 0.5, "coverage": 0.4}, "mode_collapse"),
    ({"rejected": 0.0, "confident": 0.49, "coverage": 0.1}, None),  # few confident samples: blur, not collapse
    ({"rejected": 0.0, "confident": 1.0, "coverage": 0.5}, None),  # half the classes covered: not a collapse
])
def test_judge_at_its_thresholds(scores, kind):
    verdict = judge({**scores, "class_kl": 1.0, "precision": 0.9, "recall": 0.1}, 10)
    assert (verdict.kind if verdict else None) == kind
    assert verdict is None or isinstance(verdict, Verdict) and verdict.note(4).startswith("epoch 4: ")


def test_the_run_s_tag_follows_its_note_as_it_grows(tmp_path):
    """A collapse tagged at epoch 3 and recovered at epoch 5: the MLflow tag says both, read back from the store."""
    from mlflow.tracking import MlflowClient

    from gansweep.mlflow_hook import MlflowHook

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "artifacts")))
    hook = MlflowHook(client, run.info.run_id, tmp_path, "score/fid_proxy", {})
    state = SimpleNamespace(scores={}, notes={}, epoch=0, images_seen=0, step=0)
    for epoch, note in [(3, "epoch 3: 1 of 10 classes"), (4, "epoch 3: 1 of 10 classes"),
                        (5, "epoch 3: 1 of 10 classes; recovered at epoch 5")]:
        state.epoch, state.notes["mode_collapse"] = epoch, note
        hook.on_epoch_end(state)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["gansweep.mode_collapse"] == "epoch 3: 1 of 10 classes; recovered at epoch 5"
    state.notes["noise"] = "epoch 1: 99% of samples are not digits; it never drew digits"  # made as it stopped
    hook.on_end(SimpleNamespace(variant=SimpleNamespace(name="gan"), **vars(state)),
                TrainResult("pruned", "pruned at epoch 5", 5, 0, 0, 1.0, {}, {}, dict(state.notes)))
    run = client.get_run(run.info.run_id)
    assert run.data.tags["gansweep.noise"] == state.notes["noise"] and run.info.status == "KILLED"
