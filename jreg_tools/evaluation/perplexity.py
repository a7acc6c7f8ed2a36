"""Perplexity and the layer profile of a model on token shards or a text file.

Blocks of ``seq_len + 1`` tokens are scored as in training's validation: the
first ``seq_len`` tokens are the input, the last ``seq_len`` the targets, and
the loss is the mean over all target tokens (token-weighted, never a mean of
batch means). The same forward pass gives the hidden states, so the layer
profile Psi_1..Psi_L and J come for free (final state after the final norm,
the Hugging Face convention).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel

from jreg_lightning.data.storage import as_location, is_remote
from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_tools.analysis.measure import measure_model
from jreg_tools.analysis.text import shard_batches, shard_dir, shard_vocab_size
from jreg_tools.evaluation.models import EvalModel, load_eval_model, require_tokenizer


def text_blocks(token_ids: list[int], seq_len: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of consecutive ``seq_len + 1``-token blocks of one token stream.

    A last, shorter block (of at least 2 tokens) is scored on its own, so every
    token of a short text counts.
    """
    block = seq_len + 1
    full = len(token_ids) // block
    tokens = torch.tensor(token_ids, dtype=torch.long)
    blocks = tokens[: full * block].view(full, block)
    for start in range(0, full, batch_size):
        yield blocks[start : start + batch_size]
    if len(token_ids) - full * block >= 2:
        yield tokens[full * block :][None]


def measure(
    model: PreTrainedModel, batches: Iterable[torch.Tensor], max_batches: int | None = None
) -> dict:
    """Token-weighted loss, perplexity and the layer profile over ``batches``.

    A view of ``jreg_tools.analysis.measure.measure_model`` without its
    early-exit and skip-block passes.

    Args:
        model: a causal LM.
        batches: ``(batch, seq_len + 1)`` token tensors.
        max_batches: stop after this many batches.

    Returns:
        ``{"loss", "ppl", "tokens", "batches", "profile", "jump_strength",
        "jump_strength_late", "jump_layer"}``; the profile (L floats) uses the
        final state after the final norm.
    """
    measured = measure_model(
        model,
        itertools.islice(batches, max_batches),
        early_exit=False,
        skip_blocks=False,
        progress=False,
    )
    jump = measured["jump"]["post_norm"]
    return {
        "loss": measured["loss"],
        "ppl": measured["perplexity"],
        "tokens": measured["tokens"],
        "batches": measured["batches"],
        "profile": measured["profiles"]["post_norm"],
        "jump_strength": jump["jump_strength"],
        "jump_strength_late": jump["jump_strength_late"],
        "jump_layer": jump["jump_layer"],
    }


def measure_perplexity(
    model: EvalModel,
    data: str | Path,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    split: str = "val",
) -> dict:
    """Perplexity of a loaded model on token shards or a text file (see ``perplexity``)."""
    data = as_location(data)
    if not is_remote(data) and not data.exists():
        raise InputNotFoundError(
            f"data_dir: {data} does not exist; pass --data_dir prepared shards "
            "or --text a .txt file"
        )
    seq_len = seq_len or model.max_length
    if seq_len > model.max_length:
        raise ConfigError(
            f"seq_len: {seq_len} exceeds the model's max_position_embeddings {model.max_length}; "
            "pass a smaller --seq_len"
        )
    if not is_remote(data) and data.is_file():
        tokenizer = require_tokenizer(model, "perplexity on a text file")
        ids = tokenizer.encode(data.read_text(encoding="utf-8"), add_special_tokens=False)
        if len(ids) > 0 and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)  # as prepare ends each document
        batches = text_blocks(ids, seq_len, batch_size)
        source = str(data)
    else:
        source = str(shard_dir(data, split))
        vocab = shard_vocab_size(data)
        if vocab is not None and vocab > model.model.config.vocab_size:
            raise ConfigError(
                f"data_dir: {data} was tokenized with {vocab} tokens but the model has "
                f"{model.model.config.vocab_size}; use the data the model was trained on"
            )
        batches = shard_batches(data, split, seq_len, batch_size, max_batches or sys.maxsize)
    result = measure(model.model, batches, max_batches)
    return {"model": str(model.path), "data": source, "seq_len": seq_len, **result}


def scored_data(data_dir: str | None, text: str | None) -> str | None:
    """What perplexity scores: ``data_dir`` (prepared shards, a folder or URL) or ``text``.

    Returns ``None`` when neither is given; refuses both, and each given as the other kind.
    """
    if data_dir is not None and text is not None:
        raise ConfigError(
            "data_dir, text: pass one of --data_dir (prepared shards) and --text (a text file)"
        )
    if data_dir is not None and not is_remote(data_dir) and Path(data_dir).is_file():
        raise ConfigError(f"data_dir: {data_dir} is a file; pass a text file as --text {data_dir}")
    if text is not None and Path(text).is_dir():
        raise ConfigError(f"text: {text} is a folder; pass prepared shards as --data_dir {text}")
    return data_dir if data_dir is not None else text


def perplexity(
    model: str,
    data_dir: str | None = None,
    text: str | None = None,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    split: str = "val",
    device: str = "cpu",
    output: str | None = None,
) -> dict:
    """Perplexity of a checkpoint or an HF folder on prepared shards or a text file.

    Prints the loss, perplexity and the layer profile with J (final state after
    the final norm); writes them as JSON to ``output`` if given.

    Args:
        model: an exported HF folder, a Lightning ``.ckpt`` or an FSDP2 checkpoint folder.
        data_dir: a folder of ``cli.py prepare`` (its ``split`` is read) or one litdata
            split folder.
        text: a UTF-8 text file instead of ``data_dir`` (tokenized with the model's tokenizer).
        tokenizer: tokenizer for a text file when the model has none (a checkpoint).
        seq_len: tokens per scored block (default: the model's max_position_embeddings).
        batch_size: blocks per forward pass.
        max_batches: score only this many batches.
        split: the split of a prepared data folder.
        device: torch device.
        output: JSON file to write the result to.
    """
    data = scored_data(data_dir, text)
    if data is None:
        raise ConfigError(
            "data_dir, text: pass --data_dir prepared shards or --text a text file to score"
        )
    loaded = load_eval_model(model, tokenizer, device=device)
    result = measure_perplexity(loaded, data, seq_len, batch_size, max_batches, split)
    print(format_perplexity(result))
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_perplexity(result: dict) -> str:
    """A few lines: loss, perplexity, tokens, and the profile with J when measured."""
    lines = [
        f"{result['model']} on {result['data']} (seq_len {result['seq_len']})",
        f"loss = {result['loss']:.4f}   ppl = {result['ppl']:.2f}   tokens = {result['tokens']:,}",
    ]
    if result.get("profile"):
        lines.append(
            "Psi (post-norm final state): " + " ".join(f"{v:.4f}" for v in result["profile"])
        )
        lines.append(
            f"J = {_number(result['jump_strength'])}   "
            f"J_late = {_number(result['jump_strength_late'])}   "
            f"argmax layer = {result['jump_layer']}"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"
