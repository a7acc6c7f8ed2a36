"""``python cli.py analyze``: the jump of local models, checkpoints, training series and runs."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class AnalyzeOptions:
    """Measure the jump: layer profile, J, early-exit and skip-block losses; tables and plots.

    Each of ``models`` is one of: a local Hugging Face model folder (any
    AutoModelForCausalLM, or an AutoModel that returns hidden states, e.g. an
    encoder, whose losses are skipped); a checkpoint of this project (.ckpt
    file or FSDP2 folder); a folder of checkpoints, or a run directory with a
    checkpoints/ folder (a series, ordered by global step); a run directory
    with only CSV logs (its logged profiles are plotted, no model is run).

    Writes into output_dir: analysis.json, layers.csv, summary.csv,
    series_NAME.csv, profiles.png, early_exit_loss.png, skip_loss_increase.png,
    jump_vs_step.png and heatmap_NAME.png (those that apply).

    Attributes:
        models: models, checkpoints, checkpoint folders or run directories, e.g.
            '[runs/tiny_baseline, runs/tiny_jreg]'.
        names: a label per model for tables and plots (default: folder/file names).
        data_dir: folder of prepared litdata shards (with train/ and val/, or one split).
        split: which split of data_dir to read.
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
        output_dir: output folder (created; files in it are overwritten).
        progress: show a progress bar per model.
    """

    models: list[str]
    names: list[str] | None = None
    data_dir: str | None = None
    split: str = "val"
    text: str | None = None
    documents: str | None = None
    text_field: str = "text"
    tokenizer: str | None = None
    seq_len: int = 256
    batch_size: int = 4
    max_batches: int = 8
    early_exit: bool = True
    skip_blocks: bool = True
    stage: str = "val"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    output_dir: str = "runs/analysis"
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse a value that cannot work, naming the option and the fix."""
        if not self.models:
            raise ConfigError(
                "analyze: --models is empty; pass at least one model, checkpoint or run"
            )
        if self.names is not None and len(self.names) != len(self.models):
            raise ConfigError(
                f"analyze: --names has {len(self.names)} labels for {len(self.models)} models; "
                "give one each"
            )
        if self.dtype not in _DTYPES:
            raise ConfigError(f"analyze: --dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        for name in ("seq_len", "batch_size", "max_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"analyze: --{name} must be >= 1, got {getattr(self, name)}")
        if self.stage not in ("val", "train") and not self.stage.startswith("val/"):
            raise ConfigError(
                f"analyze: --stage must be val, train or val/<source>, got {self.stage!r}"
            )
        if self.documents is not None and (self.data_dir is not None or self.text is not None):
            raise ConfigError(
                "analyze: --documents reads its own file; pass it without --data_dir and --text"
            )
        if self.documents is not None:
            documents_format(self.documents)


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


def _tokenizer_path(options: AnalyzeOptions, source: Source) -> str | None:
    """``--tokenizer``, else the model folder itself (an HF folder holds its tokenizer)."""
    return options.tokenizer or (str(source.path) if source.kind == "hf" else None)


def _batches(options: AnalyzeOptions, source: Source, model, counts: DocumentCounts | None):
    """The batches ``model`` reads: documents, prepared shards or a tokenized text file."""
    if counts is not None:
        path = _tokenizer_path(options, source)
        if path is None:
            raise ConfigError(
                f"analyze: {source.name} needs a tokenizer for --documents; pass --tokenizer "
                "a tokenizer.json or a model folder that holds one"
            )
        return document_batches(
            options.documents,
            load_tokenizer(path)[0],
            counts.max_length,
            options.batch_size,
            options.max_batches,
            counts,
            options.text_field,
        )
    if options.data_dir is not None:
        known = shard_vocab_size(options.data_dir)
        vocab_size = getattr(model.config, "vocab_size", None)
        if known is not None and vocab_size is not None and known > vocab_size:
            raise ConfigError(
                f"analyze: shards in {options.data_dir} have vocab_size {known} but {source.name} "
                f"has {vocab_size} embeddings; use shards made with that model's tokenizer"
            )
        return shard_batches(
            options.data_dir,
            options.split,
            options.seq_len,
            options.batch_size,
            options.max_batches,
        )
    path = _tokenizer_path(options, source)
    if options.text is None or path is None:
        raise ConfigError(
            f"analyze: {source.name} needs text: pass --data_dir prepared shards, or --text a "
            "file with --tokenizer a tokenizer.json (or a model folder that holds one)"
        )
    return text_batches(
        options.text, load_encoder(path), options.seq_len, options.batch_size, options.max_batches
    )


def _measure(options: AnalyzeOptions, model, source: Source, label: str, step: int | None) -> dict:
    """One model's report: its profiles, J and losses on its batches, named ``label``."""
    counts = None
    if options.documents is not None:
        longest = getattr(model.config, "max_position_embeddings", None)
        counts = DocumentCounts(longest if isinstance(longest, int) else options.seq_len)
    report = measure_model(
        model.to(options.device),
        _batches(options, source, model, counts),
        early_exit=options.early_exit,
        skip_blocks=options.skip_blocks,
        progress=options.progress,
        description=label,
        total=options.max_batches,
    )
    if counts is not None:
        report["documents"] = counts.as_dict()
        if counts.truncated_documents:
            print(
                f"{label}: {counts.truncated_documents} of {counts.documents} documents cut "
                f"at {counts.max_length} tokens ({counts.truncated_tokens:,} tokens left out)"
            )
    return {"name": label, "source": str(source.path), "kind": source.kind, "step": step, **report}


def _measure_source(options: AnalyzeOptions, source: Source, analysis: dict) -> None:
    """Load what ``source`` is (one model, or each checkpoint of a series) and add its reports.

    Models are loaded one at a time and dropped once measured.
    """
    dtype = _DTYPES[options.dtype]
    if source.kind == "run_logs":
        analysis["series"][source.name] = read_logged_series(source.path, options.stage)
    elif source.kind == "hf":
        model, _ = load_hf_model(source.path, dtype)
        analysis["models"].append(_measure(options, model, source, source.name, None))
    elif source.kind == "checkpoint":
        model = load_checkpoint_model(source.path, dtype)
        step = checkpoint_step(source.path)
        analysis["models"].append(_measure(options, model, source, source.name, step))
    else:
        reports = []
        for step, path in series_in_order(source.path):
            model = load_checkpoint_model(path, dtype)
            report = _measure(options, model, source, f"{source.name}@{step}", step)
            report["series"] = source.name
            reports.append(report)
            del model
        analysis["models"].extend(reports)
        analysis["series"][source.name] = _series_entry(reports)


def _report(analysis: dict, output_dir: Path) -> None:
    """Write the tables and plots into ``output_dir`` and print one line per model."""
    written = write_tables(analysis, output_dir) + draw_plots(analysis, output_dir)
    analysis["files"] = [str(path) for path in written]
    for model in analysis["models"]:
        jump = model["jump"]["post_norm"]
        loss = f"   loss {model['loss']:.4f}" if model["loss"] is not None else ""
        print(
            f"{model['name']}: J {jump['jump_strength']:.3f}   J_late "
            f"{jump['jump_strength_late']:.3f}   argmax layer {jump['jump_layer']}{loss}"
        )
    print(f"wrote {len(written)} files to {output_dir}")


def analyze(options: AnalyzeOptions) -> dict:
    """Measure the jump of each of ``options.models``; write tables and plots (``AnalyzeOptions``).

    Steps: classify every input (load), measure each model or series, or read a
    run's logs (measure), then write the files and print a line per model (report).

    Returns:
        The analysis dict also written to analysis.json.
    """
    names = options.names
    sources = [classify(path, names[i] if names else None) for i, path in enumerate(options.models)]
    analysis: dict = {
        "settings": {
            "models": list(options.models),
            "data_dir": options.data_dir,
            "split": options.split if options.data_dir else None,
            "text": options.text,
            "documents": options.documents,
            "seq_len": options.seq_len,
            "batch_size": options.batch_size,
            "max_batches": options.max_batches,
            "dtype": options.dtype,
            "final_state_of_series": "post_norm",
        },
        "models": [],
        "series": {},
    }
    for source in sources:
        _measure_source(options, source, analysis)
    _report(analysis, Path(options.output_dir))
    return analysis
