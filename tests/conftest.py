from __future__ import annotations

import pytest
import torch

from gansweep.config import DataConfig
from gansweep.data import DataRecord, Dataset, load_dataset

TINY = dict(epochs=1, batch_size=16, hidden=(32,), width=8, z_dim=8, n_samples=16, log_every=4, device="cpu")


def synthetic_dataset(n: int = 96, shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10) -> Dataset:
    """Random images in [-1, 1]: enough to exercise the loop without reading any files."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n, *shape), generator=g) * 2 - 1
    labels = torch.arange(n) % n_classes
    record = DataRecord("synthetic", n, n, shape, n_classes, "0" * 16)
    return Dataset(images, labels, images.clone(), labels.clone(), record)


@pytest.fixture
def tiny_data() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset(DataConfig(dataset="mnist-5k"), "cpu")
