"""JREG: the weighted sum of per-layer displacements added to the loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from jreg_lightning.displacement import (
    WEIGHT_SCHEMES,
    displacement,
    layer_sums_and_counts,
    layer_weights,
    masked_sum_and_count,
)
from jreg_lightning.errors import ConfigError

FinalState = Literal["post_norm", "pre_norm"]
WeightScheme = Literal["final", "last_k", "uniform", "linear", "explicit"]


@dataclass
class JregConfig:
    """Settings of the JREG term ``lam * sum_l w_l * Psi_l``.

    Attributes:
        lam: strength lambda, >= 0; 0 is the plain cross-entropy baseline (the
            profile is still measured and logged).
        weights: layer-weight scheme: final, last_k, uniform, linear or explicit.
        last_k: number of final blocks for ``weights: last_k``.
        explicit_weights: one weight per block for ``weights: explicit``.
        final_state: ``post_norm`` takes h_L after the final norm (the Hugging
            Face ``output_hidden_states`` convention); ``pre_norm`` takes the raw
            residual stream out of the last block.
    """

    lam: float = 0.0
    weights: WeightScheme = "linear"
    last_k: int | None = None
    explicit_weights: list[float] | None = None
    final_state: FinalState = "post_norm"

    def __post_init__(self) -> None:
        if not isinstance(self.lam, (int, float)) or not self.lam >= 0 or self.lam == float("inf"):
            raise ConfigError(
                f"jreg.lam must be a finite number >= 0, got {self.lam!r}; use 0 for the baseline"
            )
        if self.weights not in WEIGHT_SCHEMES:
            raise ConfigError(
                f"jreg.weights: unknown scheme {self.weights!r}; "
                f"use one of {', '.join(WEIGHT_SCHEMES)}"
            )
        if self.final_state not in ("post_norm", "pre_norm"):
            raise ConfigError(
                f"jreg.final_state must be post_norm or pre_norm, got {self.final_state!r}"
            )


class JumpRegularizer(torch.nn.Module):
    """Computes ``lam * sum_l w_l * Psi_l`` layer by layer.

    Only layers with a non-zero weight are computed, one pair of states at a
    time, so no float32 copy of all hidden states ever exists. Gradients flow
    through both states of each pair.

    With ``compile=True`` the per-pair displacement is ``torch.compile``-d: its
    casts, products and reductions fuse into a few kernels in forward and
    backward instead of about twenty elementwise passes over
    ``(batch, seq, hidden)`` (one graph, reused by every layer).
    """

    weights: Tensor

    def __init__(self, config: JregConfig, num_layers: int, compile: bool = False) -> None:
        super().__init__()
        self.config = config
        self.num_layers = num_layers
        self._displacement = displacement
        if compile:
            self.compile_displacement()
        try:
            weights = layer_weights(
                config.weights, num_layers, k=config.last_k, values=config.explicit_weights
            )
        except ValueError as err:
            raise ConfigError(f"jreg: {err}") from None
        self.register_buffer("weights", weights, persistent=False)
        self.active_layers = [i for i, w in enumerate(weights.tolist()) if w > 0]
        self._weight_values = weights.tolist()

    def compile_displacement(self) -> None:
        """``torch.compile`` the per-pair displacement (one graph reused by every layer)."""
        self._displacement = torch.compile(displacement)

    @property
    def enabled(self) -> bool:
        """Whether the term enters the loss (lam > 0)."""
        return self.config.lam > 0

    def select_states(
        self, hidden_states: Sequence[Tensor], pre_norm_final: Tensor | None = None
    ) -> list[Tensor]:
        """h_0 ... h_L from a Hugging Face ``hidden_states`` tuple.

        Args:
            hidden_states: the model's L+1 states; the last one is after the final norm.
            pre_norm_final: the last block's raw output, required for ``pre_norm``.
        """
        states = list(hidden_states)
        if len(states) != self.num_layers + 1:
            raise ValueError(
                f"jreg: expected {self.num_layers + 1} hidden states (embeddings + "
                f"{self.num_layers} blocks), got {len(states)}"
            )
        if self.config.final_state == "pre_norm":
            if pre_norm_final is None:
                raise ValueError("jreg: final_state 'pre_norm' needs the last block's raw output")
            states[-1] = pre_norm_final
        return states

    def forward(
        self, states: Sequence[Tensor], mask: Tensor | None = None
    ) -> tuple[Tensor, dict[int, Tensor], Tensor]:
        """The JREG term of one batch.

        Args:
            states: h_0 ... h_L, each ``(batch, seq, hidden)`` (see ``select_states``).
            mask: ``(batch, seq)``, 1 at real tokens; None for all positions.

        Returns:
            ``(term, layer_sums, count)``: the scalar ``lam * sum_l w_l * Psi_l``
            (float32, differentiable), the detached per-position Psi sums of the
            computed (non-zero weight) layers keyed by 0-based layer index, and
            the number of positions.
        """
        sums, count = layer_sums_and_counts(
            states, mask, layers=self.active_layers, psi=self._displacement
        )
        return self._weighted_term(sums, count)

    def combine(
        self, psi: dict[int, Tensor], mask: Tensor | None = None
    ) -> tuple[Tensor, dict[int, Tensor], Tensor]:
        """The term of ``forward`` from per-position Psi of the active layers (``capture``).

        Args:
            psi: ``(batch, seq)`` float32 Psi per active layer, keyed by 0-based index.
            mask: ``(batch, seq)``, 1 at real tokens; None for all positions.

        Returns:
            ``(term, layer_sums, count)`` as ``forward``.
        """
        sums_counts = [masked_sum_and_count(psi[index], mask) for index in self.active_layers]
        sums = torch.stack([total for total, _ in sums_counts])
        return self._weighted_term(sums, sums_counts[-1][1])

    def _weighted_term(
        self, sums: Tensor, count: Tensor
    ) -> tuple[Tensor, dict[int, Tensor], Tensor]:
        """``lam * sum_l w_l * sums_l / count`` over the active layers (``sums`` in their order)."""
        term = None
        for position, index in enumerate(self.active_layers):
            weighted = self._weight_values[index] * (sums[position] / count.clamp_min(1.0))
            term = weighted if term is None else term + weighted
        layer_sums = dict(zip(self.active_layers, sums.detach().unbind(), strict=True))
        return self.config.lam * term, layer_sums, count

    @contextmanager
    def capture(self, model: torch.nn.Module) -> Iterator[dict[int, Tensor]]:
        """Compute each active layer's Psi inside the model's forward, block by block.

        Forward hooks on the decoder blocks (and the final norm for the
        ``post_norm`` final state) of a Hugging Face ``LlamaForCausalLM``
        compute Psi_l right after block l. Computed after the whole forward
        instead, every Psi node would run first in backward and the JREG
        gradients of all L states would wait in memory until the model's
        backward reached them (one extra ``(batch, seq, hidden)`` buffer per
        layer at the peak). Created in order, each runs just before its block's
        backward. Values and gradients are those of ``forward``.

        Yields:
            The dict ``combine`` takes, filled during the forward.
        """
        psi: dict[int, Tensor] = {}
        last = self.num_layers - 1
        post_norm = self.config.final_state == "post_norm"
        last_input: dict[str, Tensor] = {}

        def block_hook(index: int):
            def hook(_module, args, kwargs, output):
                h_prev = args[0] if args else kwargs["hidden_states"]
                h_next = output[0] if isinstance(output, tuple) else output
                if index == last and post_norm:
                    last_input["h"] = h_prev  # h_L is the final norm's output
                else:
                    psi[index] = self._displacement(h_prev, h_next)

            return hook

        def norm_hook(_module, _args, output):
            psi[last] = self._displacement(last_input.pop("h"), output)

        layers = model.model.layers
        handles = [
            layers[index].register_forward_hook(block_hook(index), with_kwargs=True)
            for index in self.active_layers
        ]
        if post_norm and last in self.active_layers:
            handles.append(model.model.norm.register_forward_hook(norm_hook))
        try:
            yield psi
        finally:
            for handle in handles:
                handle.remove()
