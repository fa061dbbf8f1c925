"""The feature network behind the proxy scores: a small CNN classifier trained on the dataset's own train split.

Inception weights cannot be assumed offline and fit 28x28 digits poorly, so the scores are measured in the
feature space of a classifier of the same data, as MNIST GAN papers commonly do. It is trained once per machine
and cached, keyed by the data's checksum and FEATURE_NET_VERSION; its held-out accuracy is stored with it.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gansweep.atomic import atomic_path
from gansweep.data import Dataset
from gansweep.errors import GansweepError

__all__ = ["FEATURE_NET_VERSION", "FeatureNet", "Classifier", "cache_dir", "cached_path", "cached_records",
           "get_classifier", "train_classifier"]

FEATURE_NET_VERSION = 1  # raise when the architecture or its training changes: cached networks are then retrained
FEATURES = 128  # width of the penultimate layer, the space FID, KID and precision/recall are measured in
_EPOCHS, _BATCH, _LR, _SHIFT = 12, 64, 1e-3, 2  # training recipe; _SHIFT: random translation in pixels
_CHUNK = 1000  # images per forward pass when featurising


def cache_dir() -> Path:
    """$GANSWEEP_CACHE, else a per-user cache beside the datasets."""
    return Path(os.environ.get("GANSWEEP_CACHE") or Path.home() / ".cache" / "gansweep") / "classifiers"


class FeatureNet(nn.Module):
    """Two conv blocks (BatchNorm: 97% on mnist-5k in 12 epochs), pooled to 4x4, 128 features, then logits."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class Classifier:
    """A trained FeatureNet in inference mode, with what it was trained on and how well it classifies."""

    net: FeatureNet
    dataset: str
    data_checksum: str
    accuracy: float  # on the held-out split
    checksum: str  # of the weights: a run records which feature network its scores came from

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(penultimate features, logits) of images in [-1, 1], in chunks so memory stays bounded."""
        features, logits = [], []
        for i in range(0, len(images), _CHUNK):
            f = self.net.body(images[i:i + _CHUNK])
            features.append(f)
            logits.append(self.net.head(f))
        return torch.cat(features), torch.cat(logits)

    def to(self, device: torch.device | str) -> Classifier:
        self.net.to(device)
        return self


def _shift(x: Tensor, rng: torch.Generator) -> Tensor:
    """Random translation by up to _SHIFT pixels (one offset per batch): cheap augmentation on the device."""
    dx, dy = (int(v) for v in torch.randint(-_SHIFT, _SHIFT + 1, (2,), generator=rng))
    return torch.roll(F.pad(x, (_SHIFT,) * 4, value=-1.0), (dy, dx), (2, 3))[..., _SHIFT:-_SHIFT, _SHIFT:-_SHIFT]


@torch.no_grad()
def _accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    net.eval()
    correct = sum(int((net(images[i:i + _CHUNK]).argmax(1) == labels[i:i + _CHUNK]).sum())
                  for i in range(0, len(images), _CHUNK))
    return correct / len(images)


def train_classifier(data: Dataset, epochs: int = _EPOCHS, seed: int = 0) -> Classifier:
    """Train a FeatureNet on the train split and measure it on the held-out split."""
    torch.manual_seed(seed)
    device = data.train_images.device
    net = FeatureNet(data.record.image_shape[0], data.record.n_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    rng = torch.Generator().manual_seed(seed)
    n = len(data.train_images)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(n, generator=rng).to(device)
        for start in range(0, n - _BATCH + 1, _BATCH):
            idx = order[start:start + _BATCH]
            loss = F.cross_entropy(net(_shift(data.train_images[idx], rng)), data.train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    net.eval()
    return Classifier(net, data.record.name, data.record.checksum,
                      _accuracy(net, data.test_images, data.test_labels), _weights_checksum(net))


def _weights_checksum(net: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_path(dataset: str, data_checksum: str) -> Path:
    return cache_dir() / f"{dataset}-{data_checksum}-v{FEATURE_NET_VERSION}.pt"


def _load(path: Path, channels: int, n_classes: int) -> Classifier:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureNet(channels, n_classes)
        net.load_state_dict(raw["weights"])
    except Exception as e:  # a truncated or foreign file is retrained, never trusted
        raise GansweepError(f"{path} is not a readable feature network ({type(e).__name__})") from None
    net.eval()
    return Classifier(net, raw["dataset"], raw["data_checksum"], raw["accuracy"], raw["checksum"])


def cached_records() -> list[dict]:
    """What `gansweep list datasets` shows of each cached network (this version), without loading any data."""
    records = []
    for path in sorted(cache_dir().glob(f"*-v{FEATURE_NET_VERSION}.pt")):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            records.append({k: raw[k] for k in ("dataset", "data_checksum", "accuracy", "checksum", "seconds")})
        except Exception:  # unreadable files are retrained when next needed; listing skips them
            continue
    return records


def get_classifier(data: Dataset, log: bool = True) -> Classifier:
    """The cached feature network of `data`, trained and cached first if this machine has none."""
    record = data.record
    path = cached_path(record.name, record.checksum)
    device = data.train_images.device
    if path.is_file():
        try:
            return _load(path, record.image_shape[0], record.n_classes).to(device)
        except GansweepError:
            pass
    if log:
        print(f"training the {record.name} feature network (once per machine, cached in {path.parent})",
              file=sys.stderr, flush=True)
    started = time.perf_counter()
    classifier = train_classifier(data)
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    torch.save({"weights": {k: v.cpu() for k, v in classifier.net.state_dict().items()},
                "dataset": record.name, "data_checksum": record.checksum, "accuracy": classifier.accuracy,
                "checksum": classifier.checksum, "seconds": seconds, "version": FEATURE_NET_VERSION}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return classifier
