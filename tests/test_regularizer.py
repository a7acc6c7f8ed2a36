"""JumpRegularizer against a naive reference, and which final state it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jreg_lightning import regularizer as regularizer_module
from jreg_lightning.regularizer import JregConfig, JumpRegularizer
from tests.conftest import TINY_LLAMA


def _naive_jreg(states, weights, lam):
    """Stack every state in float32 and use F.cosine_similarity: the textbook formula."""
    total = 0.0
    for index, weight in enumerate(weights):
        cos = F.cosine_similarity(states[index].float(), states[index + 1].float(), dim=-1)
        total = total + weight * ((1 - cos) / 2).mean()
    return lam * total


@pytest.mark.parametrize("scheme", ["final", "uniform", "linear"])
def test_loss_and_gradients_equal_naive_reference(scheme):
    torch.manual_seed(0)
    leaves = [torch.randn(2, 5, 16, requires_grad=True) for _ in range(5)]
    # Chain the states so that each leaf reaches the loss through two pairs.
    states = [leaves[0]] + [leaves[i] + 0.5 * leaves[i - 1] for i in range(1, 5)]
    regularizer = JumpRegularizer(JregConfig(lam=0.7, weights=scheme), num_layers=4)
    term, _, count = regularizer(states)
    grads = torch.autograd.grad(term, leaves, materialize_grads=True)

    states = [leaves[0]] + [leaves[i] + 0.5 * leaves[i - 1] for i in range(1, 5)]
    reference = _naive_jreg(states, regularizer.weights.tolist(), 0.7)
    reference_grads = torch.autograd.grad(reference, leaves, materialize_grads=True)
    assert count.item() == 10
    assert term.item() == pytest.approx(reference.item(), rel=1e-5)
    for grad, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)


def test_gradients_flow_through_both_states_of_a_pair():
    torch.manual_seed(1)
    states = [torch.randn(1, 3, 8, requires_grad=True) for _ in range(4)]
    regularizer = JumpRegularizer(JregConfig(lam=1.0, weights="final"), num_layers=3)
    term, _, _ = regularizer(states)
    term.backward()
    assert states[0].grad is None and states[1].grad is None
    assert states[2].grad.abs().sum() > 0 and states[3].grad.abs().sum() > 0


def test_zero_weight_layers_are_not_computed(monkeypatch):
    calls = []
    real = regularizer_module.displacement

    def counting(h_prev, h_next):
        calls.append(1)
        return real(h_prev, h_next)

    monkeypatch.setattr(regularizer_module, "displacement", counting)
    states = [torch.randn(1, 2, 4) for _ in range(7)]
    regularizer = JumpRegularizer(JregConfig(lam=1.0, weights="last_k", last_k=2), num_layers=6)
    _, layer_sums, _ = regularizer(states)
    assert len(calls) == 2
    assert sorted(layer_sums) == [4, 5]


def test_mask_restricts_the_mean():
    torch.manual_seed(2)
    states = [torch.randn(1, 4, 8) for _ in range(3)]
    mask = torch.tensor([[1, 1, 0, 0]])
    regularizer = JumpRegularizer(JregConfig(lam=1.0, weights="uniform"), num_layers=2)
    term, _, count = regularizer(states, mask)
    expected = _naive_jreg([s[:, :2] for s in states], [0.5, 0.5], 1.0)
    assert count.item() == 2
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_config_is_refused_with_the_field_name():
    with pytest.raises(ValueError, match=r"jreg.lam must be a finite number >= 0"):
        JregConfig(lam=-0.1)
    with pytest.raises(ValueError, match="jreg.weights: unknown scheme"):
        JregConfig(weights="cubic")
    with pytest.raises(ValueError, match="jreg.final_state"):
        JregConfig(final_state="middle")
    with pytest.raises(ValueError, match="jreg: layer_weights: scheme 'explicit'"):
        JumpRegularizer(JregConfig(weights="explicit", explicit_weights=[1.0]), num_layers=3)


def test_post_norm_and_pre_norm_take_the_right_tensors():
    from jreg_lightning.model_config import LlamaModelConfig
    from jreg_lightning.module import JregLightningModule

    torch.manual_seed(3)
    llama = LlamaModelConfig(**TINY_LLAMA)
    tokens = torch.randint(0, llama.vocab_size, (2, 9))
    results = {}
    for final_state in ("post_norm", "pre_norm"):
        torch.manual_seed(3)
        module = JregLightningModule(llama, JregConfig(lam=1.0, final_state=final_state))
        module.configure_model()
        _, states = module.forward_with_states(tokens)
        hf = module.model(input_ids=tokens, output_hidden_states=True)
        results[final_state] = (states, hf.hidden_states)

    post_states, hf_states = results["post_norm"]
    assert len(post_states) == llama.num_layers + 1
    for mine, theirs in zip(post_states, hf_states, strict=True):
        torch.testing.assert_close(mine, theirs)

    pre_states, hf_states = results["pre_norm"]
    for mine, theirs in zip(pre_states[:-1], hf_states[:-1], strict=True):
        torch.testing.assert_close(mine, theirs)
    # The pre-norm final state is the last block's raw output: the final norm of it
    # gives the post-norm state, and it is not the post-norm state itself.
    module_norm = module.model.model.norm
    torch.testing.assert_close(module_norm(pre_states[-1]), hf_states[-1])
    assert not torch.allclose(pre_states[-1], hf_states[-1])
