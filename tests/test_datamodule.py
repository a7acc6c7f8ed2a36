"""TokenShardDataModule: token accounting, batches of int ids; the shards checked before a run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from jreg_lightning.data.datamodule import MAX_AUTO_WORKERS, TokenShardDataModule, loader_workers
from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.preflight import check_sequence_length, check_token_shards
from tests.conftest import TINY_LLAMA
from tests.corpora import prepare_small, write_corpus


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Prepared shards: vocab 300 (uint16), packed for seq_len 32."""
    root = tmp_path_factory.mktemp("dm")
    write_corpus(root / "docs.jsonl", documents=60)
    prepare_small(root / "docs.jsonl", root / "out")
    return root / "out"


def _attached(data_dir, seq_len=32, batch_size=4) -> TokenShardDataModule:
    """A data module with a one-device trainer reference, as in a fit."""
    data = TokenShardDataModule(data_dir=data_dir, seq_len=seq_len, batch_size=batch_size)
    data.trainer = SimpleNamespace(world_size=1)
    return data


def test_setup_accounts_tokens_and_batches_are_int_ids(shards):
    data = _attached(shards)
    data.setup("fit")
    meta = json.loads((shards / "meta.json").read_text())
    for split in ("train", "val"):
        assert data.accounting[split]["tokens"] == meta["splits"][split]["tokens"]
        assert data.accounting[split]["usable_tokens"] == meta["splits"][split]["usable_tokens"]
    loader = data.train_dataloader()
    epoch = data.accounting["train"]
    assert epoch["batches_per_epoch"] == len(loader.dataset) // 4
    assert epoch["epoch_tokens"] == epoch["batches_per_epoch"] * 4 * 33
    assert epoch["epoch_tokens"] <= epoch["usable_tokens"]
    batch = data.on_before_batch_transfer(next(iter(loader)), 0)
    assert batch.shape == (4, 33) and batch.dtype == torch.int32
    assert int(batch.max()) < 300


def test_vocab_larger_than_the_model_is_refused_before_the_run(shards):
    # cli.py checks the shards against the model (preflight); setup does not repeat it.
    with pytest.raises(ConfigError, match=r"model.llama.vocab_size=256 is below .* 300"):
        check_token_shards(shards, ("train", "val"), seq_len=32, batch_size=4, vocab_size=256)


def test_seq_len_above_the_model_positions_is_refused_before_the_run():
    with pytest.raises(
        ConfigError, match=r"data.seq_len=128 is above .*max_position_embeddings=64"
    ):
        check_sequence_length(128, LlamaModelConfig(**TINY_LLAMA))


def test_missing_or_foreign_folder_is_refused(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"data.data_dir: .*train does not exist"):
        _attached(tmp_path / "nowhere").setup("fit")
    (tmp_path / "plain" / "train").mkdir(parents=True)
    (tmp_path / "plain" / "train" / "notes.txt").write_text("not shards")
    with pytest.raises(ConfigError, match=r"is not a litdata dataset"):
        _attached(tmp_path / "plain").setup("fit")


def test_seq_len_other_than_the_packing_warns_and_counts_the_loss(shards):
    data = _attached(shards, seq_len=20)
    with pytest.warns(UserWarning, match=r"packed for seq_len=32"):
        data.setup("validate")
    info = data.accounting["val"]
    assert "train" not in data.accounting
    assert info["usable_tokens"] % 21 == 0 and info["usable_tokens"] < info["tokens"]


def test_auto_loader_workers_share_the_cores_and_keep_one_per_rank(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert loader_workers("auto", ranks_per_node=1) == 1
    assert loader_workers("auto", ranks_per_node=2) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert loader_workers("auto", ranks_per_node=8) == min(MAX_AUTO_WORKERS, 11)
    assert loader_workers(3, ranks_per_node=8) == 3, "a number is used as given"
