"""A study's scoring is pinned on its parent run and used by every worker; tables refuse to rank runs scored in
different ways. All against a real sqlite MLflow store."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from gansweep.classifier import Classifier, FeatureNet, weights_checksum
from gansweep.cli import main
from gansweep.errors import ConfigError, GansweepError
from gansweep.evaluation import Evaluator
from gansweep.scoring import NETWORK_ARTIFACTS, pin, pinned_evaluator, require_one_scoring, run_evaluator

N = 300


@pytest.fixture
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture
def experiment(client, tmp_path):
    return client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))


def _other_network(seed: int = 1) -> Classifier:
    """A network of the same shape with other weights: what another machine's training would give."""
    torch.manual_seed(seed)
    net = FeatureNet(1, 10).eval()
    return Classifier(net, "mnist-5k", "0" * 16, 0.1, weights_checksum(net), False)


@pytest.fixture(scope="module")
def shipped(mnist5k, mnist5k_classifier):
    return Evaluator(mnist5k_classifier, mnist5k, N)


def test_a_pinned_study_scores_with_its_own_network_on_any_worker(client, experiment, shipped, mnist5k):
    parent = client.create_run(experiment)
    pin(client, parent.info.run_id, shipped)
    recorded = client.get_run(parent.info.run_id)
    assert recorded.data.params["feature_net.checksum"] == shipped.classifier.checksum
    assert recorded.data.params["eval.n"] == str(N)
    assert [a.path for a in client.list_artifacts(parent.info.run_id, NETWORK_ARTIFACTS)] == [
        f"{NETWORK_ARTIFACTS}/{shipped.classifier.checksum}.pt"]
    elsewhere = Evaluator(_other_network(), mnist5k, 1000)  # another machine's network and evaluation size
    used = pinned_evaluator(client, recorded, lambda: elsewhere, mnist5k, None)
    assert used.classifier.checksum == shipped.classifier.checksum and used.n == N
    assert used.classifier.shipped and used.params() == shipped.params()
    images = mnist5k.train_images[1000:1300]
    assert used.score(images) == shipped.score(images)  # the same bytes: the same numbers, exactly


def test_a_worker_joining_a_pinned_study_trains_no_network_of_its_own(client, experiment, mnist5k):
    """A dataset without a shipped network: the study's copy is used, and this machine's is never made."""
    other = Evaluator(_other_network(), mnist5k, N)
    parent = client.create_run(experiment)
    pin(client, parent.info.run_id, other)

    def local():
        raise AssertionError("this machine's network was asked for")

    used = pinned_evaluator(client, client.get_run(parent.info.run_id), local, mnist5k, None)
    assert used.classifier.checksum == other.classifier.checksum and not used.classifier.shipped
    images = mnist5k.train_images[1000:1300]
    assert used.score(images) == other.score(images)


def test_a_study_refuses_another_evaluation_size_and_a_network_it_does_not_hold(client, experiment, shipped,
                                                                                mnist5k):
    parent = client.create_run(experiment)
    pin(client, parent.info.run_id, shipped)
    recorded = client.get_run(parent.info.run_id)
    with pytest.raises(ConfigError, match=f"scored on {N} images, now asked for 200"):
        pinned_evaluator(client, recorded, lambda: Evaluator(shipped.classifier, mnist5k, 200), mnist5k, 200)
    bare = client.create_run(experiment)
    client.log_batch(bare.info.run_id, params=[Param("feature_net.checksum", "0123456789abcdef"),
                                               Param("eval.n", str(N))])
    with pytest.raises(GansweepError, match="does not hold"):
        pinned_evaluator(client, client.get_run(bare.info.run_id), lambda: shipped, mnist5k, None)


def test_a_parent_without_a_pin_is_pinned_to_this_worker(client, experiment, shipped, mnist5k):
    parent = client.create_run(experiment)
    assert pinned_evaluator(client, client.get_run(parent.info.run_id), lambda: shipped, mnist5k, None) is shipped
    assert client.get_run(parent.info.run_id).data.params["feature_net.checksum"] == shipped.classifier.checksum


def test_evaluate_uses_the_network_the_run_was_scored_with(client, experiment, shipped, mnist5k):
    other = Evaluator(_other_network(), mnist5k, N)
    parent = client.create_run(experiment)
    pin(client, parent.info.run_id, other)
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_batch(child.info.run_id, params=[Param(k, str(v)) for k, v in other.params().items()])
    run = client.get_run(child.info.run_id)
    assert run_evaluator(client, run, mnist5k, shipped, False).classifier.checksum == other.classifier.checksum
    alone = client.create_run(experiment)
    client.log_batch(alone.info.run_id, params=[Param(k, str(v)) for k, v in other.params().items()])
    with pytest.raises(GansweepError, match="--any-network"):
        run_evaluator(client, client.get_run(alone.info.run_id), mnist5k, shipped, False)
    assert run_evaluator(client, client.get_run(alone.info.run_id), mnist5k, shipped, True) is shipped


def _scored_run(client, experiment, checksum: str, n: int, fid: float) -> None:
    run = client.create_run(experiment)
    client.log_batch(run.info.run_id, metrics=[Metric("score/fid_proxy", fid, 0, 1)],
                     params=[Param("feature_net.checksum", checksum), Param("eval.n", str(n))],
                     tags=[RunTag("gansweep.variant", "gan")])


def test_tables_refuse_runs_scored_in_different_ways_unless_asked(client, experiment, tmp_path):
    _scored_run(client, experiment, "a" * 16, 5000, 10.0)
    _scored_run(client, experiment, "a" * 16, 5000, 11.0)
    _scored_run(client, experiment, "b" * 16, 5000, 12.0)
    runs = client.search_runs([experiment])
    expected = "2 run(s) with network aaaaaaaa, n=5000; 1 run(s) with network bbbbbbbb, n=5000"
    with pytest.raises(GansweepError, match=re.escape(expected)):
        require_one_scoring(runs, False)
    require_one_scoring(runs, True)
    require_one_scoring(runs[:1], False)
    uri = client.tracking_uri
    refused = CliRunner().invoke(main, ["export", "--experiment", "e", "--tracking-uri", uri])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "--mixed-scoring" in refused.output
    mixed = CliRunner().invoke(main, ["export", "--experiment", "e", "--tracking-uri", uri, "--mixed-scoring",
                                      "--metrics", "fid_proxy", "--format", "csv"])
    assert mixed.exit_code == 0, mixed.output
    assert len(mixed.output.strip().splitlines()) == 4


def test_runs_of_another_evaluation_size_do_not_rank_together(client, experiment):
    _scored_run(client, experiment, "a" * 16, 5000, 10.0)
    _scored_run(client, experiment, "a" * 16, 2000, 10.0)
    with pytest.raises(GansweepError, match="n=2000"):
        require_one_scoring(client.search_runs([experiment]), False)


def test_an_unpinned_study_whose_trials_were_scored_otherwise_is_refused(client, experiment, shipped, mnist5k):
    parent = client.create_run(experiment)
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_batch(child.info.run_id, params=[Param("feature_net.checksum", "0123456789abcdef"),
                                                Param("eval.n", "2000")])
    with pytest.raises(ConfigError, match="scored by an earlier gansweep"):
        pinned_evaluator(client, client.get_run(parent.info.run_id), lambda: shipped, mnist5k, None)
    assert "feature_net.checksum" not in client.get_run(parent.info.run_id).data.params  # nothing pinned


def test_a_run_that_failed_before_scoring_blocks_no_table(client, experiment):
    _scored_run(client, experiment, "a" * 16, 5000, 10.0)
    client.create_run(experiment)  # failed while building its networks: no params, no scores
    require_one_scoring(client.search_runs([experiment]), False)
