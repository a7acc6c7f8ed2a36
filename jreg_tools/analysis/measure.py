"""Measure one model over a stream of token batches: profiles, J, early-exit and skip losses.

Memory stays at the model plus one batch's activations: batches are consumed
one at a time under ``torch.inference_mode``, only per-layer sums are kept,
and the early-exit logits exist for one layer at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from tqdm import tqdm

from jreg_lightning.displacement import (
    jump_layer,
    jump_strength,
    jump_strength_late,
    layer_sums_and_counts,
    profile_spread,
)
from jreg_lightning.errors import ConfigError
from jreg_lightning.losses import (
    early_exit_loss_sum,
    next_token_split,
    perplexity,
    token_cross_entropy,
)
from jreg_tools.analysis.lens import DecoderParts, block_output, find_decoder_parts
from jreg_tools.analysis.text import DocumentBatch

FINAL_STATES = ("post_norm", "pre_norm")


def jump_summary(profile: list[float]) -> dict[str, float | int]:
    """J, J_late (NaN when the profile is too short), argmax layer and spread of a profile."""
    values = torch.tensor(profile, dtype=torch.float32)
    nan = float("nan")
    spread = profile_spread(values)
    return {
        "jump_strength": float(jump_strength(values)) if len(profile) >= 3 else nan,
        "jump_strength_late": float(jump_strength_late(values)) if len(profile) >= 4 else nan,
        "jump_layer": int(jump_layer(values)),
        "spread_std": float(spread["std"]),
        "spread_max_over_mean": float(spread["max_over_mean"]),
    }


@contextmanager
def _capture_output(block: nn.Module, into: dict[str, Tensor]):
    """Keep the hidden state ``block`` returns under ``into["out"]`` while inside."""

    def keep(_module, _args, output):
        into["out"] = block_output(output)

    handle = block.register_forward_hook(keep)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _skipped(block: nn.Module):
    """Make ``block`` return its input unchanged (the residual stream passes through)."""

    def identity(_module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        return (hidden_in, *output[1:]) if isinstance(output, tuple) else hidden_in

    handle = block.register_forward_hook(identity, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _forward(
    model: nn.Module, input_ids: Tensor, hidden_states: bool, attention_mask: Tensor | None = None
):
    kwargs = {"input_ids": input_ids, "output_hidden_states": hidden_states}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if getattr(model.config, "use_cache", None) is not None:
        kwargs["use_cache"] = False
    return model(**kwargs)


def measure_model(
    model: nn.Module,
    batches: Iterable[Tensor | DocumentBatch],
    early_exit: bool = True,
    skip_blocks: bool = True,
    progress: bool = True,
    description: str = "analyze",
    total: int | None = None,
) -> dict:
    """Per-layer measurements of ``model`` over ``batches``.

    Args:
        model: a Hugging Face model that returns ``hidden_states`` (L+1 states,
            the last after the final norm). Losses need an LM head; without one
            (encoders, ``AutoModel``) they are skipped and reported as None.
        batches: ``(batch, seq + 1)`` token tensors; inputs are ``[:, :-1]``,
            next-token targets ``[:, 1:]``. Or ``DocumentBatch`` es (one document
            per row, padded): the whole row is the input, Psi is averaged over
            the document tokens only, and no loss is measured.
        early_exit: compute the logit-lens loss of every block.
        skip_blocks: compute the loss increase when each block is skipped (L
            extra forwards per batch).
        progress: show a tqdm bar.
        description: the bar's label.
        total: number of batches, for the bar.

    Returns:
        A dict of plain numbers: ``num_layers``, ``tokens``, ``batches``,
        ``final_norm`` (whether one was found), ``profiles`` {post_norm, pre_norm},
        ``jump`` {post_norm, pre_norm} (see ``jump_summary``), ``loss``,
        ``early_exit_loss`` (per layer, the last equal to ``loss``) and
        ``skip_loss_increase`` (per layer), each None when not measured.
    """
    parts: DecoderParts = find_decoder_parts(model)
    num_layers = len(parts.layers)
    head = parts.head is not None
    has_head = head
    device = next(model.parameters()).device
    psi = torch.zeros(2, num_layers, dtype=torch.float64)  # rows: post_norm, pre_norm
    positions = 0.0
    loss_sum = 0.0
    early_sums = torch.zeros(num_layers, dtype=torch.float64)
    skip_sums = torch.zeros(num_layers, dtype=torch.float64)
    batch_count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc=description, total=total, disable=not progress):
                batch = batch.to(device)
                if isinstance(batch, DocumentBatch):
                    inputs, targets, mask = batch.input_ids, None, batch.attention_mask
                    has_head = False  # per-document mode measures Psi only
                else:
                    (inputs, targets), mask = next_token_split(batch), None
                    has_head = head
                captured: dict[str, Tensor] = {}
                with _capture_output(parts.layers[-1], captured):
                    out = _forward(model, inputs, hidden_states=True, attention_mask=mask)
                states = list(out.hidden_states)
                if len(states) != num_layers + 1:
                    raise ValueError(
                        f"analysis: {type(model).__name__} returned {len(states)} hidden states "
                        f"for {num_layers} blocks; expected embeddings + one per block"
                    )
                pre_norm_last = captured["out"] if parts.final_norm is not None else states[-1]
                post, count = layer_sums_and_counts(states, mask)
                pre = post
                if pre_norm_last is not states[-1]:
                    # Only block L differs: its raw output instead of the final norm's.
                    known = dict(enumerate(post[:-1].unbind()))
                    pre, _ = layer_sums_and_counts([*states[:-1], pre_norm_last], mask, known)
                psi[0] += post.double().cpu()
                psi[1] += pre.double().cpu()
                positions += float(count)
                if has_head:
                    loss_sum += float(token_cross_entropy(out.logits, targets, reduction="sum"))
                    del out  # frees the full logits before the per-layer ones
                    if early_exit:
                        # h_1 .. h_{L-1} and the raw output of block L (before the final norm).
                        for index, hidden in enumerate([*states[1:-1], pre_norm_last]):
                            early_sums[index] += float(
                                early_exit_loss_sum(parts.final_norm, parts.head, hidden, targets)
                            )
                    if skip_blocks:
                        for index, block in enumerate(parts.layers):
                            with _skipped(block):
                                logits = _forward(model, inputs, hidden_states=False).logits
                            skip_sums[index] += float(
                                token_cross_entropy(logits, targets, reduction="sum")
                            )
                            del logits
                batch_count += 1
    finally:
        model.train(was_training)
    if batch_count == 0:
        raise ConfigError("analysis: the text gave no batch; give more text or a smaller batch")
    profiles = {
        "post_norm": (psi[0] / positions).tolist(),
        "pre_norm": (psi[1] / positions).tolist(),
    }
    loss = loss_sum / positions if has_head else None
    return {
        "num_layers": num_layers,
        "tokens": int(positions),
        "batches": batch_count,
        "final_norm": parts.final_norm is not None,
        "profiles": profiles,
        "jump": {name: jump_summary(profile) for name, profile in profiles.items()},
        "loss": loss,
        "perplexity": perplexity(loss) if loss is not None else None,
        "early_exit_loss": (early_sums / positions).tolist() if has_head and early_exit else None,
        "skip_loss_increase": (
            (skip_sums / positions - loss).tolist() if has_head and skip_blocks else None
        ),
    }
