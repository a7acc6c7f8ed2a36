"""The parts of a Hugging Face model the analysis needs: blocks, final norm, LM head.

The logit lens reads block l's residual stream h_l through the model's own
final norm and LM head: ``head(norm(h_l))`` (``jreg_lightning.losses.early_exit_loss_sum``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from jreg_lightning.errors import ConfigError

# Attribute names of the final norm on the base model across HF families
# (Llama/Mistral/Qwen: norm, GPT-2: ln_f, GPT-NeoX: final_layer_norm, OPT: final_layer_norm,
# Phi: final_layernorm).
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")


@dataclass
class DecoderParts:
    """The blocks, the final norm and the LM head of a model.

    Attributes:
        layers: the L blocks in order (``model.model.layers`` for Llama).
        final_norm: the norm applied after the last block, or None (e.g. post-LN encoders).
        head: the output embedding (LM head), or None for a model without one.
    """

    layers: nn.ModuleList
    final_norm: nn.Module | None
    head: nn.Module | None


def _num_hidden_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def find_decoder_parts(model: nn.Module) -> DecoderParts:
    """Locate the blocks, final norm and LM head of a Hugging Face model.

    The blocks are the first ``nn.ModuleList`` (in module order) whose length is
    the config's number of hidden layers.

    Raises:
        ValueError: when no such list exists (the model is not a stack of blocks).
    """
    expected = _num_hidden_layers(model)
    layers = None
    for _, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (expected is None or len(module) == expected)
        ):
            layers = module
            break
    if layers is None:
        raise ConfigError(
            f"analysis: found no list of {expected} blocks in {type(model).__name__}; "
            "pass a transformer whose config gives num_hidden_layers"
        )
    base = getattr(model, "base_model", model)
    final_norm = None
    for name in _FINAL_NORM_NAMES:
        candidate = getattr(base, name, None)
        if isinstance(candidate, nn.Module):
            final_norm = candidate
            break
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return DecoderParts(layers=layers, final_norm=final_norm, head=head)


def block_output(output) -> Tensor:
    """The hidden state a block returned (HF blocks return a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output
