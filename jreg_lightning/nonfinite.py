"""Watching the training loss for NaN/inf: stop the run, or skip the batch (opt-in).

``stop`` (the default) never syncs the host on an ordinary step: each step
folds ``isfinite(loss)`` into a device tensor holding the first bad step, and
the host reads it only at log steps and before every checkpoint save. A bad
step therefore stops the run at the next log step or save at the latest, and
no checkpoint is ever written after it: the last good checkpoint stays the
newest one on disk.

``skip`` must decide on every step whether to apply the update, so it reads
the flag on every step (one host sync, and one all-reduce across ranks so that
every rank skips together); a skipped batch makes no optimizer update and is
counted.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from jreg_lightning.errors import ConfigError, NonFiniteLossError

NonFiniteMode = Literal["stop", "skip"]
NONFINITE_MODES = ("stop", "skip")
_NO_BAD_STEP = 2**62


def _all_reduce(tensor: Tensor, op: dist.ReduceOp) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=op)
    return tensor


class NonFiniteGuard:
    """Per-run state of the non-finite loss check.

    Args:
        mode: ``stop`` raises ``NonFiniteLossError``; ``skip`` drops the batch.
    """

    def __init__(self, mode: NonFiniteMode = "stop") -> None:
        if mode not in NONFINITE_MODES:
            raise ConfigError(f"model.nonfinite must be stop or skip, got {mode!r}")
        self.mode = mode
        self.skipped = 0
        self._first_bad: Tensor | None = None

    def observe(self, loss: Tensor, step: int) -> bool:
        """Record the loss of training step ``step`` (1-based); True if the batch must be skipped.

        In ``stop`` mode this launches two small kernels and returns False
        without a host sync.
        """
        finite = torch.isfinite(loss.detach()).all()
        if self.mode == "skip":
            finite = _all_reduce(finite.to(torch.int32), dist.ReduceOp.MIN)
            if bool(finite):
                return False
            self.skipped += 1
            return True
        if self._first_bad is None:
            self._first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=loss.device)
        self._first_bad = torch.where(finite, self._first_bad, self._first_bad.clamp(max=step))
        return False

    def first_bad_step(self) -> int | None:
        """The first step with a non-finite loss on any rank, or None (a host sync)."""
        if self._first_bad is None:
            # Every rank must join the all-reduce, also one that never saw a step.
            if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return None
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            self._first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=device)
        step = int(_all_reduce(self._first_bad, dist.ReduceOp.MIN))
        return None if step >= _NO_BAD_STEP else step

    def raise_if_bad(self, last_checkpoint: str | None) -> None:
        """Stop the run with one line naming the bad step and the last good checkpoint.

        Collective under DDP/FSDP: every rank must call it at the same point.
        """
        if self.mode != "stop":
            return
        step = self.first_bad_step()
        if step is None:
            return
        where = (
            f"the last good checkpoint is {last_checkpoint}"
            if last_checkpoint
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"non-finite loss (NaN or inf) at training step {step}; stopped before writing any "
            f"checkpoint after it: {where}. Fix: resume from it with a lower model.optim.lr or "
            "a trainer.gradient_clip_val, or set model.nonfinite: skip to drop such batches"
        )

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint keeps: the number of skipped batches."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the skipped-batch count of a resumed run."""
        self.skipped = int(state.get("skipped", 0))
