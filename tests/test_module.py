"""The LightningModule: lam = 0 is the exact baseline; logging; optimizer groups."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import parameter_groups, warmup_cosine
from jreg_lightning.regularizer import JregConfig
from tests.conftest import TINY_LLAMA
from tests.tiny_fit import fit_tiny, random_blocks


class PlainCrossEntropyModule(JregLightningModule):
    """The reference: plain CE on the logits, no hidden states, no JREG code path."""

    def training_step(self, batch, batch_idx):
        inputs, targets = batch[:, :-1], batch[:, 1:].long()
        logits = self.model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def test_lambda_zero_is_bit_identical_to_plain_cross_entropy():
    baseline, baseline_losses, trainer = fit_tiny(JregLightningModule, JregConfig(lam=0.0))
    reference, reference_losses, _ = fit_tiny(PlainCrossEntropyModule, JregConfig(lam=0.0))
    assert len(baseline_losses) == len(reference_losses) == 10
    for step, (mine, theirs) in enumerate(zip(baseline_losses, reference_losses, strict=True)):
        assert torch.equal(mine, theirs), f"loss differs at step {step}: {mine} vs {theirs}"
    for (name, mine), (_, theirs) in zip(
        baseline.model.named_parameters(), reference.model.named_parameters(), strict=True
    ):
        assert torch.equal(mine, theirs), f"parameter {name} differs"
    # The displacement metrics are still measured and logged at lam = 0.
    logged = trainer.logged_metrics
    assert logged["train/jreg"].item() == 0.0
    assert "train/jump_strength" in logged and "train/psi/layer_04" in logged


def test_jreg_enters_the_loss_and_changes_training():
    _, baseline_losses, _ = fit_tiny(JregLightningModule, JregConfig(lam=0.0), steps=4)
    _, jreg_losses, trainer = fit_tiny(
        JregLightningModule, JregConfig(lam=1.0, weights="uniform"), steps=4, log_every=1
    )
    logged = trainer.logged_metrics
    assert logged["train/jreg"].item() > 0
    assert logged["train/loss"].item() == pytest.approx(
        logged["train/ce"].item() + logged["train/jreg"].item(), rel=1e-6
    )
    # Step 0 sees the same weights: the loss differs exactly by the JREG term.
    assert jreg_losses[0].item() > baseline_losses[0].item()
    assert not torch.equal(jreg_losses[-1], baseline_losses[-1])
    names = {f"train/psi/layer_{i:02d}" for i in range(1, 5)}
    assert names <= set(logged)
    assert {"train/jump_strength", "train/jump_strength_late", "train/jump_layer"} <= set(logged)


def test_configure_model_is_idempotent():
    module = JregLightningModule(LlamaModelConfig(**TINY_LLAMA))
    module.configure_model()
    first = module.model
    module.configure_model()
    assert module.model is first


def test_hyperparameters_are_plain_and_round_trip():
    module = JregLightningModule(
        LlamaModelConfig(**TINY_LLAMA), JregConfig(lam=0.5, weights="final")
    )
    hparams = dict(module.hparams)
    assert isinstance(hparams["llama"], dict) and isinstance(hparams["jreg"], dict)
    rebuilt = JregLightningModule(**hparams)
    assert rebuilt.llama_config == module.llama_config
    assert rebuilt.jreg_config == module.jreg_config


def test_no_weight_decay_on_norms_biases_and_embeddings():
    module = JregLightningModule(LlamaModelConfig(**TINY_LLAMA, tie_word_embeddings=False))
    module.configure_model()
    decay, no_decay = parameter_groups(module.model, 0.1)
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert "model.embed_tokens.weight" in not_decayed
    assert all("norm" in n or "embed" in n for n in not_decayed)
    assert "lm_head.weight" in decayed
    assert all(p.ndim == 2 for p in decay["params"])


def test_warmup_then_cosine_to_min_lr():
    factors = [warmup_cosine(step, 10, 110, 0.1) for step in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[110] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_max_steps_is_required():
    module = JregLightningModule(LlamaModelConfig(**TINY_LLAMA))
    module.configure_model()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False)
    module.trainer = trainer
    with pytest.raises(ValueError, match="trainer.max_steps must be set"):
        module.configure_optimizers()


def test_pre_norm_hook_adds_no_second_model_to_the_state_dict():
    """The pre_norm hook once kept the model in an attribute, registering it twice (found by
    the study: its pre_norm checkpoint failed to load in validate)."""
    module = JregLightningModule(
        llama=LlamaModelConfig(**TINY_LLAMA), jreg=JregConfig(lam=1.0, final_state="pre_norm")
    )
    module.configure_model()
    module.forward_with_states(random_blocks(num=2)[:, :-1])
    keys = list(module.state_dict())
    assert "model.model.embed_tokens.weight" in keys
    assert not any(key.startswith("_pre_norm_hooked") for key in keys)

    # A checkpoint written before the fix (the model twice) still loads.
    state = dict(module.state_dict())
    state.update({f"_pre_norm_hooked.{k}": v for k, v in module.state_dict().items()})
    checkpoint = {"state_dict": state, "hyper_parameters": dict(module.hparams)}
    fresh = JregLightningModule(
        llama=LlamaModelConfig(**TINY_LLAMA), jreg=JregConfig(lam=1.0, final_state="pre_norm")
    )
    fresh.configure_model()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
