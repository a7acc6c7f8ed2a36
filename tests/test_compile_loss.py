"""``model.parallel.compile``: what it wraps, and the compiled loss trains like the eager one."""

from __future__ import annotations

import pytest
import torch

from jreg_lightning.module import JregLightningModule
from jreg_lightning.parallelize import ParallelConfig
from jreg_lightning.regularizer import JregConfig
from tests.tiny_fit import fit_tiny


@pytest.mark.parametrize(
    ("config", "sharded", "expected"),
    [
        (ParallelConfig(), False, None),
        (ParallelConfig(compile=True), False, "loss"),
        (ParallelConfig(compile=True), True, "blocks"),
        (ParallelConfig(compile=True, activation_checkpointing=True), False, "blocks"),
        (ParallelConfig(compile=True, compile_scope="blocks"), False, "blocks"),
        (ParallelConfig(compile=True, compile_scope="loss"), False, "loss"),
        (ParallelConfig(compile=False, compile_scope="loss"), False, None),
    ],
)
def test_compile_target(config, sharded, expected):
    assert config.compile_target(sharded=sharded) == expected


def test_compile_scope_errors_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"model\.parallel\.compile_scope must be one of"):
        ParallelConfig(compile=True, compile_scope="model")
    with pytest.raises(
        ValueError, match=r"compile_scope: loss cannot .* use compile_scope: blocks"
    ):
        ParallelConfig(compile=True, compile_scope="loss", activation_checkpointing=True)
    with pytest.raises(ValueError, match=r"under FSDP2 use compile_scope: blocks"):
        ParallelConfig(compile=True, compile_scope="loss").compile_target(sharded=True)


@pytest.mark.slow
@pytest.mark.parametrize("final_state", ["pre_norm", "post_norm"])
def test_compiled_loss_trains_like_eager(final_state):
    """Same losses, logged profile and weights after 4 Trainer steps; keys unchanged."""
    jreg = JregConfig(lam=1.0, weights="linear", final_state=final_state)
    compiled_parallel = ParallelConfig(compile=True, compile_scope="loss")
    eager, eager_losses, eager_trainer = fit_tiny(JregLightningModule, jreg, steps=4, log_every=2)
    compiled, compiled_losses, compiled_trainer = fit_tiny(
        JregLightningModule, jreg, steps=4, log_every=2, parallel=compiled_parallel
    )
    assert compiled._compiled_losses is not None
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses))
    for name in ("train/ce", "train/jreg", "train/jump_strength", "train/psi/layer_04"):
        torch.testing.assert_close(
            compiled_trainer.logged_metrics[name], eager_trainer.logged_metrics[name]
        )
    # The compiled function wraps no module: checkpoint keys are the plain model's.
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    for (name, got), (_, expected) in zip(
        compiled.model.named_parameters(), eager.model.named_parameters(), strict=True
    ):
        # Fused kernels round differently and AdamW magnifies tiny gradients element-wise,
        # so the weights are compared as a whole (observed: ~1e-6 relative).
        assert (got - expected).norm() <= 1e-4 * expected.norm(), name
