"""A typed Llama shape and the Hugging Face model built from it (no hub)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from jreg_lightning.errors import ConfigError


@dataclass
class LlamaModelConfig:
    """Shape of a Llama-style decoder, built from scratch with random init.

    Attributes:
        vocab_size: rows of the embedding; must be >= the tokenizer's vocabulary.
        hidden_size: width d of the residual stream.
        intermediate_size: width of the SwiGLU feed-forward layer.
        num_layers: number of decoder blocks L.
        num_heads: attention heads; must divide hidden_size.
        num_kv_heads: key/value heads (grouped-query attention); must divide num_heads.
        max_position_embeddings: longest sequence the model is built for.
        rope_theta: base of the rotary position embedding.
        tie_word_embeddings: share the embedding and the LM head.
        initializer_range: std of the normal init of Linear and Embedding weights.
        rms_norm_eps: epsilon of the RMSNorm layers.
    """

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.llama.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.llama.num_heads={self.num_heads} does not divide hidden_size="
                f"{self.hidden_size}; choose heads so that hidden_size / num_heads is an integer"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.llama.num_kv_heads={self.num_kv_heads} does not divide num_heads="
                f"{self.num_heads}; use a divisor of num_heads (num_heads itself for plain MHA)"
            )
        if self.initializer_range <= 0:
            raise ConfigError(
                f"model.llama.initializer_range must be > 0, got {self.initializer_range}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def to_hf(self) -> LlamaConfig:
        """The equivalent ``transformers.LlamaConfig`` (SDPA attention, no cache)."""
        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            rms_norm_eps=self.rms_norm_eps,
            use_cache=False,
            attention_bias=False,
            mlp_bias=False,
            attn_implementation="sdpa",
        )
        return config

    @classmethod
    def from_hf(cls, config: LlamaConfig) -> LlamaModelConfig:
        """The shape of a ``transformers.LlamaConfig`` (e.g. a released model's ``config.json``).

        Only the fields this class has are read; whether the HF config uses
        features it cannot express (rope scaling, biases) is checked by
        ``jreg_lightning.pretrained.pretrained_llama_config``.
        """
        rope = getattr(config, "rope_parameters", None) or {}
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            max_position_embeddings=config.max_position_embeddings,
            rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            tie_word_embeddings=bool(config.tie_word_embeddings),
            initializer_range=float(config.initializer_range),
            rms_norm_eps=float(config.rms_norm_eps),
        )

    def num_parameters(self) -> int:
        """Exact parameter count of the built model (embeddings included)."""
        d, f, v, n = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        kv = self.num_kv_heads * self.head_dim
        attention = d * d * 2 + d * kv * 2
        block = attention + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + n * block + d + head


def build_llama(config: LlamaModelConfig, seed: int | None = None) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` of this shape, on the current device.

    Nothing is fetched: the model comes from the config alone. The weights come
    from ``jreg_lightning.init.init_llama_weights`` (HF's Llama init, seeded per
    parameter by ``seed``, default ``torch.initial_seed()``), so a model built on
    the meta device and materialised later, sharded or not, gets the same values.
    Under ``with torch.device("meta")`` the model is returned uninitialised.
    """
    from jreg_lightning.init import init_llama_weights

    model = LlamaForCausalLM(config.to_hf())
    if next(model.parameters()).is_meta:
        return model
    seed = torch.initial_seed() if seed is None else seed
    return init_llama_weights(model, config.initializer_range, seed)
