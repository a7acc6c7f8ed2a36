"""Next-token cross-entropy, perplexity and the early-exit ("logit lens") loss: pure torch.

One definition each, shared by training, validation, analysis and evaluation,
so that a loss measured anywhere in the project is the loss the model trained on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# exp(80) ~ 5.5e34: a diverged run still reports a finite perplexity.
MAX_LOG_PERPLEXITY = 80.0


def next_token_split(batch: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets of a ``(batch, seq + 1)`` block of token ids.

    Returns:
        ``(inputs, targets)``, each ``(batch, seq)``: the first ``seq`` tokens and the
        last ``seq`` tokens (int64).
    """
    return batch[:, :-1], batch[:, 1:].long()


def token_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy in float32 over every position.

    Args:
        logits: ``(batch, seq, vocab)``, any float dtype.
        targets: ``(batch, seq)`` token ids (see ``next_token_split``).
        reduction: ``mean`` (the training loss) or ``sum`` (divide by ``targets.numel()``).

    Returns:
        Float32 scalar.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten().long(), reduction=reduction
    )


def perplexity(mean_loss: float | Tensor) -> float:
    """``exp`` of a mean token cross-entropy, capped at ``exp(MAX_LOG_PERPLEXITY)``."""
    return math.exp(min(float(mean_loss), MAX_LOG_PERPLEXITY))


@torch.no_grad()
def early_exit_loss_sum(
    final_norm: nn.Module | None, head: nn.Module, hidden: Tensor, targets: Tensor
) -> Tensor:
    """Cross-entropy sum of the logit lens ``head(norm(h_l))`` on one residual stream.

    Model-specific output scaling (e.g. logit soft-capping) is not applied.

    Args:
        final_norm: the model's final norm (None: the head reads ``hidden`` as is).
        head: the LM head.
        hidden: ``(batch, seq, hidden)`` residual stream h_l before any final norm.
        targets: ``(batch, seq)`` next tokens.

    Returns:
        Float32 scalar sum over positions. Only one layer's logits exist at a time.
    """
    normed = final_norm(hidden) if final_norm is not None else hidden
    return token_cross_entropy(head(normed), targets, reduction="sum")
