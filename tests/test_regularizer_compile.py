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


def test_module_compiles_the_term_with_the_blocks_only():
    """``compile_scope: blocks`` compiles the term on its own; ``loss`` traces it in the loss."""
    from jreg_lightning.displacement import displacement
    from jreg_lightning.module import JregLightningModule
    from jreg_lightning.parallelize import ParallelConfig
    from tests.conftest import TINY_LLAMA

    modules = {}
    for scope in ("blocks", "loss"):
        parallel = ParallelConfig(compile=True, compile_scope=scope)
        modules[scope] = JregLightningModule(
            llama=TINY_LLAMA, jreg=JregConfig(lam=1.0), parallel=parallel
        )
        modules[scope].configure_model()
    assert modules["blocks"].regularizer._displacement is not displacement
    assert modules["blocks"]._compiled_losses is None
    assert modules["loss"].regularizer._displacement is displacement
    assert modules["loss"]._compiled_losses is not None


@pytest.mark.parametrize("final_state", ["post_norm", "pre_norm"])
@pytest.mark.parametrize("weights", ["linear", "final"])
def test_psi_captured_in_forward_equals_psi_from_states(final_state, weights):
    """``term`` (Psi made block by block by the hooks) gives ``forward``'s term and gradients."""
    from jreg_lightning.model_config import LlamaModelConfig, build_llama
    from tests.conftest import TINY_LLAMA

    torch.manual_seed(0)
    config = JregConfig(lam=0.5, weights=weights, final_state=final_state)
    model = build_llama(LlamaModelConfig(**TINY_LLAMA))
    regularizer = JumpRegularizer(config, TINY_LLAMA["num_layers"])
    regularizer.attach(model)
    tokens = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12))
    last: dict = {}
    hook = model.model.layers[-1].register_forward_hook(lambda m, a, out: last.update(h=out))
    _, states = regularizer.run_model(model, tokens, record_psi=True)
    hook.remove()
    assert sorted(regularizer._psi) == regularizer.active_layers
    if final_state == "pre_norm":
        assert states[-1] is last["h"]
    captured, captured_sums, _ = regularizer.term()
    assert not regularizer._psi
    reference, reference_sums, _ = regularizer(states)
    torch.testing.assert_close(captured, reference)
    torch.testing.assert_close(
        torch.stack(list(captured_sums.values())), torch.stack(list(reference_sums.values()))
    )
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(captured, params, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(reference, params, allow_unused=True)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, e)


def test_hooks_are_idle_outside_a_recording_forward():
    """Attached hooks record nothing in a plain forward or one without ``record_psi``."""
    from jreg_lightning.model_config import LlamaModelConfig, build_llama
    from tests.conftest import TINY_LLAMA

    torch.manual_seed(0)
    config = JregConfig(lam=0.5, weights="linear", final_state="pre_norm")
    model = build_llama(LlamaModelConfig(**TINY_LLAMA))
    regularizer = JumpRegularizer(config, TINY_LLAMA["num_layers"])
    regularizer.attach(model)
    regularizer.attach(model)  # once per model
    assert len(regularizer._handles) == len(regularizer.active_layers) + 1
    tokens = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 12))
    model(input_ids=tokens, output_hidden_states=True)
    regularizer.run_model(model, tokens)
    assert not regularizer._psi and not regularizer._held
    with pytest.raises(RuntimeError, match="record_psi=True"):
        regularizer.term()
    regularizer.detach()
    with pytest.raises(ValueError, match="needs the last block's raw output"):
        regularizer.run_model(model, tokens)
