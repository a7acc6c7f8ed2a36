"""Shared fixtures: tiny model shapes and token shards made in tmp."""

from __future__ import annotations

import os

import pytest

from tests.shards import write_token_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_LLAMA = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory):
    """Train/val litdata shards of 512-token vocabulary and 32-token sequences."""
    return write_token_shards(tmp_path_factory.mktemp("shards"), vocab_size=512, seq_len=32)
