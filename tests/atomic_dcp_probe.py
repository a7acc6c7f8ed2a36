"""Two CPU ranks of FSDP2 saving distributed checkpoints; optionally killed inside a save.

Run as a script (Lightning relaunches it for rank 1)::

    python tests/atomic_dcp_probe.py RUN_DIR keep|kill|resume MAX_STEPS

``keep``: a checkpoint every step, the last two kept (``monitor: step``), plus
``last.ckpt``. ``kill``: the same, but both ranks are SIGKILLed right after
writing the shards of the 4th save (``last.ckpt`` at step 2), before it is put
in place. ``resume``: continue from ``RUN_DIR/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.distributed.fsdp import fully_shard

from jreg_lightning.checkpoints import AtomicCheckpointIO, AtomicModelParallelStrategy


class TinyRegression(L.LightningModule):
    """Two sharded linear layers fitting random targets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def configure_model(self) -> None:
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=self.device_mesh["data_parallel"])
        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        inputs, targets = (
            torch.randn(64, 8, generator=generator),
            torch.randn(64, 1, generator=generator),
        )
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(inputs, targets), batch_size=4
        )


def die_inside_save(at_call: int) -> None:
    """Replace ``dcp.save``: the ``at_call``-th save writes its shards, then the rank dies."""
    real_save, calls = dcp.save, []

    def save(state, *args, **kwargs):
        calls.append(1)
        real_save(state, *args, **kwargs)
        if len(calls) == at_call:
            os.kill(os.getpid(), signal.SIGKILL)

    dcp.save = save


def main(run_dir: Path, mode: str, max_steps: int) -> None:
    if mode == "kill":
        die_inside_save(at_call=4)  # saves: step=1, last@1, step=2, last@2
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="{step}",
        every_n_train_steps=1,
        save_top_k=2,
        monitor="step",
        mode="max",
        save_last=True,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=AtomicModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        plugins=[AtomicCheckpointIO()],
        max_steps=max_steps,
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ckpt_path = run_dir / "checkpoints" / "last.ckpt" if mode == "resume" else None
    trainer.fit(TinyRegression(), ckpt_path=ckpt_path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
