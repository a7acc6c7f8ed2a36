"""The study console while runs train: the progress file a run writes, the board reading it."""

from __future__ import annotations

import io
import math
import threading
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from rich.console import Console

from jreg_tools.study.live import RunBoard
from jreg_tools.study.progress import ProgressFile, RunProgress, eta_seconds, read_progress


def _trainer(step: int, **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step,
        max_steps=600,
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        sanity_checking=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
    )


def test_progress_file_holds_step_loss_latest_validation_and_pace(tmp_path):
    callback = ProgressFile(str(tmp_path / "run" / "progress.json"), every_seconds=0.0)
    callback.on_train_start(_trainer(100), None)  # resumed at step 100
    assert read_progress(tmp_path / "run") == RunProgress(step=100, max_steps=600, first_step=100)
    callback.on_train_batch_end(_trainer(150, **{"train/ce": 4.5}))
    progress = read_progress(tmp_path / "run")
    assert progress.step == 150 and progress.train_ce == 4.5 and math.isnan(progress.val_j)
    trainer = _trainer(200, **{"train/ce": 4.4, "val/jump_strength": 2.5, "val/loss": 4.2})
    callback.on_validation_end(trainer, None)
    progress = read_progress(tmp_path / "run")
    assert (progress.val_j, progress.val_loss) == pytest.approx((2.5, 4.2))
    # The validation that follows the fit (cli.py validate) leaves the file alone.
    trainer.state.fn = TrainerFn.VALIDATING
    trainer.callback_metrics["val/jump_strength"] = torch.tensor(9.0)
    callback.on_validation_end(trainer, None)
    assert read_progress(tmp_path / "run").val_j == 2.5
    assert read_progress(tmp_path / "missing") is None


def test_eta_is_the_attempts_pace_times_the_steps_left():
    assert eta_seconds(RunProgress(step=150, max_steps=600, first_step=100, seconds=50.0)) == 450
    assert math.isnan(eta_seconds(RunProgress(step=100, max_steps=600, first_step=100)))


def _write(folder, step: int, val_j: float | None = None) -> None:
    callback = ProgressFile(str(folder / "progress.json"))
    callback._val = {} if val_j is None else {"val_j": val_j, "val_loss": 4.0}
    callback._first_step, callback._started = 0, 0.0
    callback._write(_trainer(step, **{"train/ce": 4.123}))


def test_board_prints_whole_plain_lines_when_stdout_is_not_a_terminal(tmp_path):
    out = io.StringIO()
    folders = {"baseline": tmp_path / "baseline", "jreg": tmp_path / "jreg"}
    with RunBoard(folders, Console(file=out), plain_every=0.0) as board:
        assert not board.live
        board.refresh()  # nothing written yet: nothing shown
        assert out.getvalue() == ""
        _write(folders["baseline"], 120, val_j=0.45)
        _write(folders["jreg"], 100)
        threads = [
            threading.Thread(target=board.say, args=(f"study: {name}: training (log: x)",))
            for name in folders
            for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        board.refresh()
        board.refresh()  # no step moved: no new line
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("study: baseline: training") for line in lines) == 20
    assert all(line in {f"study: {n}: training (log: x)" for n in folders} for line in lines[:40])
    assert lines[40].startswith("study: baseline: step 120/600, loss 4.123, val J 0.45, ETA")
    assert lines[41].startswith("study: jreg: step 100/600, loss 4.123, val J -, ETA")
    assert len(lines) == 42


def test_board_draws_a_live_bar_per_run_on_a_terminal(tmp_path):
    out = io.StringIO()
    folders = {"baseline": tmp_path / "baseline", "jreg": tmp_path / "jreg"}
    console = Console(file=out, force_terminal=True, width=120)
    _write(folders["baseline"], 300, val_j=1.9)
    with RunBoard(folders, console) as board:
        assert board.live
        board.say("study: jreg: training")
        board.refresh()
    text = out.getvalue()
    assert "300/600" in text and "val J 1.90" in text and "study: jreg: training" in text
    assert "waiting" in text  # the run without a progress file yet
