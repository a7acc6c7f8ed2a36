"""JREG: the weighted sum of per-layer displacements added to the loss."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

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


class JregTerm(NamedTuple):
    """The JREG term of one batch.

    Attributes:
        term: the scalar ``lam * sum_l w_l * Psi_l`` (float32, differentiable).
        layer_sums: the detached per-position Psi sums of the computed (non-zero
            weight) layers, keyed by 0-based layer index.
        count: the number of positions (float32 scalar).
    """

    term: Tensor
    layer_sums: dict[int, Tensor]
    count: Tensor


class JumpRegularizer(torch.nn.Module):
    """Computes ``lam * sum_l w_l * Psi_l`` layer by layer, and captures the states it needs.

    Only layers with a non-zero weight are computed, one pair of states at a
    time, so no float32 copy of all hidden states ever exists. Gradients flow
    through both states of each pair.

    Training (eager or one compiled graph alike): ``attach`` installs forward
    hooks on the model once, ``run_model(..., record_psi=True)`` runs the forward
    in which the hooks compute each active layer's Psi right after its block,
    and ``term`` reads them. ``forward`` computes the same term from given states.

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
        self._displacement: Callable[[Tensor, Tensor], Tensor] = displacement
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
        # The hooked model, by weak reference: an attribute holding the model itself
        # would register it as a submodule (a second copy in every checkpoint).
        self._attached: weakref.ref | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # What the hooks do, switched by run_model: "states" keeps the last block's
        # raw output (pre_norm), "psi" computes the active layers' Psi. Plain dicts,
        # mutated in place, so that a compiled graph traces the switches like the forward.
        self._recording: dict[str, bool] = {"states": False, "psi": False}
        self._psi: dict[int, Tensor] = {}
        self._held: dict[str, Tensor] = {}

    def compile_displacement(self) -> None:
        """``torch.compile`` the per-pair displacement (one graph reused by every layer)."""
        self._displacement = torch.compile(displacement)

    @property
    def enabled(self) -> bool:
        """Whether the term enters the loss (lam > 0)."""
        return self.config.lam > 0

    # ----------------------------------------------------------- capture
    def attach(self, model: torch.nn.Module) -> None:
        """Install the capture hooks on a Hugging Face ``LlamaForCausalLM``, once per model.

        Persistent forward hooks on the active decoder blocks (and on the final
        norm, which gives h_L for ``post_norm``), and on the last block for the
        ``pre_norm`` final state. Call it before ``torch.compile`` traces the
        model: a compiled graph runs the hooks that exist when it is traced.
        They do nothing outside ``run_model``. A second call with the same model
        is a no-op; another model moves the hooks there.

        Computed after the whole forward instead, every Psi node would run first
        in backward and the JREG gradients of all L states would wait in memory
        until the model's backward reached them (one extra ``(batch, seq,
        hidden)`` buffer per layer at the peak). Made inside the forward in
        block order, each runs just before its block's backward.
        """
        if self._attached is not None and self._attached() is model:
            return
        self.detach()
        layers = model.model.layers
        last = self.num_layers - 1
        post_norm = self.config.final_state == "post_norm"
        recording, psi, held = self._recording, self._psi, self._held

        def block_hook(index: int):
            def hook(_module, args, kwargs, output) -> None:
                if not recording["psi"]:
                    return
                h_prev = args[0] if args else kwargs["hidden_states"]
                if index == last and post_norm:
                    held["norm_input"] = h_prev  # h_L is the final norm's output
                else:
                    h_next = output[0] if isinstance(output, tuple) else output
                    psi[index] = self._displacement(h_prev, h_next)

            return hook

        def norm_hook(_module, _args, output) -> None:
            if recording["psi"]:
                psi[last] = self._displacement(held.pop("norm_input"), output)

        def keep_last_output(_module, _args, output) -> None:
            if recording["states"]:
                held["pre_norm"] = output[0] if isinstance(output, tuple) else output

        handles = [
            layers[index].register_forward_hook(block_hook(index), with_kwargs=True)
            for index in self.active_layers
        ]
        if post_norm and last in self.active_layers:
            handles.append(model.model.norm.register_forward_hook(norm_hook))
        if not post_norm:
            handles.append(layers[last].register_forward_hook(keep_last_output))
        self._handles = handles
        self._attached = weakref.ref(model)

    def detach(self) -> None:
        """Remove the hooks ``attach`` installed (none: no-op)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._attached = None

    def run_model(
        self, model: torch.nn.Module, input_ids: Tensor, record_psi: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits ``(batch, seq, vocab)`` and h_0 ... h_L of one forward of an attached model.

        Args:
            model: the ``LlamaForCausalLM`` given to ``attach``.
            input_ids: ``(batch, seq)`` token ids.
            record_psi: compute the active layers' Psi during the forward, for ``term``.
        """
        recording = self._recording
        if record_psi:
            self._psi.clear()
        recording["states"], recording["psi"] = True, record_psi
        try:
            out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        finally:
            recording["states"], recording["psi"] = False, False
        states = self.select_states(out.hidden_states, self._held.pop("pre_norm", None))
        return out.logits, states

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

    # -------------------------------------------------------------- term
    def term(self, mask: Tensor | None = None) -> JregTerm:
        """The term of the last ``run_model(..., record_psi=True)``; its Psi are consumed.

        Args:
            mask: ``(batch, seq)``, 1 at real tokens; None for all positions.

        Returns:
            The same ``JregTerm`` (values and gradients) as ``forward`` on that
            forward's states.
        """
        missing = [index for index in self.active_layers if index not in self._psi]
        if missing:
            raise RuntimeError(
                f"jreg: no Psi recorded for layers {missing}; run the forward with "
                "run_model(model, input_ids, record_psi=True) on a model given to attach()"
            )
        sums_counts = [
            masked_sum_and_count(self._psi.pop(index), mask) for index in self.active_layers
        ]
        sums = torch.stack([total for total, _ in sums_counts])
        return self._weighted_term(sums, sums_counts[-1][1])

    def forward(self, states: Sequence[Tensor], mask: Tensor | None = None) -> JregTerm:
        """The JREG term of one batch from its states.

        Args:
            states: h_0 ... h_L, each ``(batch, seq, hidden)`` (see ``select_states``).
            mask: ``(batch, seq)``, 1 at real tokens; None for all positions.
        """
        sums, count = layer_sums_and_counts(
            states, mask, layers=self.active_layers, psi=self._displacement
        )
        return self._weighted_term(sums, count)

    def _weighted_term(self, sums: Tensor, count: Tensor) -> JregTerm:
        """``lam * sum_l w_l * sums_l / count`` over the active layers (``sums`` in their order)."""
        term = None
        for position, index in enumerate(self.active_layers):
            weighted = self._weight_values[index] * (sums[position] / count.clamp_min(1.0))
            term = weighted if term is None else term + weighted
        layer_sums = dict(zip(self.active_layers, sums.detach().unbind(), strict=True))
        return JregTerm(self.config.lam * term, layer_sums, count)
