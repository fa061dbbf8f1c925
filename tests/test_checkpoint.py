from pathlib import Path

import pytest
import torch

from gansweep.atomic import atomic_path
from gansweep.checkpoint import CheckpointHook, load_checkpoint
from gansweep.errors import GansweepError
from gansweep.samples import SampleGridHook
from gansweep.trainer import Hook, train
from gansweep.variants import get_variant

from conftest import TINY


class KeepState(Hook):
    def on_end(self, state, result):
        self.state = state


@pytest.mark.parametrize("name", ["gan", "cdcgan"])
def test_checkpoint_round_trip_reproduces_the_generator(tmp_path, tiny_data, name):
    variant = get_variant(name)
    keep = KeepState()
    train(variant, variant.config(**{**TINY, "epochs": 2}), tiny_data,
          [CheckpointHook(tmp_path / "checkpoint.pt"), SampleGridHook(tmp_path / "samples"), keep])
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (loaded.variant.name, loaded.epoch, loaded.step) == (name, 2, keep.state.step)
    assert loaded.config == keep.state.config
    assert torch.equal(loaded.g(keep.state.fixed_z, keep.state.fixed_labels), keep.state.fixed_samples())
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GansweepError, match="not a readable gansweep checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(GansweepError, match="no checkpoint at"):
        load_checkpoint(Path(tmp_path / "missing.pt"))


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "grid.png") as tmp:
        tmp.write_bytes(b"png")
    assert stat.S_IMODE((tmp_path / "grid.png").stat().st_mode) == 0o666 & ~umask
