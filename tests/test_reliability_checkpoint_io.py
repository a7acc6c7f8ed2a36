"""A SIGKILL in the middle of a checkpoint save leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from jreg_lightning.checkpoints import AtomicCheckpointIO, atomic_torch_save
from tests.conftest import TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]

# Saves version 1, then dies by SIGKILL halfway through writing version 2.
KILLED_SAVE = """
import io, os, signal, sys
import pytest
import torch
from jreg_lightning.checkpoints import AtomicCheckpointIO

path = sys.argv[1]
checkpoint_io = AtomicCheckpointIO()
checkpoint_io.save_checkpoint({"version": 1, "weights": torch.ones(4096)}, path)
real_save = torch.save

def save_half_then_die(obj, handle, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
checkpoint_io.save_checkpoint({"version": 2, "weights": torch.zeros(4096)}, path)
"""


@pytest.mark.slow
def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(last)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    partial = [p for p in folder.iterdir() if p.name != "last.ckpt"]
    assert len(partial) == 1, "the kill should have left the half-written temporary file"
    assert partial[0].stat().st_size > 0

    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["version"] == 1
    assert torch.equal(checkpoint["weights"], torch.ones(4096))
    # `--ckpt_path last` looks for last*.ckpt: the temporary file is not a candidate.
    assert ModelCheckpoint(dirpath=folder)._find_last_checkpoints(None) == {str(last)}

    # The next save of the same name replaces the checkpoint and clears the leftover.
    atomic_torch_save({"version": 3}, last)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=True) == {"version": 3}


def test_saved_file_has_the_usual_permissions(tmp_path):
    path = tmp_path / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": torch.ones(2)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_cli_saves_through_atomic_checkpoint_io(tmp_path, token_shards):
    from jreg_tools.cli import JregToolsCLI as JregCLI

    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "trainer": {"default_root_dir": str(tmp_path), "logger": False},
                "model": {"llama": TINY_LLAMA},
                "data": {"data_dir": str(token_shards), "seq_len": 32},
            }
        )
    )
    cli = JregCLI(args=["--config", "configs/tiny_jreg.yaml", "--config", str(override)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
