"""FSDP2 distributed-checkpoint saves on 2 CPU ranks: atomic under SIGKILL, last K kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jreg_lightning.checkpoints import (
    is_distributed_checkpoint,
    load_full_state_dict,
    read_checkpoint_meta,
)

REPO = Path(__file__).resolve().parents[1]


def _probe(run_dir: Path, mode: str, max_steps: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "atomic_dcp_probe.py"),
            str(run_dir),
            mode,
            str(max_steps),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _step(path: Path) -> int:
    return read_checkpoint_meta(path)["global_step"]


def _same_weights(first: Path, second: Path) -> bool:
    a, b = load_full_state_dict(first), load_full_state_dict(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_keep_last_k_step_folders(tmp_path):
    result = _probe(tmp_path, "keep", max_steps=4)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "checkpoints"
    # save_top_k=2 with monitor="step", mode="max": the two newest step folders stay,
    # older ones are removed; no staging folder is left behind.
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=3.ckpt", "step=4.ckpt"]
    assert all(is_distributed_checkpoint(p) for p in folder.iterdir())
    assert _step(folder / "last.ckpt") == _step(folder / "step=4.ckpt") == 4
    assert _same_weights(folder / "last.ckpt", folder / "step=4.ckpt")


@pytest.mark.slow
def test_sigkill_during_a_distributed_save_keeps_the_previous_checkpoint(tmp_path):
    result = _probe(tmp_path, "kill", max_steps=4)
    assert result.returncode == -signal.SIGKILL, result.stderr[-4000:]
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    # The killed save of last.ckpt (step 2) wrote its shards into the staging folder only.
    assert names == [".last.ckpt.dcp.partial", "last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    last = folder / "last.ckpt"
    assert _step(last) == 1
    assert _same_weights(last, folder / "step=1.ckpt")
    assert not _same_weights(last, folder / "step=2.ckpt")

    # Lightning resumes from it on 2 ranks (re-saving step 2 as step=2-v1.ckpt beside
    # the orphan of the killed run); the next save of last.ckpt clears the leftover.
    result = _probe(tmp_path, "resume", max_steps=3)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert _step(last) == _step(folder / "step=3.ckpt") == 3
