"""What a person watching a study sees on stderr: plain lines when it is not a terminal, tqdm bars when it is."""

from __future__ import annotations

import io
import re

import optuna

from gansweep.progress import ProgressHook, StudyProgress
from gansweep.spec import load_spec
from gansweep.store import resolve_store
from gansweep.study import StudyOptions, run_study
from gansweep.trainer import train
from gansweep.variants import get_variant

from conftest import TINY
from test_study import TINY_STUDY


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_study_off_a_terminal_prints_a_line_per_trial_with_the_best_so_far_and_an_eta(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(TINY_STUDY.format(extra=""))
    outcome = run_study(load_spec(tmp_path / "studies" / "tiny.toml"), StudyOptions(device="cpu", progress=True))
    err = capsys.readouterr().err
    assert "\r" not in err and "\033" not in err  # a log file gets lines, not a redrawn bar
    lines = re.findall(r"^study tiny: (\d)/3 trials ended(, ETA \d\d:\d\d)?; best fid_proxy_val (\S+) \(trial (\d)\)$",
                       err, re.MULTILINE)
    assert [int(n) for n, *_ in lines] == [1, 2, 3]
    assert [bool(eta) for _, eta, _, _ in lines] == [True, True, False]  # nothing left to estimate at the end
    trials = optuna.load_study(study_name=outcome.optuna_study, storage=resolve_store().optuna()).get_trials()
    best = min(trials, key=lambda t: t.value)
    assert lines[-1][2:] == (f"{best.value:.4g}", str(best.number))
    # every trial's epochs, named as in MLflow and the tables
    for t in trials:
        name = f"gan lr={ {1e-4: '1e-4', 3e-4: '3e-4', 1e-3: '1e-3'}[t.params['lr']] } s0 #{t.number:03d}"
        assert f"{name}  epoch 2/2" in err and f"{name}  finished: completed 2 epochs" in err


def test_on_a_terminal_a_run_shows_a_bar_of_images_against_its_budget(tiny_data):
    stream = Terminal()
    variant = get_variant("gan")
    config = variant.config(**{**TINY, "epochs": 3, "log_every": 2})
    result = train(variant, config, tiny_data, [ProgressHook("gan #000", stream)])
    out = stream.getvalue()
    budget = result.images_seen  # the whole budget was trained
    assert f"/{budget}" in out.replace(",", "") and "img/s" in out and "gan #000" in out
    assert "\r" in out  # redrawn in place
    assert out.rstrip().endswith(f"finished: completed 3 epochs ({result.steps} G steps, {result.wall_time_s:.1f} s)")


def test_trials_that_end_without_a_result_do_not_repeat_the_study_s_line():
    """Two members of a population interrupted together: neither is done, so the count and best stand; one line
    says so, not two. A later change gets its own line."""
    stream = io.StringIO()
    shown = StudyProgress("s", total=8, ended=2, metric="fid_proxy", stream=stream)
    for ended, best in [(2, (1, 40.0)), (2, (1, 40.0)), (3, (1, 40.0)), (3, (4, 30.0))]:
        shown.trial_ended(ended, best)
    assert [line.split(";")[0].split(",")[0] for line in stream.getvalue().splitlines()] == [
        "study s: 2/8 trials ended", "study s: 3/8 trials ended", "study s: 3/8 trials ended"]
    assert stream.getvalue().splitlines()[-1].endswith("best fid_proxy 30 (trial 4)")
