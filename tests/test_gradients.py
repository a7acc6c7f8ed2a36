"""Gradient clipping acts, with the fused AdamW of the GPU configs, and the norm is logged."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from jreg_lightning.errors import ConfigError
from jreg_lightning.gradients import check_clipping, total_gradient_norm
from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import OptimConfig, build_optimizer
from jreg_lightning.regularizer import JregConfig
from tests.conftest import TINY_LLAMA
from tests.tiny_fit import quiet_trainer, random_blocks

MAX_NORM = 0.05


class GradientProbe(L.Callback):
    """Keeps the gradients before clipping and the ones the optimizer's step applied."""

    def __init__(self) -> None:
        self.before_clip: list[torch.Tensor] = []
        self.at_step: list[torch.Tensor] = []
        self.params_before: list[torch.Tensor] = []
        self.params_after: list[torch.Tensor] = []
        self.optimizer_state: dict | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.before_clip = [_grad(p) for p in params]
        self.params_before = [p.detach().clone() for p in params]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The step leaves the gradients it applied in place (they are zeroed next step).
        params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.at_step = [_grad(p) for p in params]
        self.params_after = [p.detach().clone() for p in params]


def _grad(param: torch.Tensor) -> torch.Tensor:
    """A copy of the gradient; zeros for a parameter that got none (it stays unchanged)."""
    return param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param)


def _one_step(precision: str, clip: float) -> tuple[GradientProbe, JregLightningModule, L.Trainer]:
    L.seed_everything(3, verbose=False)
    module = JregLightningModule(
        LlamaModelConfig(**TINY_LLAMA),
        JregConfig(lam=1.0, weights="linear"),
        OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=0, schedule="constant"),
    )
    probe = GradientProbe()
    trainer = quiet_trainer(
        max_steps=1,
        precision=precision,
        gradient_clip_val=clip,
        log_every_n_steps=1,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[probe],
    )
    trainer.fit(module, DataLoader(random_blocks(num=4), batch_size=4))
    return probe, module, trainer


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_clipping_scales_the_gradients_the_fused_step_applies(precision):
    probe, _, trainer = _one_step(precision, MAX_NORM)
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"], "the CPU and GPU configs step a fused AdamW"

    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in probe.before_clip]))
    assert norm > 10 * MAX_NORM, "the test needs a gradient above the threshold"
    scale = MAX_NORM / (norm + 1e-6)
    for before, applied in zip(probe.before_clip, probe.at_step):
        torch.testing.assert_close(applied, before * scale)
    clipped_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in probe.at_step]))
    torch.testing.assert_close(clipped_norm, torch.tensor(MAX_NORM), rtol=1e-4, atol=0)
    # The logged norm is the one before clipping.
    torch.testing.assert_close(trainer.logged_metrics["train/grad_norm"], norm)

    # The update the Trainer applied is AdamW's from the clipped gradients.
    params = [p.clone().requires_grad_(True) for p in probe.params_before]
    for param, grad in zip(params, probe.at_step):
        param.grad = grad.clone()
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": params[i : i + n]}
        for group, (i, n) in zip(optimizer.param_groups, _slices(optimizer))
    ]
    reference = torch.optim.AdamW(groups, fused=True)
    reference.step()
    for expected, applied in zip(params, probe.params_after):
        torch.testing.assert_close(applied, expected.detach())


def _slices(optimizer) -> list[tuple[int, int]]:
    out, start = [], 0
    for group in optimizer.param_groups:
        out.append((start, len(group["params"])))
        start += len(group["params"])
    return out


def test_without_clipping_the_norm_is_still_logged_and_gradients_untouched():
    probe, _, trainer = _one_step("bf16-mixed", 0.0)
    for before, applied in zip(probe.before_clip, probe.at_step):
        torch.testing.assert_close(applied, before, rtol=0, atol=0)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in probe.before_clip]))
    torch.testing.assert_close(trainer.logged_metrics["train/grad_norm"], norm)


def test_total_gradient_norm_is_the_norm_of_all_gradients():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert float(total_gradient_norm([a, b])) == pytest.approx(5.0)
    assert float(total_gradient_norm([])) == 0.0


def test_a_loss_scaler_gets_a_foreach_step_and_clipping_a_fused_one_is_refused():
    model = torch.nn.Linear(4, 4)
    config = OptimConfig(warmup_steps=0)
    unscaled, _ = build_optimizer(model, config, 10)
    scaled, _ = build_optimizer(model, config, 10, grad_scaler=True)
    assert unscaled.defaults["fused"] and not scaled.defaults["fused"]
    check_clipping(scaled, grad_scaler=object())
    check_clipping(unscaled, grad_scaler=None)
    with pytest.raises(ConfigError, match="trainer.gradient_clip_val"):
        check_clipping(unscaled, grad_scaler=object())
