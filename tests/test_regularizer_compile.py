"""The compiled JREG term (``model.parallel.compile``) gives the eager term's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from jreg_lightning.regularizer import JregConfig, JumpRegularizer


@pytest.mark.slow
def test_compiled_term_matches_eager():
    torch.manual_seed(0)
    config = JregConfig(lam=0.7, weights="linear")
    states = [torch.randn(2, 8, 16, requires_grad=True) for _ in range(4)]
    eager, _, _ = JumpRegularizer(config, 3)(states)
    eager_grads = torch.autograd.grad(eager, states)
    compiled, _, _ = JumpRegularizer(config, 3, compile=True)(states)
    compiled_grads = torch.autograd.grad(compiled, states)
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, expected)


def test_module_compiles_the_term_with_the_blocks():
    from jreg_lightning.displacement import displacement
    from jreg_lightning.module import JregLightningModule
    from jreg_lightning.parallelize import ParallelConfig
    from tests.conftest import TINY_LLAMA

    plain = JregLightningModule(llama=TINY_LLAMA, jreg=JregConfig(lam=1.0))
    compiled = JregLightningModule(
        llama=TINY_LLAMA, jreg=JregConfig(lam=1.0), parallel=ParallelConfig(compile=True)
    )
    assert plain.regularizer._displacement is displacement
    assert compiled.regularizer._displacement is not displacement
