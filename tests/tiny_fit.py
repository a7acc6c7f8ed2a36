"""Fit the 4-block test model in memory on CPU: a quiet Trainer, random blocks, recorded losses."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.optim import OptimConfig
from jreg_lightning.regularizer import JregConfig
from tests.conftest import TINY_LLAMA


def quiet_trainer(**settings) -> L.Trainer:
    """A CPU ``L.Trainer`` that prints and writes nothing of its own; ``settings`` add to it."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )


class LossRecorder(L.Callback):
    """The loss of every training step, detached, in order."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def random_blocks(num=40, seq_len=16, vocab=TINY_LLAMA["vocab_size"], seed=0) -> torch.Tensor:
    """``(num, seq_len + 1)`` random token ids, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num, seq_len + 1), generator=generator)


def fit_tiny(module_cls, jreg: JregConfig, steps=10, log_every=3, parallel=None):
    """Fit ``module_cls`` on ``TINY_LLAMA`` for ``steps`` steps of 4 random blocks (seeded).

    Returns:
        ``(module, losses, trainer)``: the fitted module, each step's loss, the Trainer.
    """
    L.seed_everything(7, verbose=False)
    module = module_cls(
        LlamaModelConfig(**TINY_LLAMA),
        jreg,
        OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
        parallel=parallel,
    )
    recorder = LossRecorder()
    trainer = quiet_trainer(
        max_steps=steps,
        enable_checkpointing=False,
        log_every_n_steps=log_every,
        gradient_clip_val=1.0,
        callbacks=[recorder],
        deterministic=True,
    )
    trainer.fit(module, DataLoader(random_blocks(), batch_size=4, shuffle=False))
    return module, recorder.losses, trainer
