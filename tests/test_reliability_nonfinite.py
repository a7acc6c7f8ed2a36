"""A NaN loss: ``stop`` ends the run naming the step and last good checkpoint; ``skip`` drops it."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jreg_lightning.nonfinite import NonFiniteGuard
from jreg_tools.cli import main
from tests.reliability_probe import write_fit_override


def nan_override(
    tmp_path: Path,
    data_dir: Path,
    nan_step: int,
    max_steps: int,
    nan_rank: int | None = None,
    trainer: dict | None = None,
    **model,
) -> Path:
    """Tiny fit with a NaN injected at ``nan_step`` and a checkpoint every 2 steps."""
    inject = {
        "class_path": "tests.reliability_probe.InjectNaN",
        "init_args": {"step": nan_step, "rank": nan_rank},
    }
    schedule = {"max_steps": max_steps, "log_every_n_steps": 4, "val_check_interval": max_steps}
    return write_fit_override(
        tmp_path / "override.yaml",
        tmp_path / "run",
        data_dir,
        [inject],
        checkpoint_every=2,
        trainer={**schedule, **(trainer or {})},
        model=model,
        logger_version=0,
    )


def fit(override: Path) -> None:
    main(["fit", "--config", "configs/tiny_jreg.yaml", "--config", str(override)])


def all_finite(state_dict: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


def assert_nothing_saved_after_step_4(checkpoints: Path) -> None:
    """The NaN of step 5 stopped the run: the newest checkpoint is step 4, finite and intact."""
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "last.ckpt",
    ]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all_finite(last["state_dict"])


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, token_shards, capsys):
    # Log steps are 4 and 8, so the NaN of step 5 is caught when step 6 tries to save.
    override = nan_override(tmp_path, token_shards, nan_step=5, max_steps=8)
    with pytest.raises(SystemExit) as exit_info:
        fit(override)
    assert exit_info.value.code == 1
    checkpoints = tmp_path / "run" / "checkpoints"
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error_lines) == 1, error_lines
    assert "non-finite loss" in error_lines[0]
    assert "training step 5" in error_lines[0]
    assert f"last good checkpoint is {checkpoints / 'last.ckpt'} (step 4)" in error_lines[0]
    assert_nothing_saved_after_step_4(checkpoints)


def test_skip_mode_drops_the_batch_and_counts_it(tmp_path, token_shards, capsys):
    override = nan_override(tmp_path, token_shards, nan_step=3, max_steps=8, nonfinite="skip")
    fit(override)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8
    assert last["nonfinite"] == {"skipped": 1}
    assert all_finite(last["state_dict"])
    # AdamW counts real updates only: 8 steps, one of them skipped.
    adam_steps = {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {7.0}
    with (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").open() as handle:
        logged = [row["train/nonfinite_skipped"] for row in csv.DictReader(handle)]
    counts = [float(v) for v in logged if v]
    assert counts and counts[-1] == 1.0
    assert not any(math.isnan(c) for c in counts)


def test_stop_mode_records_the_first_bad_step_only():
    guard = NonFiniteGuard("stop")
    for step, value in enumerate([1.0, float("nan"), 2.0, float("inf")], start=1):
        assert guard.observe(torch.tensor(value), step) is False
    assert guard.first_bad_step() == 2
    with pytest.raises(Exception, match="training step 2.*last good checkpoint is a.ckpt"):
        guard.raise_if_bad("a.ckpt")


def test_unknown_nonfinite_mode_is_refused():
    with pytest.raises(ValueError, match=r"model\.nonfinite must be stop or skip"):
        NonFiniteGuard("ignore")


@pytest.mark.slow
def test_nan_on_one_ddp_rank_stops_every_rank(tmp_path, token_shards):
    override = nan_override(
        tmp_path,
        token_shards,
        nan_step=5,
        max_steps=8,
        nan_rank=1,
        trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    )
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "cli.py", "fit", "--config", "configs/tiny_jreg.yaml"]
    result = subprocess.run(
        [*command, "--config", str(override)],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "non-finite loss (NaN or inf) at training step 5" in result.stderr
    assert_nothing_saved_after_step_4(tmp_path / "run" / "checkpoints")


def test_stop_mode_never_reads_the_loss_on_the_host(monkeypatch):
    guard = NonFiniteGuard("stop")

    def host_sync(*args, **kwargs):
        raise AssertionError("observe() read a tensor on the host")

    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    for step in range(1, 6):
        guard.observe(torch.tensor(float("nan") if step in (3, 5) else 1.0), step)
    monkeypatch.undo()
    assert guard.first_bad_step() == 3
