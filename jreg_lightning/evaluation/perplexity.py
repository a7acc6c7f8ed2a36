"""Perplexity and the layer profile of a model on token shards or a text file.

Blocks of ``seq_len + 1`` tokens are scored as in training's validation: the
first ``seq_len`` tokens are the input, the last ``seq_len`` the targets, and
the loss is the mean over all target tokens (token-weighted, never a mean of
batch means). The same forward pass gives the hidden states, so the layer
profile Psi_1..Psi_L and J come for free (final state after the final norm,
the Hugging Face convention).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from jreg_lightning.displacement import (
    displacement,
    jump_layer,
    jump_strength,
    jump_strength_late,
    masked_sum_and_count,
)
from jreg_lightning.evaluation.models import EvalModel, load_eval_model, require_tokenizer


def shard_dir(data: Path, split: str) -> Path:
    """The litdata dataset to read: ``data`` itself, or its ``split`` folder."""
    if (data / "index.json").is_file():
        return data
    if (data / split / "index.json").is_file():
        return data / split
    raise FileNotFoundError(
        f"data: neither {data} nor {data / split} holds a litdata index.json; pass a folder "
        "written by cli.py prepare (or one of its splits) or a .txt file"
    )


def shard_blocks(dataset_dir: Path, seq_len: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches ``(batch, seq_len + 1)`` of token blocks of a litdata ``TokensLoader`` dataset."""
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    dataset = StreamingDataset(
        input_dir=str(dataset_dir),
        item_loader=TokensLoader(block_size=seq_len + 1),
        shuffle=False,
        drop_last=False,
    )
    yield from StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0)


def text_blocks(token_ids: list[int], seq_len: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of consecutive ``seq_len + 1``-token blocks of one token stream.

    A last, shorter block (of at least 2 tokens) is scored on its own.
    """
    block = seq_len + 1
    full = len(token_ids) // block
    tokens = torch.tensor(token_ids, dtype=torch.long)
    blocks = tokens[: full * block].view(full, block)
    for start in range(0, full, batch_size):
        yield blocks[start : start + batch_size]
    if len(token_ids) - full * block >= 2:
        yield tokens[full * block :][None]


@torch.no_grad()
def measure(
    model: PreTrainedModel,
    batches: Iterator[torch.Tensor],
    max_batches: int | None = None,
    profile: bool = True,
) -> dict:
    """Token-weighted loss, perplexity and (optionally) the layer profile over ``batches``.

    Args:
        model: a causal LM.
        batches: ``(batch, seq_len + 1)`` token tensors.
        max_batches: stop after this many batches.
        profile: also measure Psi per block from the hidden states.

    Returns:
        ``{"loss", "ppl", "tokens", "batches"}`` plus, with ``profile``,
        ``"profile"`` (list of L floats), ``"jump_strength"``,
        ``"jump_strength_late"`` and ``"jump_layer"`` (None where L is too small).
    """
    device = next(model.parameters()).device
    loss_sum, tokens, seen = 0.0, 0, 0
    psi_sums: torch.Tensor | None = None
    psi_count = 0.0
    for batch in batches:
        if max_batches is not None and seen >= max_batches:
            break
        batch = batch.to(device=device, dtype=torch.long)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        out = model(input_ids=inputs, output_hidden_states=profile, use_cache=False)
        loss_sum += float(
            F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        )
        tokens += targets.numel()
        seen += 1
        if profile:
            states = out.hidden_states
            sums = []
            for index in range(len(states) - 1):
                total, count = masked_sum_and_count(
                    displacement(states[index], states[index + 1]), None
                )
                sums.append(total)
            stacked = torch.stack(sums).double().cpu()
            psi_sums = stacked if psi_sums is None else psi_sums + stacked
            psi_count += float(count)
    if tokens == 0:
        raise ValueError("data: no complete block was read; lower --seq_len or pass more data")
    loss = loss_sum / tokens
    result = {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": tokens, "batches": seen}
    if profile and psi_sums is not None:
        layers = (psi_sums / psi_count).float()
        result["profile"] = [float(v) for v in layers]
        result["jump_strength"] = float(jump_strength(layers)) if len(layers) >= 3 else None
        result["jump_strength_late"] = (
            float(jump_strength_late(layers)) if len(layers) >= 4 else None
        )
        result["jump_layer"] = int(jump_layer(layers))
    return result


def measure_perplexity(
    model: EvalModel,
    data: str | Path,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    split: str = "val",
    profile: bool = True,
) -> dict:
    """Perplexity of a loaded model on token shards or a text file (see ``perplexity``)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data: {data} does not exist; pass prepared shards or a .txt file")
    seq_len = seq_len or model.max_length
    if seq_len > model.max_length:
        raise ValueError(
            f"seq_len: {seq_len} exceeds the model's max_position_embeddings {model.max_length}; "
            "pass a smaller --seq_len"
        )
    if data.is_file():
        tokenizer = require_tokenizer(model, "perplexity on a text file")
        ids = tokenizer.encode(data.read_text(encoding="utf-8"), add_special_tokens=False)
        if len(ids) > 0 and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)  # as prepare ends each document
        batches = text_blocks(ids, seq_len, batch_size)
        source = str(data)
    else:
        dataset_dir = shard_dir(data, split)
        if model.tokenizer is not None:
            _check_shard_vocab(data, dataset_dir, model)
        batches = shard_blocks(dataset_dir, seq_len, batch_size)
        source = str(dataset_dir)
    result = measure(model.model, batches, max_batches, profile)
    return {"model": str(model.path), "data": source, "seq_len": seq_len, **result}


def _check_shard_vocab(data: Path, dataset_dir: Path, model: EvalModel) -> None:
    # meta.json (written by prepare) records the vocabulary the shards were made with.
    for folder in (dataset_dir, data):
        meta = folder / "meta.json"
        if meta.is_file():
            vocab = json.loads(meta.read_text()).get("vocab_size")
            if vocab is not None and vocab > model.model.config.vocab_size:
                raise ValueError(
                    f"data: {data} was tokenized with {vocab} tokens but the model has "
                    f"{model.model.config.vocab_size}; use the data the model was trained on"
                )
            return


def perplexity(
    model: str,
    data: str,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    split: str = "val",
    profile: bool = True,
    device: str = "cpu",
    output: str | None = None,
) -> dict:
    """Perplexity of a checkpoint or an HF folder on prepared shards or a text file.

    Prints the loss, perplexity and the layer profile with J (final state after
    the final norm); writes them as JSON to ``output`` if given.

    Args:
        model: an exported HF folder, a Lightning ``.ckpt`` or an FSDP2 checkpoint folder.
        data: a folder of ``cli.py prepare`` (its ``split`` is read), one litdata
            split folder, or a UTF-8 text file (tokenized with the model's tokenizer).
        tokenizer: tokenizer for a text file when the model has none (a checkpoint).
        seq_len: tokens per scored block (default: the model's max_position_embeddings).
        batch_size: blocks per forward pass.
        max_batches: score only this many batches.
        split: the split of a prepared data folder.
        profile: also measure the layer profile and J.
        device: torch device.
        output: JSON file to write the result to.
    """
    loaded = load_eval_model(model, tokenizer, device=device)
    result = measure_perplexity(loaded, data, seq_len, batch_size, max_batches, split, profile)
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
    if "profile" in result:
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
    return "n/a" if value is None else f"{value:.3f}"
