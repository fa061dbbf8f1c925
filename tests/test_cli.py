import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from gansweep.cli import main
from gansweep.variants import VARIANTS

README = Path(__file__).parent.parent / "README.md"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_list_variants_shows_every_variant_with_its_description():
    result = invoke("list", "variants")
    assert result.exit_code == 0
    lines = result.output.splitlines()[2:]
    assert [line.split()[0] for line in lines] == list(VARIANTS)
    assert all(v.summary in result.output for v in VARIANTS.values())


def test_list_datasets():
    result = invoke("list", "datasets")
    assert result.exit_code == 0 and "mnist-5k" in result.output and "cifar10" in result.output


@pytest.mark.parametrize("args, message", [
    (["train", "wgan_gp"], "unknown variant 'wgan_gp'; did you mean 'wgan-gp'?"),
    (["train", "gan", "--dataset", "mnist5k"], "unknown dataset 'mnist5k'; did you mean 'mnist-5k'?"),
    (["train", "gan", "--lr", "0"], "lr must be in (0, 1000], got 0.0"),
    (["train", "gan", "--dropout", "1"], "dropout must be in [0, 1), got 1.0"),
    (["train", "gan", "--label-smoothing", "0.7"], "label_smoothing must be in [0, 0.5], got 0.7"),
    (["train", "gan", "--n-critic", "0"], "n_critic must be in [1, 100], got 0"),
    (["train", "sngan", "--label-smoothing", "0.1"], "label_smoothing has no meaning for the hinge loss"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {message}" or message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_is_a_tracked_mlflow_run(tmp_path, monkeypatch, mnist5k_classifier):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/store.db"
    args = ["train", "gan", "--batch-size", "256", "--n-eval", "200", "--device", "cpu", "--tracking-uri", uri,
            "--experiment", "mine"]
    result = invoke(*args, "--epochs", "2")
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert run.info.run_id in result.output and run.info.status == "FINISHED"
    assert run.data.tags["gansweep.status"] == "finished" and run.data.tags["gansweep.variant"] == "gan"
    assert run.data.params["batch_size"] == "256" and run.data.params["eval.n"] == "200"
    assert run.data.params["feature_net.checksum"] == mnist5k_classifier.checksum
    assert [m.step for m in client.get_metric_history(run.info.run_id, "score/fid_proxy")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "loss/g")) == 2  # one window of 15 G steps an epoch
    assert 0 < run.data.metrics["floor/fid_proxy"] < run.data.metrics["score/fid_proxy"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/last.pt", "checkpoints/best.pt"}
    (hint,) = [line for line in result.output.splitlines() if line.startswith("next: ")]
    command = shlex.split(hint.removeprefix("next: ").split("|")[0])  # the store asked for, repeated
    assert command == ["gansweep", "sample", run.info.run_id, "--tracking-uri", uri]
    sampled = invoke(*command[1:], "-o", tmp_path / "grid.png")
    assert sampled.exit_code == 0 and (tmp_path / "grid.png").is_file(), sampled.output
    assert "scores (validation slice): fid_proxy" in result.output
    again = invoke(*args, "--epochs", "1")
    assert again.exit_code == 0
    assert len(client.search_runs([client.get_experiment_by_name("mine").experiment_id])) == 2  # a new run
    assert not (tmp_path / "mlruns").exists()  # everything went to the store asked for


def test_every_command_has_help_and_a_readme_entry():
    readme = README.read_text()
    for name, command in main.commands.items():
        assert command.help, name
        assert re.search(rf"gansweep {name}\b", readme), f"README does not show 'gansweep {name}'"
        assert invoke(name, "--help").exit_code == 0
