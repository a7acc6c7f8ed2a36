"""A tiny tokenizer and a tiny trained checkpoint for the export and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from jreg_lightning.data.datamodule import TokenShardDataModule
from jreg_lightning.data.tokenizer import train_byte_level_bpe
from jreg_lightning.module import JregLightningModule
from tests.conftest import TINY_LLAMA
from tests.tiny_fit import quiet_trainer

_TEXT = [
    "The cat sat on the mat and the dog sat on the log.",
    "Water is wet, fire is hot, and ice is cold.",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "One plus one is two. Two plus two is four.",
    "The sun rises in the east and sets in the west.",
]


def write_tokenizer(out_dir: Path, vocab_size: int = 300) -> Path:
    """Train the project's byte-level BPE on a few sentences; return the ``tokenizer.json``."""
    tokenizer = train_byte_level_bpe(_TEXT * 4, vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_checkpoint(path: Path, shards: Path, jreg: dict | None = None, steps: int = 2) -> Path:
    """Fit the 4-block test model for ``steps`` steps on ``shards`` and save a ``.ckpt``."""
    L.seed_everything(0, verbose=False)
    module = JregLightningModule(
        llama=TINY_LLAMA,
        jreg=jreg or {"lam": 0.5, "weights": "linear"},
        optim={"lr": 3e-3, "warmup_steps": 1},
    )
    data = TokenShardDataModule(data_dir=shards, seq_len=32, batch_size=4)
    trainer = quiet_trainer(
        devices=1, max_steps=steps, limit_val_batches=0, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(path)
    return path


def write_module_checkpoint(path: Path, llama: dict | None = None, seed: int = 0) -> Path:
    """Save an untrained module in Lightning's single-file layout (no Trainer, no fit).

    The file holds what export reads from a Trainer checkpoint: ``state_dict``
    (keys ``model.<hf key>``) and ``hyper_parameters``.
    """
    import torch

    torch.manual_seed(seed)
    module = JregLightningModule(llama=llama or TINY_LLAMA)
    module.configure_model()
    if module.llama_config.tie_word_embeddings:
        module.model.tie_weights()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path
