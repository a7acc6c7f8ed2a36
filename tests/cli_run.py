"""Run ``cli.py`` like a user would, on a tiny shape and a tmp run directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import yaml

from tests.conftest import TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]


def checkpoint_callback(dirpath: Path, **init_args) -> dict:
    """A ``ModelCheckpoint`` entry of ``trainer.callbacks`` writing to ``dirpath``."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(dirpath), **init_args},
    }


def rank_recorder(out_dir: Path, **init_args) -> dict:
    """A ``RankMetricsRecorder`` entry of ``trainer.callbacks`` writing to ``out_dir``."""
    return {
        "class_path": "tests.cli_run.RankMetricsRecorder",
        "init_args": {"out_dir": str(out_dir), **init_args},
    }


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
                checkpoint_callback(
                    run_dir / "checkpoints", save_last=True, every_n_train_steps=max_steps
                )
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


def fit_tiny(override: Path, *extra: str) -> subprocess.CompletedProcess:
    """``cli.py fit`` of ``configs/tiny_jreg.yaml``, ``override`` and ``extra``; must succeed."""
    done = run_cli(
        "fit", "--config", str(REPO / "configs/tiny_jreg.yaml"), "--config", str(override), *extra
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged_metric(metrics_csv: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of one column of a CSVLogger ``metrics.csv`` (rows that have it)."""
    rows = csv.DictReader(metrics_csv.open())
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


class RankMetricsRecorder(L.Callback):
    """Writes each rank's logged metrics per step to ``out_dir/rank{R}.json``.

    The CSV logger writes rank 0's values only; this shows what every rank logged.
    Keys ``{stage}{global_step}`` (``"train4"``, ``"val8"``); a metric is kept when
    it starts with the stage and contains one of ``match``.
    """

    def __init__(self, out_dir: str, match: list[str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.match = ["/psi/", "/jump"] if match is None else match
        self.by_step: dict[str, dict[str, float]] = {}

    def _record(self, trainer: L.Trainer, stage: str) -> None:
        values = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(stage) and any(part in key for part in self.match)
        }
        self.by_step.setdefault(f"{stage}{trainer.global_step}", {}).update(values)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.by_step, sort_keys=True))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._record(trainer, "train")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._record(trainer, "val")
