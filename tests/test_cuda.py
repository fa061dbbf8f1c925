"""On a CUDA device: the step captured in a CUDA graph trains what the eager step trains; the step a
population runs there (its members vmapped) trains each member as its run alone on the same device; and a study
records the same trials in populations as one trial at a time. Skipped where torch sees no CUDA device; on the
CPU, test_population holds the same vmapped step to the same runs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from gansweep import step_graph
from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study
from gansweep.trainer import train_population

from test_population import (MEMBERS, Record, StopAt, _alone, _assert_same_run, _configs,
                             interrupted_and_resumed)
from test_study import TINY_STUDY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_data(tiny_data):
    """In double precision, as in test_population: what is compared is the arithmetic, not float32 rounding."""
    torch.set_default_dtype(torch.float64)
    yield _on_cuda(dataclasses.replace(tiny_data, train_images=tiny_data.train_images.double(),
                                       test_images=tiny_data.test_images.double()))
    torch.set_default_dtype(torch.float32)


def _on_cuda(data):
    return dataclasses.replace(data, train_images=data.train_images.cuda(), train_labels=data.train_labels.cuda(),
                               test_images=data.test_images.cuda(), test_labels=data.test_labels.cuda())


# Their step replayed from the graph equals the eager one to the bit. In a convolutional net, cuDNN's kernels inside
# a capture rounded differently in the last bits (seen on an H200: float32 values 1e-7 to 5e-5 apart after 3 to 18
# steps), so those are compared in float64, within the tolerance of test_population.
BIT_FOR_BIT = ("gan", "cgan")


@pytest.mark.parametrize("name", list(MEMBERS))
def test_a_captured_step_trains_what_the_eager_step_trains(monkeypatch, tiny_data, name):
    """A population of three whose member 1 is pruned half-way (so the step is captured again for the two left),
    and a single run, each trained with the step captured and eagerly: every logged value, every weight and the
    sample grid are equal (MLPs, in float32) or within float tolerance (convolutional nets, in float64)."""
    exact = name in BIT_FOR_BIT
    if not exact:
        torch.set_default_dtype(torch.float64)
        tiny_data = dataclasses.replace(tiny_data, train_images=tiny_data.train_images.double(),
                                        test_images=tiny_data.test_images.double())
    replay, replays = torch.cuda.CUDAGraph.replay, []

    def counted(graph: torch.cuda.CUDAGraph) -> None:
        replays.append(graph)
        replay(graph)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    try:
        data = _on_cuda(tiny_data)
        variant, configs = _configs(name, device="cuda")
        if configs[0].n_critic > 1:  # one G step an epoch: enough epochs for several replays of each graph
            configs = [c.replace(epochs=12) for c in configs]

        def trained(capture: bool) -> tuple[list[Record], Record, int]:
            monkeypatch.setattr(step_graph, "CAPTURE_ON_CUDA", capture)
            replays.clear()
            records = [Record() for _ in configs]
            hooks = [[records[0]], [StopAt(configs[1].epochs // 2), records[1]], [records[2]]]
            train_population(variant, configs, data, hooks, [None] * len(configs))
            return records, _alone(variant, configs[0], data), len(replays)

        (captured, captured_alone, replayed), (eager, eager_alone, none) = trained(True), trained(False)
    finally:
        torch.set_default_dtype(torch.float32)
    assert replayed > 0 and none == 0  # the captured runs replayed graphs; the eager ones did not
    assert [r.result.status for r in captured] == ["finished", "pruned", "finished"]
    for a, b in zip([*captured, captured_alone], [*eager, eager_alone]):
        if not exact:
            _assert_same_run(a, b)
            continue
        assert (a.result.status, a.result.steps) == (b.result.status, b.result.steps)
        assert a.metrics == b.metrics
        assert a.weights.keys() == b.weights.keys()
        assert all(torch.equal(a.weights[k], w) for k, w in b.weights.items())
        assert torch.equal(a.samples, b.samples)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_each_member_of_a_population_on_cuda_is_its_run_alone_there(cuda_data, name):
    variant, configs = _configs(name, device="cuda")
    records = [Record() for _ in configs]
    results = train_population(variant, configs, cuda_data, [[r] for r in records], [None] * len(configs))
    assert [r.status for r in results] == ["finished"] * 3
    assert all(w.is_cuda for w in records[0].weights.values())
    for record, config in zip(records, configs):
        _assert_same_run(record, _alone(variant, config, cuda_data))


def test_an_interrupted_population_on_cuda_resumes_from_its_members_checkpoints(tmp_path, cuda_data):
    """test_population's check on CUDA, where the step is captured: the generators the graph draws from are saved
    and put back with each member's checkpoint, and the resumed members go on as if never stopped, within float
    tolerance: the resumed run takes its first steps after the checkpoint eagerly, before capturing, where the
    whole run replayed them, and a convolutional step rounds differently in the two (`BIT_FOR_BIT`)."""
    variant, configs = _configs("wgan-gp", device="cuda")
    whole, resumed, _, steps_per_epoch = interrupted_and_resumed(tmp_path, variant, configs, cuda_data)
    for r, w in zip(resumed, whole):
        assert r.result.steps == w.result.steps
        assert r.metrics.keys() == {key for key in w.metrics if key[1] > 2 * steps_per_epoch}
        for key, value in r.metrics.items():
            assert value == pytest.approx(w.metrics[key], rel=1e-4, abs=1e-5), key
        for key, weight in w.weights.items():
            torch.testing.assert_close(r.weights[key], weight, rtol=1e-4, atol=1e-5, msg=key)


def _study(folder, monkeypatch, population: str):
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "studies").mkdir()
    path = folder / "studies" / "tiny.toml"
    path.write_text(TINY_STUDY.format(extra=""))
    outcome = run_study(load_spec(path), StudyOptions(device="cuda", progress=False, population=population))
    store = resolve_store()
    trials = optuna.load_study(study_name=outcome.optuna_study, storage=store.optuna()).get_trials()
    return outcome, {t.params["lr"]: t for t in trials}, MlflowClient(store.tracking_uri)


def test_a_study_on_cuda_records_the_same_trials_in_one_population_as_one_at_a_time(tmp_path, monkeypatch):
    """In float32 a vmapped kernel rounds differently from a plain one, so the scores agree closely, not exactly."""
    one, one_trials, one_client = _study(tmp_path / "alone", monkeypatch, "1")
    auto, auto_trials, auto_client = _study(tmp_path / "together", monkeypatch, "auto")
    assert one.ran == auto.ran == 3 and one_trials.keys() == auto_trials.keys()
    for lr, trial in one_trials.items():
        other = auto_trials[lr]
        assert (other.state, other.user_attrs["status"], other.user_attrs["g_steps"]) == \
            (trial.state, trial.user_attrs["status"], trial.user_attrs["g_steps"])
        assert (other.user_attrs["population"], trial.user_attrs["population"]) == (3, 1)
        assert other.value == pytest.approx(trial.value, rel=0.02)
        run, other_run = (client.get_run(t.user_attrs["mlflow_run_id"])
                          for client, t in ((one_client, trial), (auto_client, other)))
        assert other_run.info.status == run.info.status == "FINISHED"
        assert other_run.data.params == run.data.params
        assert other_run.data.metrics.keys() == run.data.metrics.keys()
