from pathlib import Path

import pytest
import torch

from gansweep.atomic import atomic_path
from gansweep.checkpoint import CheckpointHook, load_checkpoint, sha256
from gansweep.errors import GansweepError
from gansweep.hooks import Hook
from gansweep.samples import SampleGridHook
from gansweep.trainer import train
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
          [CheckpointHook(tmp_path, "loss", True), SampleGridHook(tmp_path / "samples"), keep])
    loaded = load_checkpoint(tmp_path / "last.pt")
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


class Record(Hook):
    """Every step metric by step, and whether training reached a given step (to interrupt it there)."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.metrics = stop_at, {}

    def on_log(self, state, log):
        for name, values in log.metrics.items():
            for step, value in zip(log.steps, values):
                self.metrics[(name, step)] = value
        if self.stop_at is not None and state.step >= self.stop_at:
            raise KeyboardInterrupt

    def on_end(self, state, result):
        self.g = {k: v.clone() for k, v in state.g.state_dict().items()}
        self.result = result


@pytest.mark.parametrize("name", ["gan", "cdcgan", "wgan-gp"])
def test_a_run_resumed_from_its_checkpoint_equals_the_run_never_stopped(tmp_path, tiny_data, name):
    """Dropout (its own generator), batch order, noise and the penalty's interpolation (the loop's RNG), BatchNorm
    statistics and Adam's moments all come back: the resumed run is the same run, step for step."""
    variant = get_variant(name)
    config = variant.config(**{**TINY, "epochs": 4, "log_every": 1})
    whole = Record()
    train(variant, config, tiny_data, [whole])
    steps_per_epoch = whole.result.steps // 4

    stopped = Record(stop_at=2 * steps_per_epoch + 1)  # in epoch 3, after epoch 2's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(variant, config, tiny_data, [CheckpointHook(tmp_path, "loss", True), stopped])
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["resumable"]
    torch.manual_seed(12345)  # whatever the process did in between does not matter
    resumed = Record()
    train(variant, config, tiny_data, [resumed], resume=saved)

    assert (resumed.result.epochs, resumed.result.steps) == (4, whole.result.steps)
    assert all(torch.equal(resumed.g[k], whole.g[k]) for k in whole.g)
    later = {key: value for key, value in whole.metrics.items() if key[1] > 2 * steps_per_epoch}
    assert resumed.metrics == later


def test_best_is_the_generator_alone_and_changes_only_when_the_objective_improves(tmp_path, tiny_data):
    class Objective(Hook):  # a made-up objective: 3, 1, 2 over the epochs, so epoch 2 is the best
        def on_epoch_end(self, state):
            state.scores["score/x"] = [3.0, 1.0, 2.0][state.epoch - 1]

    saved = []
    hook = CheckpointHook(tmp_path, "score/x", True, lambda state, paths: saved.append(
        (state.epoch, sorted(p.name for p in paths), {p.name: sha256(p) for p in paths})))
    train(get_variant("gan"), get_variant("gan").config(**{**TINY, "epochs": 3}), tiny_data, [Objective(), hook])
    assert [(epoch, names) for epoch, names, _ in saved] == [(1, ["best.pt", "last.pt"]), (2, ["best.pt", "last.pt"]),
                                                             (3, ["last.pt"])]
    best, last = (torch.load(tmp_path / f, weights_only=True) for f in ("best.pt", "last.pt"))
    assert best["epoch"] == 2 and last["epoch"] == 3 and not best["resumable"]
    assert set(best) < set(last) and "d" not in best and "opt_g" not in best
    assert (tmp_path / "best.pt").stat().st_size < (tmp_path / "last.pt").stat().st_size / 2
    assert load_checkpoint(tmp_path / "best.pt").epoch == 2


def test_a_checkpoint_that_is_not_the_recorded_one_is_refused(tmp_path, tiny_data):
    train(get_variant("gan"), get_variant("gan").config(**TINY), tiny_data, [CheckpointHook(tmp_path, "loss", True)])
    path = tmp_path / "last.pt"
    recorded = sha256(path)
    assert load_checkpoint(path, expected_sha256=recorded).epoch == 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit's worth of damage
    path.write_bytes(bytes(data))
    with pytest.raises(GansweepError, match="SHA-256 differs"):
        load_checkpoint(path, expected_sha256=recorded)
    path.write_bytes(bytes(data[:len(data) // 3]))  # truncated, as a full disk leaves it
    with pytest.raises(GansweepError, match="SHA-256 differs"):
        load_checkpoint(path, expected_sha256=recorded)


def test_a_run_resumed_after_its_last_epoch_or_its_stop_ends_as_it_did(tmp_path, tiny_data):
    """Killed after the last checkpoint but before its trial was told: the resumed run trains nothing more and
    reports what the run had (its scores, notes, status), so its point is recorded as done, with its value."""
    from gansweep.hooks import StopTraining

    class Scores(Hook):
        def on_epoch_end(self, state):
            state.scores["score/x"] = float(state.epoch)
            state.notes["seen"] = f"epoch {state.epoch}"
            if state.epoch == self.stop_at:
                raise StopTraining("pruned", "told to stop")

        def __init__(self, stop_at=None):
            self.stop_at = stop_at

    variant = get_variant("gan")
    config = variant.config(**{**TINY, "epochs": 3})
    for stop_at, status, epochs in ((None, "finished", 3), (2, "pruned", 2)):
        done = train(variant, config, tiny_data, [Scores(stop_at), CheckpointHook(tmp_path, "score/x", True)])
        saved = torch.load(tmp_path / "last.pt", weights_only=True)
        again = train(variant, config, tiny_data, [Scores(stop_at)], resume=saved)
        assert (again.status, again.reason, again.epochs, again.steps) == (status, done.reason, epochs, done.steps)
        assert again.scores == done.scores and again.notes == done.notes and again.last == done.last


def _store_dying_at(uri, at, epoch):
    """The real sqlite store, where a process dies (SystemExit, as SIGKILL would stop it) while it records
    last.pt at `epoch`: at its upload (`at="upload"`), or at its checksum tag just after (`at="tag"`)."""
    from mlflow.tracking import MlflowClient

    class Dying(MlflowClient):
        epoch_now = 0

        def log_artifact(self, run_id, local_path, artifact_path=None):
            if at == "upload" and self.epoch_now == epoch and Path(local_path).name == "last.pt":
                raise SystemExit("killed during the upload")
            return super().log_artifact(run_id, local_path, artifact_path)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
            if at == "tag" and self.epoch_now == epoch and any(t.key == "gansweep.sha256.last.pt" for t in tags):
                raise SystemExit("killed after the upload")
            return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    return Dying(uri)


@pytest.mark.parametrize("at, epoch_in_the_run", [("upload", 1), ("tag", 2)])
def test_a_process_killed_while_it_records_a_checkpoint_leaves_one_that_resumes(tmp_path, tiny_data, at,
                                                                                epoch_in_the_run):
    """Killed at epoch 2's checkpoint: before its file lands, the run keeps epoch 1's, as its checksum says; after
    the file lands and before its checksum is tagged, the run holds epoch 2's, described by the digest tagged
    before the upload. Either way what the run holds is whole and is read back for a resume."""
    from gansweep.mlflow_hook import MlflowHook
    from gansweep.resume import fetch_checkpoint
    from gansweep.tracking import client_for, experiment_id

    uri = f"sqlite:///{tmp_path}/store.db"
    client_for(uri)
    store = _store_dying_at(uri, at, epoch=2)
    run_id = store.create_run(experiment_id(store, "killed")).info.run_id
    work = tmp_path / "work"
    work.mkdir()

    class Epoch(Hook):
        def on_epoch_end(self, state):
            store.epoch_now = state.epoch

    variant = get_variant("gan")
    tracking = MlflowHook(store, run_id, work, "loss", {})
    hooks = [Epoch(), tracking, CheckpointHook(work, "loss", True, on_saved=tracking.checkpoints_saved)]
    with pytest.raises(SystemExit):
        train(variant, variant.config(**{**TINY, "epochs": 3}), tiny_data, hooks)
    path, recorded = fetch_checkpoint(client_for(uri), run_id, "last.pt", tmp_path / "fetched")
    assert recorded == sha256(path)
    assert load_checkpoint(path, expected_sha256=recorded).epoch == epoch_in_the_run
