"""On a CUDA device, the step a population runs there (its members vmapped) trains each member as its run alone on
the same device, and a study records the same trials in populations as one trial at a time. Skipped where torch
sees no CUDA device; on the CPU, test_population holds the same vmapped step to the same runs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study
from gansweep.trainer import train_population

from test_population import MEMBERS, Record, _alone, _assert_same_run, _configs
from test_study import TINY_STUDY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_data(tiny_data):
    """In double precision, as in test_population: what is compared is the arithmetic, not float32 rounding."""
    torch.set_default_dtype(torch.float64)
    yield dataclasses.replace(tiny_data, train_images=tiny_data.train_images.double().cuda(),
                              train_labels=tiny_data.train_labels.cuda(),
                              test_images=tiny_data.test_images.double().cuda(),
                              test_labels=tiny_data.test_labels.cuda())
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_each_member_of_a_population_on_cuda_is_its_run_alone_there(cuda_data, name):
    variant, configs = _configs(name, device="cuda")
    records = [Record() for _ in configs]
    results = train_population(variant, configs, cuda_data, [[r] for r in records], [None] * len(configs))
    assert [r.status for r in results] == ["finished"] * 3
    assert all(w.is_cuda for w in records[0].weights.values())
    for record, config in zip(records, configs):
        _assert_same_run(record, _alone(variant, config, cuda_data))


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
