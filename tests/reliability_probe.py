"""Test-only callbacks: record each step's loss and batch, stop at a step, inject a NaN.

They are referenced by class path from override YAMLs, so the runs under test
are the real ``cli.py fit`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import lightning as L
import torch
import yaml


class StepRecorder(L.Callback):
    """Append ``step loss batch_sha256`` per training step to ``out_dir/rank{R}.txt``.

    The loss is written with ``float.hex`` so that equal lines mean bit-equal
    losses. With ``hang_at_step`` the process writes ``out_dir/hang`` after
    recording that step and sleeps until it is killed (before the step's
    checkpoint is saved: Lightning runs ``ModelCheckpoint`` after other callbacks).
    """

    def __init__(self, out_dir: str, hang_at_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.hang_at_step = hang_at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A batch skipped by ``model.nonfinite: skip`` returns no loss.
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss_text = float(loss.detach()).hex() if loss is not None else "skipped"
        digest = hashlib.sha256(batch.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        path = self.out_dir / f"rank{trainer.global_rank}.txt"
        with path.open("a") as handle:
            handle.write(f"{trainer.global_step} {loss_text} {digest}\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.hang_at_step is not None and trainer.global_step == self.hang_at_step:
            (self.out_dir / f"hang{trainer.global_rank}").write_text(str(trainer.global_step))
            while True:
                time.sleep(1)


class InjectNaN(L.Callback):
    """Make the loss of training step ``step`` (1-based) NaN through the embedding output.

    ``rank``: only on that rank (None: every rank).
    """

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 != self.step:
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return

        def poison(module, inputs, output):
            handle.remove()
            return output * torch.nan

        handle = pl_module.model.get_input_embeddings().register_forward_hook(poison)


def read_records(out_dir: Path, rank: int = 0) -> list[tuple[int, str, str]]:
    """The ``(step, loss_hex, batch_sha)`` lines a ``StepRecorder`` wrote for ``rank``."""
    path = Path(out_dir) / f"rank{rank}.txt"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        step, loss, digest = line.split()
        records.append((int(step), loss, digest))
    return records


def write_fit_override(
    path: Path,
    run_dir: Path,
    data_dir: Path,
    callbacks: list[dict],
    checkpoint_every: int,
    trainer: dict,
    model: dict | None = None,
    logger_version: int | None = None,
) -> Path:
    """An override YAML for ``cli.py fit``: the tiny model on ``data_dir``, run in ``run_dir``.

    ``callbacks`` come first, then a ``ModelCheckpoint`` every ``checkpoint_every``
    steps (all kept, plus ``last.ckpt``); ``trainer`` and ``model`` add or replace keys.
    """
    from tests.cli_run import checkpoint_callback
    from tests.conftest import TINY_LLAMA

    checkpoint = checkpoint_callback(
        run_dir / "checkpoints", every_n_train_steps=checkpoint_every, save_last=True, save_top_k=-1
    )
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "logs", "version": logger_version},
    }
    config = {
        "trainer": {
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            "logger": logger,
            "callbacks": [*callbacks, checkpoint],
            **trainer,
        },
        "model": {"llama": TINY_LLAMA, **(model or {})},
        "data": {"data_dir": str(data_dir), "seq_len": 32, "batch_size": 4},
    }
    path.write_text(yaml.safe_dump(config))
    return path
