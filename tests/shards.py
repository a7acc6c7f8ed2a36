"""Small litdata token shards for tests, written with ``litdata.optimize``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from litdata import TokensLoader, optimize


def _document_tokens(index: int, vocab_size: int, length: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed * 100_003 + index)
    # A repeating, learnable pattern plus noise, so the loss can fall in a few steps.
    base = rng.integers(0, vocab_size, size=16)
    tokens = np.resize(base, length)
    noise = rng.random(length) < 0.1
    tokens[noise] = rng.integers(0, vocab_size, size=int(noise.sum()))
    return torch.tensor(tokens, dtype=torch.int32)


def _yield_document(index: int, vocab_size: int, length: int, seed: int):
    yield _document_tokens(index, vocab_size, length, seed)


def write_token_shards(
    out_dir: Path,
    vocab_size: int = 512,
    seq_len: int = 32,
    train_documents: int = 64,
    val_documents: int = 8,
    document_tokens: int = 330,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/train`` and ``out_dir/val`` litdata token datasets.

    Chunks hold whole blocks of ``seq_len + 1`` tokens so that nothing is dropped.
    """
    block = seq_len + 1
    for split, count, split_seed in (
        ("train", train_documents, seed),
        ("val", val_documents, seed + 1),
    ):
        optimize(
            fn=partial(
                _yield_document, vocab_size=vocab_size, length=document_tokens, seed=split_seed
            ),
            inputs=list(range(count)),
            output_dir=str(out_dir / split),
            chunk_size=block * 20,
            item_loader=TokensLoader(),
            num_workers=1,
            mode="overwrite",
        )
    return out_dir
