"""AdamW with decoupled weight decay on matrices only, and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from jreg_lightning.errors import ConfigError


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule.

    Attributes:
        lr: peak learning rate, reached after ``warmup_steps``.
        min_lr: floor of the decay, reached at ``trainer.max_steps``.
        warmup_steps: linear warmup from 0 to ``lr``.
        schedule: after warmup, ``cosine`` to ``min_lr`` at ``max_steps``; ``wsd``
            (warmup-stable-decay) holds ``lr`` and decays linearly to ``min_lr``
            over the last ``decay_fraction`` of the steps; ``constant`` holds ``lr``.
        decay_fraction: the share of ``max_steps`` that ``wsd`` spends decaying.
        weight_decay: applied to weight matrices only (not norms, biases, embeddings).
        betas: AdamW betas.
        eps: AdamW epsilon.
    """

    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"model.optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(
                f"model.optim.min_lr must be between 0 and lr={self.lr}, got {self.min_lr}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"model.optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(
                f"model.optim.decay_fraction must be in (0, 1], got {self.decay_fraction}"
            )
        self.betas = tuple(self.betas)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything else.

    Norm weights and biases (1-D) and token embeddings are not decayed. A tied
    LM head is the embedding and so is not decayed either.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embed_tokens" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def learning_rate_factor(step: int, config: OptimConfig, max_steps: int) -> float:
    """The schedule's multiplier of ``config.lr`` at ``step`` (see ``OptimConfig.schedule``)."""
    min_ratio = config.min_lr / config.lr
    if config.schedule == "cosine" or step < config.warmup_steps:
        return warmup_cosine(step, config.warmup_steps, max_steps, min_ratio)
    if config.schedule == "constant":
        return 1.0
    decay_steps = max(1, round(config.decay_fraction * max_steps))
    decay_start = max(config.warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, cosine to ``min_ratio``.

    Returns:
        A factor in [min_ratio, 1] (below it only during warmup).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


FUSED_ADAMW_DEVICES = {"cuda", "cpu"}


def check_max_steps(max_steps: int | None) -> None:
    """``trainer.max_steps`` must be set and > 0: the schedule is driven by steps.

    ``cli.py`` calls this before ``fit`` writes anything; ``build_optimizer``
    calls it for a ``Trainer`` built without the command line.
    """
    if max_steps is None or max_steps < 1:
        raise ConfigError(
            f"trainer.max_steps must be set and > 0 (got {max_steps}): pretraining and its "
            "learning-rate schedule are driven by steps; set trainer.max_steps"
        )


def adamw(model: nn.Module, config: OptimConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``: one fused kernel, or ``foreach`` when not ``fused``."""
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=True if fused else None,
        foreach=None if fused else True,
    )


def build_optimizer(
    model: nn.Module, config: OptimConfig, max_steps: int, grad_scaler: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step schedule.

    The step is fused (one kernel for all parameters) on CUDA and CPU, and
    ``foreach`` elsewhere or under a loss scaler (``grad_scaler``, fp16): a fused
    step unscales inside itself, after the module has clipped, so clipping would act
    on scaled gradients. Side-by-side step times: ``bench/optimizer_step.py``.
    """
    check_max_steps(max_steps)
    fused = not grad_scaler and {p.device.type for p in model.parameters()} <= FUSED_ADAMW_DEVICES
    optimizer = adamw(model, config, fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config, max_steps)
    )
    return optimizer, scheduler
