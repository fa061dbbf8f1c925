import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

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
    (["train", "gan", "--lr", "0"], "lr must be > 0, got 0.0"),
    (["train", "gan", "--dropout", "1"], "dropout must be in [0, 1), got 1.0"),
    (["train", "gan", "--label-smoothing", "0.7"], "label_smoothing must be in [0, 0.5], got 0.7"),
    (["train", "gan", "--n-critic", "0"], "n_critic must be >= 1, got 0"),
    (["train", "sngan", "--label-smoothing", "0.1"], "label_smoothing has no meaning for the hinge loss"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {message}" or message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_writes_a_new_run_folder(tmp_path):
    result = invoke("train", "gan", "--epochs", "2", "--batch-size", "256", "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    record = json.loads((run / "run.json").read_text())
    assert record["variant"] == "gan" and record["config"]["batch_size"] == 256
    assert record["data"]["name"] == "mnist-5k" and record["result"]["status"] == "finished"
    assert record["result"]["steps"] == 2 * (4000 // 256)
    assert (run / "checkpoint.pt").stat().st_size > 0
    again = invoke("train", "gan", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--out", tmp_path)
    assert again.exit_code == 0 and len(list(tmp_path.iterdir())) == 2  # a second run never reuses the folder


def test_every_command_has_help_and_a_readme_entry():
    readme = README.read_text()
    for name, command in main.commands.items():
        assert command.help, name
        assert re.search(rf"gansweep {name}\b", readme), f"README does not show 'gansweep {name}'"
        assert invoke(name, "--help").exit_code == 0
