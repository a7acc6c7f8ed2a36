"""The displacement math of JREG: pure torch, no Lightning.

Psi_l = (1 - cos(h_{l-1}, h_l)) / 2 per token position, its per-layer mean
(the layer profile), the jump strength J and the layer weights of the
regularizer. See ``docs`` in the README and method.md for the definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

WEIGHT_SCHEMES = ("final", "last_k", "uniform", "linear", "explicit")

# Below this product of norms a position counts as a zero vector (cos = 0).
_NORM_EPS = 1e-12


class _Displacement(torch.autograd.Function):
    """Psi in float32 that saves only the caller's tensors for backward.

    A plain ``F.cosine_similarity(a.float(), b.float())`` keeps float32 copies
    of both inputs alive until backward: B x T x H x 4 bytes per layer, on top
    of the activations the model already saves. Here the float32 copies are
    transient in forward and rebuilt in backward.
    """

    @staticmethod
    def forward(ctx, h_prev: Tensor, h_next: Tensor) -> Tensor:
        a = h_prev.float()
        b = h_next.float()
        dot = (a * b).sum(-1)
        norm_a = a.norm(dim=-1)
        norm_b = b.norm(dim=-1)
        denom = (norm_a * norm_b).clamp_min(_NORM_EPS)
        cos = dot / denom
        ctx.save_for_backward(h_prev, h_next, norm_a, norm_b, cos)
        return (1.0 - cos) * 0.5

    @staticmethod
    def backward(ctx, grad_psi: Tensor) -> tuple[Tensor | None, Tensor | None]:
        h_prev, h_next, norm_a, norm_b, cos = ctx.saved_tensors
        # d cos / d a = b / (|a| |b|) - cos * a / |a|^2 (and symmetrically for b).
        # The per-position factors are formed first on (batch, seq), so each
        # gradient costs two passes over (batch, seq, hidden): a scale and an
        # addcmul, instead of five elementwise temporaries.
        grad_cos = -0.5 * grad_psi
        scale_other = (grad_cos / (norm_a * norm_b).clamp_min(_NORM_EPS)).unsqueeze(-1)
        grad_prev = grad_next = None
        a, b = h_prev.float(), h_next.float()
        if ctx.needs_input_grad[0]:
            scale_self = (grad_cos * cos / (norm_a * norm_a).clamp_min(_NORM_EPS)).unsqueeze(-1)
            grad_prev = torch.addcmul(b * scale_other, a, scale_self, value=-1.0)
            grad_prev = grad_prev.to(h_prev.dtype)
        if ctx.needs_input_grad[1]:
            scale_self = (grad_cos * cos / (norm_b * norm_b).clamp_min(_NORM_EPS)).unsqueeze(-1)
            grad_next = torch.addcmul(a * scale_other, b, scale_self, value=-1.0)
            grad_next = grad_next.to(h_next.dtype)
        return grad_prev, grad_next


def displacement(h_prev: Tensor, h_next: Tensor) -> Tensor:
    """Displacement Psi between two hidden states at every position.

    Args:
        h_prev: ``(batch, seq, hidden)`` state before the block, any float dtype.
        h_next: ``(batch, seq, hidden)`` state after the block.

    Returns:
        ``(batch, seq)`` float32 tensor of ``(1 - cos(h_prev, h_next)) / 2`` in
        [0, 1]: 0 same direction, 0.5 orthogonal, 1 opposite. The cosine is
        computed in float32 whatever the input dtype; gradients flow into both
        inputs.
    """
    if h_prev.shape != h_next.shape:
        raise ValueError(
            f"displacement: h_prev has shape {tuple(h_prev.shape)} but h_next has "
            f"{tuple(h_next.shape)}; pass two states of the same (batch, seq, hidden) shape"
        )
    return _Displacement.apply(h_prev, h_next)


def masked_sum_and_count(psi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sum of ``psi`` over positions where ``mask`` is 1, and how many there are.

    Args:
        psi: ``(batch, seq)`` float32 displacements.
        mask: ``(batch, seq)`` 0/1 (or bool) tensor, or None for every position.

    Returns:
        ``(sum, count)``: two float32 scalars. Sums and counts, never means, so
        that batches and ranks can be merged exactly.
    """
    if mask is None:
        # new_full fills on the device; torch.tensor(..., device=cuda) would be a
        # blocking host-to-device copy, i.e. a host sync per layer per step.
        return psi.sum(), psi.new_full((), float(psi.numel()))
    mask = mask.to(device=psi.device, dtype=psi.dtype)
    return (psi * mask).sum(), mask.sum()


def layer_sums_and_counts(
    hidden_states: Sequence[Tensor],
    mask: Tensor | None = None,
    known: Mapping[int, Tensor] | None = None,
    layers: Sequence[int] | None = None,
    psi: Callable[[Tensor, Tensor], Tensor] = displacement,
) -> tuple[Tensor, Tensor]:
    """Psi summed over the counted positions, block by block, and how many positions count.

    The one per-layer loop behind the layer profile, the JREG term, the training
    and validation metrics and the analysis of a released model. One pair of
    float32 copies exists at a time.

    Args:
        hidden_states: h_0 ... h_L, each ``(batch, seq, hidden)``; h_0 is the
            embedding output and h_l the residual stream after block l.
        mask: ``(batch, seq)``, 1 at counted positions; None for every position.
        known: Psi sums already computed over the same positions (e.g. by the JREG
            term), keyed by 0-based block index; taken as they are.
        layers: the 0-based blocks to sum, in order; None for all L.
        psi: the displacement function (e.g. a ``torch.compile``-d ``displacement``).

    Returns:
        ``(sums, count)``: ``(len(layers),)`` float32 sums, differentiable where the
        states are, and the float32 scalar count of positions. Sums and counts,
        never means, so that batches and ranks can be merged exactly.
    """
    if len(hidden_states) < 2:
        raise ValueError(
            f"layer profile: got {len(hidden_states)} hidden states; pass h_0 ... h_L "
            "(at least the embeddings and one block output)"
        )
    known = known or {}
    indices = range(len(hidden_states) - 1) if layers is None else layers
    sums = [
        known[index]
        if index in known
        else masked_sum_and_count(psi(hidden_states[index], hidden_states[index + 1]), mask)[0]
        for index in indices
    ]
    first = hidden_states[0]
    if mask is None:
        count = first.new_full((), float(first.shape[0] * first.shape[1]), dtype=torch.float32)
    else:
        count = mask.to(device=first.device, dtype=torch.float32).sum()
    if not sums:
        return first.new_zeros(0, dtype=torch.float32), count
    return torch.stack(sums), count


def layer_profile(hidden_states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Mean displacement of every block: the layer profile (Psi_1 ... Psi_L).

    Args:
        hidden_states: h_0 ... h_L, each ``(batch, seq, hidden)``.
        mask: ``(batch, seq)``, 1 at real tokens and 0 at padding; None means
            every position counts.

    Returns:
        ``(L,)`` float32 tensor: the mean of Psi_l over the masked positions
        (see ``layer_sums_and_counts``).
    """
    sums, count = layer_sums_and_counts(hidden_states, mask)
    return sums / count.clamp_min(1.0)


def _require_layers(profile: Tensor, minimum: int, name: str) -> None:
    if profile.dim() != 1 or profile.numel() < minimum:
        raise ValueError(
            f"{name}: profile must be a 1-D tensor of at least {minimum} layers, got shape "
            f"{tuple(profile.shape)}; the jump is only defined for models of {minimum}+ blocks"
        )


def jump_strength(profile: Tensor) -> Tensor:
    """Jump strength J = Psi_L / mean(Psi_2 ... Psi_{L-1}).

    Block 1 is left out of the reference because embedding -> first block is a
    large turn in most models. J = 1 means no jump.

    Args:
        profile: ``(L,)`` layer profile, L >= 3.

    Returns:
        Scalar tensor.
    """
    _require_layers(profile, 3, "jump_strength")
    return profile[-1] / profile[1:-1].mean()


def jump_strength_late(profile: Tensor) -> Tensor:
    """J_late = max(Psi_{L-1}, Psi_L) / mean(Psi_2 ... Psi_{L-2}).

    Catches a jump that a final-block-only penalty pushed one block earlier.

    Args:
        profile: ``(L,)`` layer profile, L >= 4.

    Returns:
        Scalar tensor.
    """
    _require_layers(profile, 4, "jump_strength_late")
    return profile[-2:].max() / profile[1:-2].mean()


def jump_layer(profile: Tensor) -> Tensor:
    """1-based index of the block with the largest displacement, excluding block 1.

    Returns:
        Integer scalar tensor in [2, L] (1 for a one-block profile).
    """
    if profile.numel() < 2:
        return torch.ones((), dtype=torch.long, device=profile.device)
    return profile[1:].argmax() + 2


def profile_spread(profile: Tensor) -> dict[str, Tensor]:
    """How even the layer transitions are: std and max/mean of Psi_2 ... Psi_L.

    Returns:
        ``{"std": ..., "max_over_mean": ...}`` scalar tensors.
    """
    body = profile[1:] if profile.numel() > 1 else profile
    return {"std": body.std(unbiased=False), "max_over_mean": body.max() / body.mean()}


def layer_weights(
    scheme: str,
    num_layers: int,
    k: int | None = None,
    values: Sequence[float] | None = None,
) -> Tensor:
    """Weights w_1 ... w_L of the JREG sum ``sum_l w_l * Psi_l``, summing to 1.

    Args:
        scheme: ``final`` (w_L = 1), ``last_k`` (1/k on the last k blocks),
            ``uniform`` (1/L each), ``linear`` (proportional to l) or
            ``explicit`` (``values``, normalised).
        num_layers: L, the number of decoder blocks.
        k: number of final blocks for ``last_k``.
        values: L non-negative numbers for ``explicit``.

    Returns:
        ``(L,)`` float32 tensor.
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(
            f"layer_weights: unknown scheme {scheme!r}; use one of {', '.join(WEIGHT_SCHEMES)}"
        )
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"layer_weights: num_layers must be a positive int, got {num_layers!r}")
    if scheme == "final":
        weights = torch.zeros(num_layers)
        weights[-1] = 1.0
    elif scheme == "last_k":
        if k is None or not isinstance(k, int) or not 1 <= k <= num_layers:
            raise ValueError(
                f"layer_weights: scheme 'last_k' needs k between 1 and num_layers={num_layers}, "
                f"got k={k!r}; set k"
            )
        weights = torch.zeros(num_layers)
        weights[-k:] = 1.0
    elif scheme == "uniform":
        weights = torch.ones(num_layers)
    elif scheme == "linear":
        weights = torch.arange(1, num_layers + 1, dtype=torch.float32)
    else:
        if values is None or len(values) != num_layers:
            got = "none" if values is None else f"{len(values)}"
            raise ValueError(
                f"layer_weights: scheme 'explicit' needs values with one weight per layer "
                f"({num_layers}), got {got}; list {num_layers} numbers"
            )
        weights = torch.tensor([float(v) for v in values], dtype=torch.float32)
        if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(
                f"layer_weights: explicit values must be finite, non-negative and not all zero, "
                f"got {list(values)}; fix the values"
            )
    return (weights / weights.sum()).float()
