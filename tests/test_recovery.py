"""Every way a study's process can die costs at most the epoch under way: real `gansweep study` processes are
killed, interrupted and terminated, their store's files torn, and what is left is read back through Optuna's and
MLflow's own APIs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from gansweep.export import export_table
from gansweep.population import Population
from gansweep.search import stopped_search_trial
from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study
from gansweep.tracking import client_for

GANSWEEP = Path(sys.executable).with_name("gansweep")

STUDY = """
name = "{name}"
description = "a tiny MLP GAN, long enough per trial to be stopped in the middle"
variants = ["gan"]
dataset = "mnist-5k"
epochs = {epochs}
batch_size = 200
n_eval = 200
objective = {{ metric = "fid_proxy", direction = "minimize" }}
sampler = "{sampler}"
pruner = "none"
seeds = [0]
{extra}

[config]
hidden = [32]
z_dim = 8
n_samples = 16
log_every = 5

[space]
lr = {lr}
"""


def write_study(folder: Path, name: str = "long", epochs: int = 12, lr: str = "[2e-4, 1e-3]",
                sampler: str = "grid", extra: str = "") -> Path:
    (folder / "studies").mkdir(parents=True, exist_ok=True)
    path = folder / "studies" / f"{name}.toml"
    path.write_text(STUDY.format(name=name, epochs=epochs, lr=lr, sampler=sampler, extra=extra))
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch, mnist5k_classifier):
    """An empty working folder holding the study file; the store is `store/` in it. The feature network is
    trained before any process starts, so no two train it at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GANSWEEP_STORE", str(tmp_path / "store"))
    write_study(tmp_path)
    return tmp_path


def start(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(folder / "tmp")}
    (folder / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([str(GANSWEEP), "study", "long", "--device", "cpu", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def client() -> MlflowClient:
    """Under the store's lock, like every gansweep process: a study starting meanwhile may be creating the
    tables."""
    return client_for(resolve_store().tracking_uri)


def study(name: str = "long") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=resolve_store().optuna())


def child_runs() -> list:
    experiment = client().get_experiment_by_name("long")
    if experiment is None:
        return []
    return [r for r in client().search_runs([experiment.experiment_id]) if r.data.tags["gansweep.role"] == "trial"]


def wait_for_checkpoint(process: subprocess.Popen, trial: int, epoch: int, timeout: float = 300) -> None:
    """Until the child run of `trial` has logged its checkpoint of `epoch`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if Path(resolve_store().storage).exists():
            for run in child_runs():
                if (run.data.tags.get("gansweep.trial") == str(trial)
                        and int(run.data.tags.get("gansweep.checkpoint_epoch", 0)) >= epoch):
                    return
        time.sleep(0.3)
    pytest.fail(f"trial {trial} did not reach epoch {epoch}")


def history(run_id: str) -> dict[str, dict[int, float]]:
    """Every metric of a run by step, the latest value where a step was logged twice (the epoch a resumed run
    did again); timings left out."""
    c = client()
    metrics = {}
    for name in c.get_run(run_id).data.metrics:
        if name.startswith("perf/"):
            continue
        by_step = {}
        for m in sorted(c.get_metric_history(run_id, name), key=lambda m: m.timestamp):
            by_step[m.step] = m.value
        metrics[name] = by_step
    return metrics


def left_behind(tmp: Path) -> list[Path]:
    """What a process left in its temporary folder, but torch's own compile cache (`torchinductor_USER`, made
    whenever torch.optim imports torch._dynamo), which torch keeps there on purpose."""
    return [p for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]


def nothing_running() -> None:
    assert not [t.number for t in study().trials if t.state == TrialState.RUNNING]
    assert not [r.info.run_id for r in child_runs() if r.info.status == "RUNNING"]


def reference(folder: Path, lr: float) -> dict[str, dict[int, float]]:
    """The same point run whole, never stopped, in a store of its own."""
    other = folder / "reference"
    write_study(other, lr=f"[{lr}]")
    os.environ["GANSWEEP_STORE"] = str(other / "store")
    try:
        outcome = run_study(load_spec(other / "studies" / "long.toml"), StudyOptions(device="cpu", progress=False))
        return history(outcome.table["run_id"][0])
    finally:
        os.environ["GANSWEEP_STORE"] = str(folder / "store")


def test_a_killed_worker_s_point_runs_again_from_its_checkpoint_into_the_same_run(folder):
    process = start(folder)
    wait_for_checkpoint(process, trial=1, epoch=3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = [t for t in study().trials if t.state == TrialState.RUNNING]
    killed_run = killed.user_attrs["mlflow_run_id"]

    process = start(folder)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "1 trial(s) run now, 2 in all; the table leaves out 1 earlier attempt(s)" in out  # the killed point
    assert not left_behind(folder / "tmp")  # the killed process's temporary folder is gone too
    trials = study().trials
    lost = trials[killed.number]
    assert lost.state == TrialState.FAIL and "status" not in lost.user_attrs  # failed by the next process
    (resumed,) = [t for t in trials if t.user_attrs.get("resumed_from") == killed.number]
    assert resumed.state == TrialState.COMPLETE and resumed.params == killed.params
    assert resumed.user_attrs["mlflow_run_id"] == killed_run and resumed.user_attrs["resumed_at_epoch"] >= 3
    run = client().get_run(killed_run)
    assert run.info.status == "FINISHED" and run.data.tags["gansweep.trial"] == str(resumed.number)
    assert run.info.run_name.endswith(f" #{resumed.number:03d}") and resumed.number != killed.number
    assert sorted(t.params["lr"] for t in trials if t.state == TrialState.COMPLETE) == [2e-4, 1e-3]
    nothing_running()
    parents = [r for r in client().search_runs([run.info.experiment_id]) if r.data.tags["gansweep.role"] == "parent"]
    assert [p.info.status for p in parents] == ["FINISHED"]

    whole = reference(folder, killed.params["lr"])
    resumed_history = history(killed_run)
    assert resumed_history.keys() == whole.keys()
    for name in whole:
        assert resumed_history[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-6), name
    assert resumed.value == pytest.approx(whole["score/fid_proxy"][12], rel=1e-5)


def test_temporary_files_made_while_runs_train_live_in_the_process_s_folder_which_outlives_no_process(
        tmp_path, monkeypatch, tiny_data):
    """MLflow writes each logged sample image through a temporary folder of its own; a process killed inside
    one cannot remove it. While runs train, every temporary file goes into a `gansweep-run-PID-` folder of the
    process: removed at the end, and by the next run on the machine when the process was killed."""
    import tempfile

    from gansweep.evaluation import Evaluator
    from gansweep.feature_training import Recipe, train_classifier
    from gansweep.hooks import Hook
    from gansweep.runs import tracked_training
    from gansweep.tracking import experiment_id
    from gansweep.variants import get_variant

    from conftest import TINY

    tmp = tmp_path / "tmp"
    dead = tmp / "gansweep-run-999999999-x"  # beyond any pid: a process that is gone
    (dead / "tmpmlflow").mkdir(parents=True)
    alive = tmp / f"gansweep-run-{os.getppid()}-x"  # pytest's parent: alive
    alive.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    class Scratch(Hook):
        """Makes a temporary folder at each epoch's end, as a library would."""

        def __init__(self):
            self.made = []

        def on_epoch_end(self, state):
            self.made.append(Path(tempfile.mkdtemp()))

    scratch = Scratch()
    evaluator = Evaluator(train_classifier(tiny_data, Recipe(epochs=1)), tiny_data, 32)
    store = client_for(f"sqlite:///{tmp_path}/store.db")
    run_id = store.create_run(experiment_id(store, "scratch")).info.run_id
    variant = get_variant("gan")
    result = tracked_training(store, run_id, variant, variant.config(**{**TINY, "epochs": 2}), tiny_data,
                              evaluator, "fid_proxy", {}, [scratch])
    assert result.status == "finished" and len(scratch.made) == 2
    for made in scratch.made:
        assert made.parent.name.startswith(f"gansweep-run-{os.getpid()}-") and made.parent.parent == tmp
        assert not made.exists()
    assert tempfile.tempdir == str(tmp)  # as it was before
    assert sorted(p.name for p in tmp.iterdir()) == [alive.name]  # the dead process's folder is gone


def test_ctrl_c_then_the_same_command_resumes_and_equals_a_run_never_stopped(folder):
    process = start(folder)
    wait_for_checkpoint(process, trial=0, epoch=4)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command to continue" in err and "Traceback" not in err
    (stopped,) = study().trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"
    nothing_running()

    again = start(folder)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "resumed at epoch" in err
    (resumed,) = [t for t in study().trials if t.user_attrs.get("resumed_from") == stopped.number]
    assert resumed.user_attrs["mlflow_run_id"] == stopped.user_attrs["mlflow_run_id"]
    whole = reference(folder, stopped.params["lr"])
    got = history(stopped.user_attrs["mlflow_run_id"])
    assert got.keys() == whole.keys()
    for name in whole:
        assert got[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-6), name
    artifacts = {a.path for a in client().list_artifacts(stopped.user_attrs["mlflow_run_id"], "samples")}
    assert {f"samples/epoch_{e:03d}.png" for e in range(1, 13)} | {"samples/grids.gif"} == artifacts


def test_a_point_stopped_before_its_first_checkpoint_starts_over_and_counts_once(folder, monkeypatch):
    """Trial 0 is interrupted at its first step, so it leaves no checkpoint; the next invocation starts its point
    over in a new run. Every table shows each point once, by its latest trial, and says it left one out; the
    stopped run stays in MLflow as it ended."""
    spec = load_spec(write_study(folder, epochs=1))
    step = Population.step

    def interrupted_once(self: Population, *args: object) -> object:
        monkeypatch.setattr(Population, "step", step)
        raise KeyboardInterrupt

    monkeypatch.setattr(Population, "step", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, StudyOptions(device="cpu", progress=False))
    (stopped,) = study().trials
    assert stopped.user_attrs["status"] == "interrupted"

    outcome = run_study(spec, StudyOptions(device="cpu", progress=False))
    trials = study().trials
    assert len(trials) == 3 and outcome.table.attrs["replaced"] == 1
    assert sorted(zip(outcome.table["lr"], outcome.table["status"])) == [(2e-4, "finished"), (1e-3, "finished")]
    assert stopped.number not in set(outcome.table["trial"])
    stopped_run = client().get_run(stopped.user_attrs["mlflow_run_id"])
    assert stopped_run.info.status == "KILLED" and stopped_run.data.tags["gansweep.status"] == "interrupted"
    assert len(child_runs()) == 3

    exported = export_table(resolve_store().tracking_uri, study="long", group_by=("lr",))
    assert exported.attrs["replaced"] == 1
    assert sorted(zip(exported["lr"], exported["n"], exported["not_finished"])) == [(2e-4, 1, 0), (1e-3, 1, 0)]
    process = subprocess.run([str(GANSWEEP), "study", "long", "--device", "cpu"], cwd=folder, text=True,
                             capture_output=True, timeout=600)
    assert process.returncode == 0, process.stderr
    assert "0 trial(s) run now, 2 in all; the table leaves out 1 earlier attempt(s)" in process.stdout
    process = subprocess.run([str(GANSWEEP), "sample", stopped_run.info.run_id], cwd=folder, text=True,
                             capture_output=True, timeout=600)
    assert process.returncode == 2 and process.stderr.strip() == (
        f"Error: run {stopped_run.info.run_id[:8]} has no checkpoint: it ended (interrupted: interrupted by the "
        f"user) before its first epoch did")


def test_a_run_without_a_checkpoint_says_why_and_an_older_run_s_checkpoint_is_still_read(tmp_path):
    """Hand-made runs: one interrupted before its first epoch (no file, no checkpoint tag) is told in one line; one
    of a gansweep before checkpoints were tagged has its file and no tag, and the file is read."""
    from gansweep.errors import GansweepError
    from gansweep.resume import fetch_checkpoint

    c = MlflowClient(f"sqlite:///{tmp_path}/hand.db")
    experiment = c.create_experiment("hand", artifact_location=(tmp_path / "artifacts").as_uri())
    stopped = c.create_run(experiment, tags={"gansweep.role": "trial", "gansweep.status": "interrupted"}).info.run_id
    with pytest.raises(GansweepError) as error:
        fetch_checkpoint(c, stopped, "last.pt", tmp_path)
    assert str(error.value) == f"run {stopped[:8]} has no checkpoint: it ended (interrupted) before its first epoch did"
    older = c.create_run(experiment, tags={"gansweep.role": "trial"}).info.run_id
    (tmp_path / "last.pt").write_bytes(b"saved")
    c.log_artifact(older, str(tmp_path / "last.pt"), "checkpoints")
    path, recorded = fetch_checkpoint(c, older, "last.pt", tmp_path / "read")
    assert path.read_bytes() == b"saved" and recorded is None


def test_sigterm_records_the_trial_and_leaves_nothing_running(folder):
    process = start(folder)
    wait_for_checkpoint(process, trial=0, epoch=1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "terminated by SIGTERM" in err and "Traceback" not in err
    (trial,) = study().trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "terminated by SIGTERM"
    run = client().get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["gansweep.reason"] == "terminated by SIGTERM"
    nothing_running()
    parents = [r for r in client().search_runs([run.info.experiment_id]) if r.data.tags["gansweep.role"] == "parent"]
    assert [p.info.status for p in parents] == ["KILLED"]


def test_a_torn_last_journal_line_is_set_aside_and_the_study_goes_on(folder):
    spec = load_spec(write_study(folder, epochs=1, lr="[1e-4, 3e-4, 1e-3]"))
    run_study(spec, StudyOptions(trials=1, device="cpu", progress=False))
    journal = Path(resolve_store().storage)
    whole = journal.read_bytes()
    torn = b'{"op_code":4,"worker_id":"dead","trial_id":0,"user_at'
    journal.write_bytes(whole + torn)

    process = subprocess.run([str(GANSWEEP), "study", "long", "--device", "cpu"], cwd=folder, text=True,
                             capture_output=True, timeout=600)
    assert process.returncode == 0, process.stderr
    warnings = [line for line in process.stderr.splitlines() if "torn line" in line]
    assert len(warnings) == 1 and f"({len(torn)} bytes" in warnings[0]
    (backup,) = journal.parent.glob("optuna.journal.torn-*")
    assert backup.read_bytes() == whole + torn  # the whole file, as it was
    assert journal.read_bytes().startswith(whole)
    assert sorted(t.params["lr"] for t in study().trials if t.state == TrialState.COMPLETE) == [1e-4, 3e-4, 1e-3]


def test_six_processes_creating_one_new_sqlite_storage_all_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    code = ("import sys, time; from gansweep.store import resolve_store; s = resolve_store(sys.argv[1], "
            "storage=sys.argv[2]); time.sleep(max(0, float(sys.argv[3]) - time.time())); s.optuna()")
    at = str(time.time() + 4)  # all six open the storage at the same moment, once their imports are done
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), url, at], stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, errors
    optuna.create_study(study_name="ok", storage=url)
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["ok"]


def test_a_sampled_study_is_reproducible_alone_and_new_in_every_other_process(folder):
    extra = "trials = 3"
    spec = load_spec(write_study(folder, name="search", epochs=1, sampler="random", extra=extra,
                                 lr="{ low = 1e-5, high = 1e-2, log = true }"))
    first = run_study(spec, StudyOptions(device="cpu", progress=False))
    lrs = [t.params["lr"] for t in study("search").trials]

    os.environ["GANSWEEP_STORE"] = str(folder / "other")
    try:
        run_study(spec, StudyOptions(device="cpu", progress=False))
        assert [t.params["lr"] for t in study("search").trials] == lrs  # one process: the recorded seed
        assert study("search").user_attrs["sampler_seed"] == 0
    finally:
        os.environ["GANSWEEP_STORE"] = str(folder / "store")
    more = run_study(spec, StudyOptions(trials=6, device="cpu", progress=False))
    assert more.parent_run_id == first.parent_run_id and more.ran == 3
    later = [t.params["lr"] for t in study("search").trials][3:]
    assert len(set(later) | set(lrs)) == 6  # a resume draws points of its own


def test_a_sampled_study_s_stopped_trial_is_asked_again_and_resumes_from_its_checkpoint(folder, monkeypatch):
    """A random-search trial stopped in its second epoch: the next invocation asks the sampler's point again, with
    its seed, and continues it from its epoch-1 checkpoint into the same run, before drawing the second point;
    the tables show two trials."""
    spec = load_spec(write_study(folder, name="search", epochs=3, sampler="random", extra="trials = 2",
                                 lr="{ low = 1e-5, high = 1e-2, log = true }"))
    step, calls = Population.step, []

    def interrupted_in_epoch_2(self: Population, *args: object) -> object:
        calls.append(1)
        if len(calls) == 30:  # 20 G steps an epoch: 4,000 images, batches of 200
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(Population, "step", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, StudyOptions(device="cpu", progress=False))
    monkeypatch.setattr(Population, "step", step)
    (stopped,) = study("search").trials
    assert stopped.user_attrs["status"] == "interrupted"

    outcome = run_study(spec, StudyOptions(device="cpu", progress=False))
    again, fresh = study("search").trials[1:]
    assert again.params == stopped.params and again.user_attrs["seed"] == stopped.user_attrs["seed"]
    assert again.user_attrs["resumed_from"] == stopped.number and again.user_attrs["resumed_at_epoch"] == 1
    assert again.user_attrs["mlflow_run_id"] == stopped.user_attrs["mlflow_run_id"]
    assert again.state == fresh.state == TrialState.COMPLETE and fresh.params != stopped.params
    assert sorted(outcome.table["trial"]) == [again.number, fresh.number] and outcome.table.attrs["replaced"] == 1
    epochs = [m.step for m in client().get_metric_history(again.user_attrs["mlflow_run_id"], "score/fid_proxy")]
    assert sorted(set(epochs)) == [1, 2, 3]


def test_which_stopped_search_trial_is_asked_again():
    """Optuna's own trials: a point done once and stopped on a repeat is held; a point stopped twice is asked
    again once, by its latest attempt; a trial that died before suggesting (no seed) has no point to ask;
    a point whose later attempt failed on its values is not asked again; other variants are not looked at."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    def made(number, lr, state, variant="gan", seed=0, **attrs):
        params = {"variant": variant} if lr is None else {"variant": variant, "lr": lr}
        dists = {"variant": CategoricalDistribution(["gan", "dcgan"]), "lr": FloatDistribution(1e-5, 1e-2)}
        user = {"phase": "search", **({} if seed is None else {"seed": seed}), **attrs}
        trial = create_trial(state=state, params=params, distributions={k: dists[k] for k in params},
                             user_attrs=user, value=1.0 if state == TrialState.COMPLETE else None)
        trial.number = number
        return trial

    interrupted = {"status": "interrupted"}
    trials = [made(0, 1e-3, TrialState.COMPLETE, status="finished"), made(1, 1e-3, TrialState.FAIL, **interrupted),
              made(2, 2e-3, TrialState.FAIL, **interrupted), made(3, 2e-3, TrialState.FAIL),  # lost: no status
              made(4, 3e-3, TrialState.FAIL, seed=None), made(5, None, TrialState.FAIL, seed=None),
              made(6, 4e-3, TrialState.FAIL, **interrupted), made(7, 4e-3, TrialState.FAIL, status="failed"),
              made(8, 5e-3, TrialState.FAIL, variant="dcgan", **interrupted)]
    assert stopped_search_trial(trials, "gan", ["lr"]).number == 3
    assert stopped_search_trial(trials[:3] + trials[4:], "gan", ["lr"]).number == 2
    assert stopped_search_trial(trials + [made(9, 2e-3, TrialState.RUNNING)], "gan", ["lr"]) is None
    assert stopped_search_trial(trials, "dcgan", ["lr"]).number == 8


def full_disk_scenario(folder: Path, facts: Path) -> None:
    """Run as root in a private mount namespace: the store is a small tmpfs that fills in the middle of a study,
    then space is freed and the same command run again. What is found goes to `facts` (outside the tmpfs)."""
    import json

    from gansweep.checkpoint import sha256
    from gansweep.tracking import checksum_tag

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    store = folder / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(store)], check=True)
    first = start(folder)
    wait_for_checkpoint(first, trial=0, epoch=2)
    with open(store / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (1 << 16))
                filler.flush()
        except OSError:
            pass
    _, first_err = first.communicate(timeout=300)
    (store / "filler").unlink()
    second = start(folder)
    second_out, second_err = second.communicate(timeout=600)
    checkpoints = {}
    for run in child_runs():
        for artifact in client().list_artifacts(run.info.run_id, "checkpoints"):
            local = client().download_artifacts(run.info.run_id, artifact.path, str(folder / "tmp"))
            checkpoints[f"{run.info.run_id[:8]}/{artifact.path}"] = (
                sha256(Path(local)) == run.data.tags.get(checksum_tag(Path(artifact.path).name)))
    facts.write_text(json.dumps({
        "first": [first.returncode, first_err], "second": [second.returncode, second_out + second_err],
        "states": [[t.number, t.state.name, t.user_attrs.get("status")] for t in study().trials],
        "complete": sorted(t.params["lr"] for t in study().trials if t.state == TrialState.COMPLETE),
        "resumed_at": [t.user_attrs["resumed_at_epoch"] for t in study().trials if "resumed_at_epoch" in t.user_attrs],
        "running": [t.number for t in study().trials if t.state == TrialState.RUNNING],
        "runs_running": [r.info.run_id for r in child_runs() if r.info.status == "RUNNING"],
        "checkpoints": checkpoints}))


def test_a_disk_that_fills_mid_study_costs_no_point(folder):
    import json
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("a small tmpfs needs root and a private mount namespace (unshare -m) here")
    facts = folder / "facts.json"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_recovery; "
            f"from pathlib import Path; test_recovery.full_disk_scenario(Path({str(folder)!r}), Path({str(facts)!r}))")
    done = subprocess.run(["unshare", "-m", sys.executable, "-c", code], cwd=folder, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    found = json.loads(facts.read_text())
    rc, err = found["first"]
    assert rc == 1 and "disk is full" in err and "Traceback" not in err, err
    assert found["second"][0] == 0, found["second"][1]
    assert found["complete"] == [2e-4, 1e-3], found["states"]
    assert len(found["resumed_at"]) == 1 and found["resumed_at"][0] >= 2  # it lost at most the epoch under way
    assert found["running"] == [] and found["runs_running"] == []
    assert found["checkpoints"] and all(found["checkpoints"].values()), found["checkpoints"]


def test_commands_that_read_a_checkpoint_check_it_and_leave_nothing_behind(folder):
    spec = load_spec(write_study(folder, epochs=1, lr="[1e-3]"))
    run_id = run_study(spec, StudyOptions(device="cpu", progress=False)).table["run_id"][0]
    tmp = folder / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    for command in (["sample", run_id, "-o", "a.png"], ["interpolate", run_id, "-o", "b.png"],
                    ["evaluate", run_id, "--n", "100"]):
        done = subprocess.run([str(GANSWEEP), *command], cwd=folder, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert not left_behind(tmp), command  # the download went with the command

    artifact = Path(client().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.pt"
    artifact.write_bytes(artifact.read_bytes()[:-100])  # truncated after it was recorded
    done = subprocess.run([str(GANSWEEP), "sample", run_id, "-o", "c.png"], cwd=folder, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and not (folder / "c.png").exists()
    assert done.stderr.strip().splitlines() == ["Error: last.pt is not the checkpoint its run recorded (SHA-256 "
                                                "differs: truncated or altered since it was written); try the run's "
                                                "other checkpoint"]


def test_the_recorded_commit_is_gansweep_s_own(tmp_path, monkeypatch):
    import gansweep
    from gansweep.tracking import git_commit

    repo = tmp_path / "project"
    installed = repo / ".venv" / "site-packages" / "gansweep"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    for command in (["init", "-q"], ["-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty",
                                      "-m", "a project that holds a virtual environment"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    monkeypatch.setattr(gansweep, "__file__", str(installed / "__init__.py"))
    assert git_commit() is None  # the project's commit is not gansweep's

    checkout = repo / "gansweep-checkout"
    (checkout / "gansweep").mkdir(parents=True)
    (checkout / "gansweep" / "__init__.py").write_text("")
    subprocess.run(["git", "init", "-q"], cwd=checkout, check=True)
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "g"],
                   cwd=checkout, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(gansweep, "__file__", str(checkout / "gansweep" / "__init__.py"))
    assert git_commit() == head


def test_importing_the_study_module_loads_neither_torch_nor_mlflow():
    code = "import sys, gansweep.study; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_running_trial_is_dead_only_once_nothing_keeps_it_alive(tmp_path, monkeypatch, kind):
    """A trial inside `alive` is never failed; one whose lease was let go (its process ended) is failed at once on
    the journal, and one that names no lease or heartbeat (an older gansweep left it, or its process died right
    after ask) once GRACE_S has passed."""
    import gansweep.liveness as liveness

    store = resolve_store(str(tmp_path), storage=f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else None)
    storage = store.optuna()
    keeper = liveness.Liveness(storage, Path(store.storage) if kind == "journal" else None)
    s = optuna.create_study(study_name="x", storage=storage)
    s.ask()  # the orphan: no lease, no heartbeat
    held = s.ask()
    with keeper.alive(held):
        keeper.fail_dead(s)
        assert [t.state for t in s.trials] == [TrialState.RUNNING, TrialState.RUNNING]  # within the grace
        monkeypatch.setattr(liveness, "GRACE_S", -1)
        keeper.fail_dead(s)
        assert [t.state for t in s.trials] == [TrialState.FAIL, TrialState.RUNNING]
        assert liveness.is_lost(s.trials[0])
    if kind == "journal":  # its lease is free now, as when the process holding it dies
        keeper.fail_dead(s)
        assert s.trials[1].state == TrialState.FAIL and liveness.is_lost(s.trials[1])


def test_a_worker_taken_for_dead_gives_its_point_up_and_goes_on(folder, monkeypatch, capsys):
    """Another process fails a trial as lost while this one still trains it (its heartbeat lapsed: a suspended
    machine, a database out of reach). When this one comes to record it, it says so in one line and goes on with
    the study instead of dying; the point runs again, and the study ends whole, with nothing RUNNING."""
    from gansweep.outcomes import Outcomes

    write_study(folder, epochs=2)
    record = Outcomes.record

    def taken_over_first(self, trial, result):
        if trial.number == 0:  # as another process would: through a storage of its own
            optuna.load_study(study_name="long", storage=resolve_store().optuna()).tell(0, state=TrialState.FAIL)
        return record(self, trial, result)

    monkeypatch.setattr(Outcomes, "record", taken_over_first)
    outcome = run_study(load_spec(folder / "studies" / "long.toml"), StudyOptions(device="cpu", progress=False))
    err = capsys.readouterr().err
    assert "trial 0 was ended by another process while this one trained it" in err and "Traceback" not in err
    assert "summary could not be logged" not in err  # two rows of one run (stopped, then resumed): one sheet entry
    summary = {a.path for a in client().list_artifacts(outcome.parent_run_id, "summary")}
    assert summary == {"summary/trials.csv", "summary/sensitivity.png", "summary/contact_sheet.png"}
    trials = study().trials
    assert trials[0].state == TrialState.FAIL and "status" not in trials[0].user_attrs  # lost, not recorded here
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [2e-4, 1e-3]
    (resumed,) = [t for t in done if t.user_attrs.get("resumed_from") == 0]  # from its last checkpoint, in its run
    assert resumed.user_attrs["mlflow_run_id"] == trials[0].user_attrs["mlflow_run_id"]
    finished = outcome.table[outcome.table["status"] == "finished"]
    assert sorted(finished["run_id"]) == sorted(t.user_attrs["mlflow_run_id"] for t in done)
    nothing_running()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_an_enqueued_trial_nobody_asked_for_is_ended_once_the_study_is_done(folder, kind):
    """Processes asking at once can take each other's enqueued trials and leave one WAITING (a point they have
    all done by then). The process that finds nothing left to hand out ends it as a duplicate: no trial of a
    done study waits for ever, and its table is the same."""
    write_study(folder, epochs=1, lr="[2e-4]")
    storage = f"sqlite:///{folder / 'store' / 'optuna.db'}" if kind == "sqlite" else None
    options = StudyOptions(device="cpu", progress=False, storage=storage)
    spec = load_spec(folder / "studies" / "long.toml")
    first = run_study(spec, options)
    shared = optuna.load_study(study_name="long", storage=resolve_store(storage=storage).optuna())
    shared.enqueue_trial({"variant": "gan", "lr": 2e-4}, user_attrs={"seed": 0})  # as a lost race leaves one
    assert [t.state for t in shared.trials] == [TrialState.COMPLETE, TrialState.WAITING]

    again = run_study(spec, options)
    trials = optuna.load_study(study_name="long", storage=resolve_store(storage=storage).optuna()).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["status"] == "duplicate" and "never asked for" in trials[1].user_attrs["reason"]
    assert again.ran == 0 and again.table.equals(first.table)


def test_a_process_stopped_while_it_creates_a_new_store_leaves_no_broken_one(tmp_path):
    """MLflow builds a new sqlite store's tables in two goes (create, then migrate) over a second or two. A process
    that dies in between leaves no half-built store that every later command fails on: the next one starts as
    on an empty folder."""
    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    code = ("import os, mlflow.store.db.utils as u\n"
            "u._upgrade_db = lambda engine: os._exit(9)  # dies between creating the tables and migrating them\n"
            f"from gansweep.tracking import client_for; client_for({uri!r})\n")
    died = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr
    assert not (store / "mlflow.db").exists()

    client = client_for(uri)
    run = client.create_run(client.create_experiment("after")).info.run_id
    client.log_metric(run, "m", 1.0)
    assert MlflowClient(uri).get_run(run).data.metrics == {"m": 1.0}
    assert sorted(p.name for p in store.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
