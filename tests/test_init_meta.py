"""A model built on the meta device and materialised equals an eager build, tensor by tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from jreg_lightning.init import init_llama_weights, materialize_llama
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.module import JregLightningModule
from jreg_lightning.parallelize import ParallelConfig, parallelize_llama
from tests.conftest import TINY_LLAMA

UNTIED = LlamaModelConfig(**{**TINY_LLAMA, "tie_word_embeddings": False})


def _meta_then_materialise(config: LlamaModelConfig, seed: int) -> nn.Module:
    with torch.device("meta"):
        model = build_llama(config)
    assert all(p.is_meta for p in model.parameters())
    return materialize_llama(model, "cpu", config.initializer_range, seed)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_meta_build_equals_eager_build_parameter_by_parameter(tied):
    config = LlamaModelConfig(**{**TINY_LLAMA, "tie_word_embeddings": tied})
    torch.manual_seed(7)
    eager = build_llama(config)
    meta = _meta_then_materialise(config, seed=7)

    eager_params, meta_params = dict(eager.named_parameters()), dict(meta.named_parameters())
    assert eager_params.keys() == meta_params.keys()
    for name, value in eager_params.items():
        assert torch.equal(value, meta_params[name]), name
    eager_buffers, meta_buffers = dict(eager.named_buffers()), dict(meta.named_buffers())
    assert (
        eager_buffers.keys()
        == meta_buffers.keys()
        == {
            "model.rotary_emb.inv_freq",
            "model.rotary_emb.original_inv_freq",
        }
    )
    for name, value in eager_buffers.items():
        assert torch.equal(value, meta_buffers[name]), name
    assert (meta.lm_head.weight is meta.model.embed_tokens.weight) == tied


def test_init_follows_hugging_face_scheme():
    torch.manual_seed(0)
    reference = LlamaForCausalLM(UNTIED.to_hf())  # HF's own init
    ours = _meta_then_materialise(UNTIED, seed=0)
    std = UNTIED.initializer_range
    for (name, theirs), mine in zip(reference.named_parameters(), ours.parameters()):
        if theirs.ndim == 1:  # RMSNorm weights
            assert torch.equal(mine, torch.ones_like(mine)), name
        else:  # Linear / Embedding: normal(0, initializer_range)
            assert abs(mine.mean().item()) < 3 * std / mine.numel() ** 0.5 + 1e-4, name
            assert mine.std().item() == pytest.approx(std, rel=0.1), name
            assert mine.std().item() == pytest.approx(theirs.std().item(), rel=0.15), name
    for (name, theirs), mine in zip(reference.named_buffers(), ours.buffers()):
        assert torch.equal(mine, theirs), name


def test_seed_decides_the_weights_and_wrappers_do_not():
    plain = _meta_then_materialise(UNTIED, seed=3)
    other_seed = _meta_then_materialise(UNTIED, seed=4)
    with torch.device("meta"):
        wrapped = build_llama(UNTIED)
    parallelize_llama(wrapped, ParallelConfig(activation_checkpointing=True))
    materialize_llama(wrapped, "cpu", UNTIED.initializer_range, seed=3)

    for mine, theirs in zip(plain.parameters(), wrapped.parameters()):
        assert torch.equal(mine, theirs)
    weight = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(plain.get_parameter(weight), other_seed.get_parameter(weight))


def test_unknown_parameter_is_refused_not_left_uninitialised():
    with torch.device("meta"):
        model = build_llama(UNTIED)
    model.model.extra = nn.Conv1d(2, 2, 1)
    model.to_empty(device="cpu")
    with pytest.raises(TypeError, match=r"model\.extra\.weight"):
        init_llama_weights(model, 0.02, seed=0)


def test_module_configure_model_is_idempotent_and_seeded():
    torch.manual_seed(11)
    module = JregLightningModule(llama=UNTIED)
    module.configure_model()
    first = module.model
    module.configure_model()
    assert module.model is first
    torch.manual_seed(11)
    eager = build_llama(UNTIED)
    for mine, theirs in zip(first.parameters(), eager.parameters()):
        assert torch.equal(mine, theirs)


def test_init_draws_on_the_cpu_whatever_the_default_device():
    # Lightning calls configure_model under its strategy's default device (the GPU under
    # DDP or one device); "meta" stands in for it on a CPU-only machine.
    config = LlamaModelConfig(**TINY_LLAMA)
    expected = _meta_then_materialise(config, seed=5)
    with torch.device("meta"):
        model = build_llama(config)
    with torch.device("meta"):
        materialize_llama(model, "cpu", config.initializer_range, seed=5)
    for (name, value), reference in zip(model.named_parameters(), expected.parameters()):
        assert torch.equal(value, reference), name
