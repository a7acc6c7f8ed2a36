"""Block wrappers (activation checkpointing, compile) keep the JREG loss and its gradients."""

from __future__ import annotations

import pytest
import torch

from jreg_lightning.checkpoints import strip_compiled_prefix
from jreg_lightning.init import canonical_name
from jreg_lightning.module import JregLightningModule
from jreg_lightning.parallelize import ParallelConfig
from jreg_lightning.regularizer import JregConfig
from tests.conftest import TINY_LLAMA

# pre_norm: the final state is captured by a forward hook on the last (wrapped) block.
JREG = JregConfig(lam=1.0, weights="linear", final_state="pre_norm")


def _loss_and_grads(parallel: ParallelConfig) -> tuple[JregLightningModule, float, dict]:
    torch.manual_seed(3)
    module = JregLightningModule(llama=dict(TINY_LLAMA), jreg=JREG, parallel=parallel)
    module.configure_model()
    batch = torch.randint(
        0, TINY_LLAMA["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0)
    )
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {canonical_name(n): p.grad for n, p in module.model.named_parameters()}
    return module, loss.item(), grads


def _assert_same(reference, other) -> None:
    _, loss, grads = reference
    _, other_loss, other_grads = other
    assert other_loss == pytest.approx(loss, rel=1e-6)
    assert other_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(other_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_keeps_loss_gradients_and_keys():
    plain = _loss_and_grads(ParallelConfig())
    checkpointed = _loss_and_grads(ParallelConfig(activation_checkpointing=True))
    _assert_same(plain, checkpointed)
    # CheckpointWrapper strips its own segment from state-dict keys.
    assert checkpointed[0].state_dict().keys() == plain[0].state_dict().keys()


@pytest.mark.slow
def test_compiled_blocks_keep_loss_and_gradients_and_keys_map_back():
    plain = _loss_and_grads(ParallelConfig())
    compiled = _loss_and_grads(ParallelConfig(compile=True, activation_checkpointing=True))
    _assert_same(plain, compiled)
    keys = compiled[0].state_dict().keys()
    assert any("_orig_mod." in key for key in keys)
    assert strip_compiled_prefix(dict.fromkeys(keys)).keys() == plain[0].state_dict().keys()
