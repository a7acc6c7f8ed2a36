"""A callback that writes which sequences each training step saw, per rank, as JSON lines.

Useful to check data order: a resumed run must log the same fingerprints and
losses from the resume step on as an uninterrupted run, and two ranks must
never log the same sequence in one epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def sequence_fingerprints(batch: torch.Tensor) -> list[str]:
    """A short SHA-1 of each row of a ``(batch, seq_len + 1)`` token tensor."""
    rows = batch.detach().to("cpu", torch.int64).numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in rows]


class BatchLog(L.Callback):
    """Each step, append ``{"step", "epoch", "rank", "rows", "loss"}`` to ``batches_rank{R}.jsonl``.

    Args:
        folder: where the per-rank files go (created if missing).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Record the batch's row fingerprints and the step's loss."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "rank": trainer.global_rank,
            "rows": sequence_fingerprints(batch),
            "loss": float(loss.detach()) if loss is not None else None,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"batches_rank{trainer.global_rank}.jsonl"
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_batch_log(folder: str | Path, rank: int = 0) -> list[dict]:
    """The records ``BatchLog`` wrote for ``rank``, in order."""
    path = Path(folder) / f"batches_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
