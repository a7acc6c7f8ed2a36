"""The gradient norm and clipping, done by the module itself for every strategy and optimizer.

Lightning's AMP plugin refuses to clip for an optimizer that unscales inside its own
``step`` (fused AdamW), because under fp16 the gradients it would clip are still
scaled. bf16 autocast has no loss scaler, so clipping before a fused step is
correct; the project clips here, as torchtitan and litgpt do, and keeps the fused
step. The one case where that would be wrong, a gradient scaler (``16-mixed``) with
an optimizer that unscales internally, is refused (``check_clipping``);
``jreg_lightning.optim.build_optimizer`` picks ``foreach`` under a scaler instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from jreg_lightning.errors import ConfigError


def parameters_with_grads(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer's parameters that hold a gradient this step."""
    return [
        param
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    ]


def total_gradient_norm(parameters: Iterable[Tensor]) -> Tensor:
    """The L2 norm of all gradients together, as a 0-dim tensor on their device.

    FSDP2 gradients are ``DTensor`` shards: their norm is reduced over the ranks
    (``full_tensor``), so every rank gets the norm of the whole model's gradient.
    No host sync. An empty list gives 0.
    """
    grads = [param.grad for param in parameters if param.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def clip_by_total_norm_(parameters: list[Tensor], max_norm: float, norm: Tensor) -> None:
    """Scale the gradients in place so that their total ``norm`` is at most ``max_norm``."""
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm, foreach=True)


def check_clipping(optimizer: torch.optim.Optimizer, grad_scaler: object | None) -> None:
    """Refuse clipping that would act on scaled gradients (fp16 scaler + fused step)."""
    # A fused step unscales the gradients itself; torch's fused optimizers say so in
    # their param groups.
    fused = any(group.get("fused") for group in optimizer.param_groups)
    if grad_scaler is not None and fused:
        raise ConfigError(
            "trainer.gradient_clip_val: gradients cannot be clipped under a loss scaler "
            f"(trainer.precision 16-mixed) with {type(optimizer).__name__}(fused=True), which "
            "unscales inside its step; use trainer.precision bf16-mixed, or set "
            "trainer.gradient_clip_val 0"
        )
