"""Run ``cli.py`` like a user would, on a tiny shape and a tmp run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]


def tiny_override(
    run_dir: Path, data_dir: Path, max_steps: int = 3, seq_len: int = 32, **trainer
) -> Path:
    """Write an override YAML: tiny model, tmp run dir, checkpoints every step."""
    config = {
        "trainer": {
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "val_check_interval": max_steps,
            "limit_val_batches": 2,
            "default_root_dir": str(run_dir),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "logs"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run_dir / "checkpoints"),
                        "save_last": True,
                        "every_n_train_steps": max_steps,
                    },
                }
            ],
            **trainer,
        },
        "model": {"llama": dict(TINY_LLAMA)},
        "data": {"data_dir": str(data_dir), "seq_len": seq_len, "batch_size": 4},
    }
    path = run_dir / "override.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in the repo root, offline; output captured as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
