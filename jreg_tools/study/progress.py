"""A run's ``progress.json``: what a study's parent process shows while the run trains.

Each run of a study is a ``cli.py fit`` subprocess whose console output goes to
its ``study.log``; the parent reads this small file instead of parsing logs.
``ProgressFile`` (a callback the runner adds to every run's fit config) rewrites
it at most once a second and after each validation, atomically, so that a
reader never sees half a file. ``read_progress`` reads it back and
``eta_seconds`` turns it into a time left.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only

PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class RunProgress:
    """One snapshot of a training run.

    Attributes:
        step: optimizer steps done (``trainer.global_step``).
        max_steps: the run's last step.
        train_ce: the latest logged training cross-entropy (NaN before the first log step).
        val_j: J of the latest validation (NaN before the first one).
        val_loss: validation loss of the latest validation (NaN before the first one).
        first_step: the step this fit attempt started at (0, or the resumed step).
        seconds: wall time of this attempt so far.
    """

    step: int
    max_steps: int
    train_ce: float = math.nan
    val_j: float = math.nan
    val_loss: float = math.nan
    first_step: int = 0
    seconds: float = 0.0


def eta_seconds(progress: RunProgress) -> float:
    """Seconds left at this attempt's mean pace; NaN before its first step."""
    done = progress.step - progress.first_step
    if done <= 0 or progress.seconds <= 0:
        return math.nan
    return max(0, progress.max_steps - progress.step) * progress.seconds / done


def read_progress(folder: Path) -> RunProgress | None:
    """The run's latest snapshot, or ``None`` when it has not written one."""
    path = Path(folder) / PROGRESS_FILE
    try:
        values = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return RunProgress(**{k: math.nan if v is None else v for k, v in values.items()})


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


class ProgressFile(Callback):
    """Write the run's step, training CE, latest validation J and pace to ``path``.

    Args:
        path: the JSON file to rewrite (the runner passes ``<run folder>/progress.json``).
        every_seconds: the least time between two writes during training.
    """

    def __init__(self, path: str, every_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.every_seconds = every_seconds
        self._started = 0.0
        self._first_step = 0
        self._written = 0.0
        self._val: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._first_step = trainer.global_step
        self._write(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if time.perf_counter() - self._written >= self.every_seconds:
            self._write(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = trainer.callback_metrics
        self._val = {
            "val_j": _number(metrics.get("val/jump_strength")),
            "val_loss": _number(metrics.get("val/loss")),
        }
        self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        self._written = time.perf_counter()
        progress = RunProgress(
            step=trainer.global_step,
            max_steps=trainer.max_steps,
            train_ce=_number(trainer.callback_metrics.get("train/ce")),
            first_step=self._first_step,
            seconds=round(self._written - self._started, 2),
            **self._val,
        )
        values = {k: None if v != v else v for k, v in progress.__dict__.items()}  # NaN -> null
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(values) + "\n")
        temporary.replace(self.path)
