"""The feature network behind the proxy scores: a small CNN classifier of the dataset's classes plus one more,
"not a digit" (any image that is no class at all), whose penultimate layer is the space the scores live in.

Inception weights cannot be assumed offline and fit 28x28 digits poorly, so the scores are measured in the feature
space of a classifier of the same data, as MNIST GAN papers commonly do. A network retrained on each machine is a
different network (floating-point order alone changes its weights, and a second one moved the same generators'
FID by up to 15%), so MNIST's ships with the package, trained once by `scripts/train_feature_net.py`; every machine
scores with the same bytes, checked against their SHA-256. mnist-5k uses it too. A dataset without shipped weights
gets a network trained here by the same recipe, cached per machine, and says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import Tensor, nn

from gansweep.atomic import atomic_path
from gansweep.data import Dataset
from gansweep.errors import GansweepError
from gansweep.nets import chunks

__all__ = ["FEATURE_NET_VERSION", "FEATURES", "FeatureNet", "Classifier", "SHIPPED", "shipped_dir", "cache_dir",
           "cached_path", "cached_records", "shipped_records", "get_classifier", "digit_accuracy", "weights_checksum",
           "load_network_file", "network_bytes"]

FEATURE_NET_VERSION = 2  # raise when the architecture or its recipe changes: cached networks are then retrained
FEATURES = 128  # width of the penultimate layer, the space FID, KID and precision/recall are measured in
SHIPPED = {"mnist": "mnist", "mnist-5k": "mnist"}  # dataset -> the network shipped for it, in shipped_dir()


def shipped_dir() -> Path:
    return Path(__file__).parent / "feature_nets"


def cache_dir() -> Path:
    """$GANSWEEP_CACHE, else a per-user cache beside the datasets."""
    return Path(os.environ.get("GANSWEEP_CACHE") or Path.home() / ".cache" / "gansweep") / "classifiers"


class FeatureNet(nn.Module):
    """Two conv blocks with BatchNorm, pooled to 4x4, 128 features, then n_classes + 1 logits: the last is
    "not a digit"."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, n_classes + 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class Classifier:
    """A FeatureNet in inference mode, with what it was trained on and how well it classifies."""

    net: FeatureNet
    name: str  # the network's name: the dataset it was trained on
    data_checksum: str  # of that dataset
    accuracy: float  # on that dataset's held-out split
    checksum: str  # of the weights: a run records which feature network its scores came from
    shipped: bool  # the package's own weights, the same on every machine (else trained on this one)

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(penultimate features, logits) of images in [-1, 1], in chunks so memory stays bounded."""
        features, logits = [], []
        for part in chunks(len(images)):
            f = self.net.body(images[part])
            features.append(f)
            logits.append(self.net.head(f))
        return torch.cat(features), torch.cat(logits)

    def to(self, device: torch.device | str) -> Classifier:
        self.net.to(device)
        return self


@torch.no_grad()
def digit_accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    """Share of images whose top logit is their label; "not a digit" counts as wrong."""
    net.eval()
    correct = sum(int((net(images[part]).argmax(1) == labels[part]).sum()) for part in chunks(len(images)))
    return correct / len(images)


def weights_checksum(net: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def network_bytes(net: FeatureNet, record: dict[str, object]) -> bytes:
    """A network and what is known of it, as one file's bytes (shipped, cached, or logged to a study)."""
    buffer = io.BytesIO()
    torch.save({"weights": {k: v.cpu() for k, v in net.state_dict().items()}, **record}, buffer)
    return buffer.getvalue()


def load_network_file(path: Path, channels: int, n_classes: int, shipped: bool = False) -> Classifier:
    """A network file written by `network_bytes`; one clear error if it is not one, or not of this shape."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureNet(channels, n_classes)
        net.load_state_dict(raw["weights"])
        name, data_checksum, accuracy = raw["dataset"], raw["data_checksum"], float(raw["accuracy"])
    except Exception as e:
        raise GansweepError(f"{path} is not a feature network for {channels}-channel images of {n_classes} "
                            f"classes ({type(e).__name__})") from None
    net.eval()
    return Classifier(net, name, data_checksum, accuracy, weights_checksum(net), shipped)


def _shipped(name: str, channels: int, n_classes: int) -> Classifier:
    """The package's network `name`, after checking its file against the SHA-256 recorded beside it."""
    path = shipped_dir() / f"{name}.pt"
    try:
        record = json.loads((shipped_dir() / f"{name}.json").read_text())
        found = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError) as e:
        raise GansweepError(f"the shipped feature network {name} cannot be read ({type(e).__name__}: {e}); "
                            "reinstall gansweep") from None
    if found != record["sha256"]:
        raise GansweepError(f"{path} has SHA-256 {found}, not the {record['sha256']} it shipped with; "
                            "reinstall gansweep")
    return load_network_file(path, channels, n_classes, shipped=True)


def shipped_records() -> list[dict]:
    """What each shipped network's record says (recipe, accuracies, checksums), for listing and the README."""
    return [json.loads(p.read_text()) for p in sorted(shipped_dir().glob("*.json"))]


def cached_path(dataset: str, data_checksum: str) -> Path:
    return cache_dir() / f"{dataset}-{data_checksum}-v{FEATURE_NET_VERSION}.pt"


def cached_records() -> list[dict]:
    """What `gansweep list datasets` shows of each network trained on this machine, without loading any data."""
    records = []
    for path in sorted(cache_dir().glob(f"*-v{FEATURE_NET_VERSION}.pt")):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            records.append({k: raw[k] for k in ("dataset", "data_checksum", "accuracy", "checksum", "seconds")})
        except Exception:  # unreadable files are retrained when next needed; listing skips them
            continue
    return records


def _cached(path: Path, channels: int, n_classes: int) -> Classifier | None:
    """This machine's network in `path`, or None; a truncated or foreign file is retrained, never trusted."""
    if not path.is_file():
        return None
    try:
        return load_network_file(path, channels, n_classes)
    except GansweepError:
        return None


def get_classifier(data: Dataset, log: bool = True) -> Classifier:
    """The feature network of `data`: the shipped one where there is one, else this machine's, trained and
    cached first if there is none yet."""
    record = data.record
    channels, device = record.image_shape[0], data.train_images.device
    if record.name in SHIPPED:
        return _shipped(SHIPPED[record.name], channels, record.n_classes).to(device)
    path = cached_path(record.name, record.checksum)
    cached = _cached(path, channels, record.n_classes)  # read without the lock: a read-only cache serves too
    if cached is not None:
        return cached.to(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log:
            print(f"waiting for another process that is training the {record.name} feature network "
                  f"({path.parent})", file=sys.stderr, flush=True)
        lock.acquire()
    try:  # two processes needing the network at once: one trains, the other waits and loads it
        cached = _cached(path, channels, record.n_classes)
        if cached is not None:
            return cached.to(device)
        if log:
            print(f"training the {record.name} feature network: no network ships for {record.name}, so its "
                  f"scores compare only with runs scored by this machine's (once per machine, cached in "
                  f"{path.parent})", file=sys.stderr, flush=True)
        from gansweep.feature_training import train_classifier

        started = time.perf_counter()
        classifier = train_classifier(data)
        blob = network_bytes(classifier.net, {"dataset": record.name, "data_checksum": record.checksum,
                                              "accuracy": classifier.accuracy, "checksum": classifier.checksum,
                                              "seconds": time.perf_counter() - started,
                                              "version": FEATURE_NET_VERSION})
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
        if log:
            print(f"trained the {record.name} feature network in {time.perf_counter() - started:.0f} s: "
                  f"accuracy {classifier.accuracy:.3f} on its test split", file=sys.stderr, flush=True)
    finally:
        lock.release()
    return classifier
