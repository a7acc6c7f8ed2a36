"""``python cli.py analyze``: the jump of local models, checkpoints, training series and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from jreg_lightning.checkpoints import load_checkpoint_model
from jreg_lightning.data.tokenizer import load_encoder, load_tokenizer
from jreg_lightning.errors import ConfigError
from jreg_tools.analysis.loading import (
    Source,
    checkpoint_step,
    classify,
    load_hf_model,
    series_in_order,
)
from jreg_tools.analysis.measure import measure_model
from jreg_tools.analysis.report import draw_plots, write_tables
from jreg_tools.analysis.run_logs import read_logged_series
from jreg_tools.analysis.text import (
    DocumentCounts,
    document_batches,
    documents_format,
    shard_batches,
    shard_vocab_size,
    text_batches,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _series_entry(reports: list[dict]) -> dict:
    """Steps, post-norm profiles and J of a list of measured checkpoints (ascending steps)."""
    jump = [r["jump"]["post_norm"] for r in reports]
    return {
        "steps": [r["step"] for r in reports],
        "profiles": [r["profiles"]["post_norm"] for r in reports],
        "jump_strength": [j["jump_strength"] for j in jump],
        "jump_strength_late": [j["jump_strength_late"] for j in jump],
        "jump_layer": [j["jump_layer"] for j in jump],
        "loss": [r["loss"] if r["loss"] is not None else float("nan") for r in reports],
    }


def analyze(
    inputs: list[str],
    names: list[str] | None = None,
    data: str | None = None,
    split: str = "val",
    text: str | None = None,
    documents: str | None = None,
    text_field: str = "text",
    tokenizer: str | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    max_batches: int = 8,
    early_exit: bool = True,
    skip_blocks: bool = True,
    stage: str = "val",
    device: str = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    out_dir: str = "runs/analysis",
    progress: bool = True,
) -> dict:
    """Measure the jump: layer profile, J, early-exit and skip-block losses; tables and plots.

    Each input is one of: a local Hugging Face model folder (any
    AutoModelForCausalLM, or an AutoModel that returns hidden states, e.g. an
    encoder, whose losses are skipped); a checkpoint of this project (.ckpt
    file or FSDP2 folder); a folder of checkpoints, or a run directory with a
    checkpoints/ folder (a series, ordered by global step); a run directory
    with only CSV logs (its logged profiles are plotted, no model is run).

    Writes into out_dir: analysis.json, layers.csv, summary.csv,
    series_NAME.csv, profiles.png, early_exit_loss.png, skip_loss_increase.png,
    jump_vs_step.png and heatmap_NAME.png (those that apply).

    Args:
        inputs: models, checkpoints, checkpoint folders or run directories, e.g.
            '[runs/tiny_baseline, runs/tiny_jreg]'.
        names: a label per input for tables and plots (default: folder/file names).
        data: folder of prepared litdata shards (with train/ and val/, or one split).
        split: which split of data to read.
        text: a UTF-8 text file to tokenize instead of shards (needs tokenizer).
        documents: per-document mode, the way encoders are used: a .jsonl (one
            document per line, field ``text_field``) or .txt (one per non-empty
            line) file, also compressed. Each document is its own sequence with
            the model's special tokens (e.g. [CLS] ... [SEP]), cut at the model's
            max_position_embeddings (else seq_len; cuts are counted and reported),
            padded to the batch's longest; padding is masked out of Psi. Losses
            are not measured. Without it, causal LMs read packed blocks.
        text_field: the JSON field holding a document's text (with documents).
        tokenizer: tokenizer.json or a local HF tokenizer folder for text
            (default: the model folder when it holds one).
        seq_len: tokens per sequence.
        batch_size: sequences per forward pass (memory: one batch of activations).
        max_batches: batches read per model.
        early_exit: compute the logit-lens loss of every block.
        skip_blocks: compute the loss increase when each block is skipped (L extra forwards).
        stage: for run directories read from logs: ``val``, ``train``, or
            ``val/<source>`` (one source of a ``data.sources`` mixture).
        device: torch device to run on, e.g. cpu or cuda.
        dtype: float32, bfloat16 or float16 for the weights (Psi is float32 anyway).
        out_dir: output folder (created; files in it are overwritten).
        progress: show a progress bar per model.

    Returns:
        The analysis dict also written to analysis.json.
    """
    if not inputs:
        raise ConfigError("analyze: --inputs is empty; pass at least one model, checkpoint or run")
    if names is not None and len(names) != len(inputs):
        raise ConfigError(
            f"analyze: --names has {len(names)} labels for {len(inputs)} inputs; give one each"
        )
    if dtype not in _DTYPES:
        raise ConfigError(f"analyze: --dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    for name, value in (
        ("seq_len", seq_len),
        ("batch_size", batch_size),
        ("max_batches", max_batches),
    ):
        if value < 1:
            raise ConfigError(f"analyze: --{name} must be >= 1, got {value}")
    if stage not in ("val", "train") and not stage.startswith("val/"):
        raise ConfigError(f"analyze: --stage must be val, train or val/<source>, got {stage!r}")
    if documents is not None and (data is not None or text is not None):
        raise ConfigError(
            "analyze: --documents reads its own file; pass it without --data and --text"
        )
    if documents is not None:
        documents_format(documents)
    sources = [classify(path, names[index] if names else None) for index, path in enumerate(inputs)]
    analysis: dict = {
        "settings": {
            "inputs": list(inputs),
            "data": data,
            "split": split if data else None,
            "text": text,
            "documents": documents,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "max_batches": max_batches,
            "dtype": dtype,
            "final_state_of_series": "post_norm",
        },
        "models": [],
        "series": {},
    }
    torch_dtype = _DTYPES[dtype]

    def batches(source: Source, model, counts: DocumentCounts | None):
        vocab_size = getattr(model.config, "vocab_size", None)
        if counts is not None:
            return document_batches(
                documents,
                document_tokenizer(source),
                counts.max_length,
                batch_size,
                max_batches,
                counts,
                text_field,
            )
        if data is not None:
            known = shard_vocab_size(data)
            if known is not None and vocab_size is not None and known > vocab_size:
                raise ConfigError(
                    f"analyze: shards in {data} have vocab_size {known} but {source.name} has "
                    f"{vocab_size} embeddings; use shards made with that model's tokenizer"
                )
            return shard_batches(data, split, seq_len, batch_size, max_batches)
        tokenizer_path = tokenizer or (str(source.path) if source.kind == "hf" else None)
        if text is None or tokenizer_path is None:
            raise ConfigError(
                f"analyze: {source.name} needs text: pass --data prepared shards, or --text a "
                "file with --tokenizer a tokenizer.json (or a model folder that holds one)"
            )
        return text_batches(text, load_encoder(tokenizer_path), seq_len, batch_size, max_batches)

    def document_tokenizer(source: Source):
        path = tokenizer or (str(source.path) if source.kind == "hf" else None)
        if path is None:
            raise ConfigError(
                f"analyze: {source.name} needs a tokenizer for --documents; pass --tokenizer "
                "a tokenizer.json or a model folder that holds one"
            )
        return load_tokenizer(path)[0]

    def measure(model, source: Source, label: str, step: int | None) -> dict:
        counts = None
        if documents is not None:
            longest = getattr(model.config, "max_position_embeddings", None)
            counts = DocumentCounts(longest if isinstance(longest, int) else seq_len)
        report = measure_model(
            model.to(device),
            batches(source, model, counts),
            early_exit=early_exit,
            skip_blocks=skip_blocks,
            progress=progress,
            description=label,
            total=max_batches,
        )
        if counts is not None:
            report["documents"] = counts.as_dict()
            if counts.truncated_documents:
                print(
                    f"{label}: {counts.truncated_documents} of {counts.documents} documents cut "
                    f"at {counts.max_length} tokens ({counts.truncated_tokens:,} tokens left out)"
                )
        return {
            "name": label,
            "source": str(source.path),
            "kind": source.kind,
            "step": step,
            **report,
        }

    for source in sources:
        if source.kind == "run_logs":
            analysis["series"][source.name] = read_logged_series(source.path, stage)
        elif source.kind == "hf":
            model, _ = load_hf_model(source.path, torch_dtype)
            analysis["models"].append(measure(model, source, source.name, None))
            del model
        elif source.kind == "checkpoint":
            model = load_checkpoint_model(source.path, torch_dtype)
            step = checkpoint_step(source.path)
            analysis["models"].append(measure(model, source, source.name, step))
            del model
        else:
            reports = []
            for step, path in series_in_order(source.path):
                model = load_checkpoint_model(path, torch_dtype)
                report = measure(model, source, f"{source.name}@{step}", step)
                report["series"] = source.name
                reports.append(report)
                del model
            analysis["models"].extend(reports)
            analysis["series"][source.name] = _series_entry(reports)

    out = Path(out_dir)
    written = write_tables(analysis, out) + draw_plots(analysis, out)
    analysis["files"] = [str(path) for path in written]
    for model in analysis["models"]:
        jump = model["jump"]["post_norm"]
        loss = f"   loss {model['loss']:.4f}" if model["loss"] is not None else ""
        print(
            f"{model['name']}: J {jump['jump_strength']:.3f}   J_late "
            f"{jump['jump_strength_late']:.3f}   argmax layer {jump['jump_layer']}{loss}"
        )
    print(f"wrote {len(written)} files to {out}")
    return analysis
