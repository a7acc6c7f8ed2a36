"""Checkpoint keys never depend on torch.compile: a run resumes with compile on or off."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from jreg_lightning.checkpoints import COMPILE_PREFIX, AtomicCheckpointIO
from jreg_lightning.data.datamodule import TokenShardDataModule
from jreg_lightning.module import JregLightningModule
from tests.conftest import TINY_LLAMA
from tests.exported_model import write_checkpoint


def _module(compile: bool, seed: int = 0) -> JregLightningModule:
    """The tiny module, its blocks compiled per block (lazily: nothing is traced here)."""
    torch.manual_seed(seed)
    parallel = {"compile": compile, "compile_scope": "blocks"}
    module = JregLightningModule(llama=TINY_LLAMA, parallel=parallel)
    module.configure_model()
    return module


def _assert_same_weights(module, state_dict) -> None:
    plain = {key.replace(COMPILE_PREFIX, ""): v for key, v in module.state_dict().items()}
    assert plain.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(plain[key], value), key


def test_saved_keys_are_plain_and_load_into_either_build(tmp_path):
    compiled, eager = _module(compile=True), _module(compile=False, seed=1)
    assert any(COMPILE_PREFIX in key for key in compiled.state_dict())
    checkpoint_io, path = AtomicCheckpointIO(), tmp_path / "compiled.ckpt"
    checkpoint_io.save_checkpoint({"state_dict": compiled.state_dict(), "global_step": 3}, path)
    saved = checkpoint_io.load_checkpoint(path)["state_dict"]
    assert not any(COMPILE_PREFIX in key for key in saved)

    eager.load_state_dict(saved)  # strict: every key matched
    _assert_same_weights(eager, saved)
    recompiled = _module(compile=True, seed=2)
    recompiled.load_state_dict(saved)
    _assert_same_weights(recompiled, saved)
    # Checkpoints written before keys were normalised (with _orig_mod.) still load.
    older = _module(compile=True, seed=3)
    older.load_state_dict(compiled.state_dict())
    _assert_same_weights(older, saved)


@pytest.mark.slow
def test_an_eager_run_resumes_with_compiled_blocks(tmp_path, token_shards):
    path = write_checkpoint(tmp_path / "eager.ckpt", token_shards, steps=1)
    saved = torch.load(path, weights_only=True)["state_dict"]
    # max_steps is reached at once: the checkpoint is restored (strictly) and no step
    # runs, so nothing is compiled.
    compiled = _module(compile=True, seed=1)
    resumed = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
    )
    data = TokenShardDataModule(data_dir=token_shards, seq_len=32, batch_size=4)
    resumed.fit(compiled, datamodule=data, ckpt_path=path)
    _assert_same_weights(compiled, saved)
