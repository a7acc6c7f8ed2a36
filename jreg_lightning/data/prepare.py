"""``cli.py prepare``: local text in, tokenized litdata shards for ``train/`` and ``val/`` out.

Steps: check and number the input documents (``sources.scan_inputs``), hold
out validation documents (deterministic for ``seed``), load or train the
tokenizer, tokenize in parallel workers with ``litdata.optimize`` (EOS after
each document), write ``meta.json``. Everything is built in a hidden sibling
folder ``.<name>.partial`` and renamed into place only when complete, so a
killed run never leaves a half-written ``output_dir`` and an existing one is
replaced only with ``--overwrite``.

Shards are packed for one ``seq_len``: every item is ``seq_len + 1`` tokens
(the last piece of a work item may be shorter) and a chunk holds at most
``chunk_blocks`` of them, so ``TokensLoader(block_size=seq_len + 1)`` drops
less than one block per chunk.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from jreg_lightning.data.shard_meta import (
    chunk_tokens,
    read_index,
    token_dtype,
    usable_tokens,
    write_meta,
)
from jreg_lightning.data.sources import DocumentRange, read_documents, scan_inputs
from jreg_lightning.data.tokenizer import (
    EOS_TOKEN,
    eos_token_id,
    load_tokenizer,
    train_byte_level_bpe,
)

TOKENIZER_FILE = "tokenizer.json"
_TOKENIZERS: dict[str, object] = {}


def _tokenize_range(
    position: int,
    ranges: Sequence[DocumentRange],
    tokenizer_path: str,
    eos_id: int,
    block: int,
    dtype: str,
) -> Iterator:
    """Worker: the tokens of one range, EOS after each document, in pieces of ``block``."""
    import torch
    from tokenizers import Tokenizer

    tokenizer = _TOKENIZERS.get(tokenizer_path)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_path] = Tokenizer.from_file(tokenizer_path)
    texts = [text for _, text in read_documents(ranges[position])]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    pieces = []
    eos = np.array([eos_id], dtype=dtype)
    for encoding in encodings:
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
        pieces.append(eos)
    tokens = np.concatenate(pieces)
    for start in range(0, len(tokens), block):
        yield torch.from_numpy(tokens[start : start + block].copy())


def _held_out(
    num_documents: int, val_fraction: float, val_documents: int | None, seed: int
) -> list[int]:
    """The global numbers of the validation documents, sorted (a seeded random subset)."""
    if val_documents is None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction: {val_fraction} is not in (0, 1); pass e.g. 0.01")
        count = max(1, round(val_fraction * num_documents))
    else:
        count = val_documents
        if count < 1:
            raise ValueError(f"val_documents: {count} is below 1; pass at least 1")
    if count >= num_documents:
        raise ValueError(
            f"val_documents: {count} of {num_documents} documents leaves none for training; "
            "pass a smaller --val_documents / --val_fraction or more input"
        )
    order = np.random.default_rng(seed).permutation(num_documents)
    return sorted(int(i) for i in order[:count])


def _check_output(output: Path, overwrite: bool, inputs: Sequence[str]) -> None:
    for entry in inputs:
        source = Path(entry).absolute()
        if source == output or output in source.parents:
            raise ValueError(
                f"output_dir: {output} contains the input {entry}; choose an --output_dir "
                "outside the inputs"
            )
    if output.exists() and not output.is_dir():
        raise ValueError(f"output_dir: {output} is a file; pass a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir: {output} already holds data; pass --overwrite to replace it "
            "or choose another --output_dir"
        )


def _recover_interrupted_swap(output: Path, old: Path) -> None:
    """A run killed between the two renames of the swap leaves only ``old``: put it back."""
    if old.exists():
        if output.exists():
            shutil.rmtree(old)
        else:
            old.rename(output)


def _swap_into_place(built: Path, output: Path, old: Path) -> None:
    if output.exists():
        output.rename(old)
    built.rename(output)
    if old.exists():
        shutil.rmtree(old)


def _write_split(
    name: str,
    ranges: list[DocumentRange],
    folder: Path,
    tokenizer_path: Path,
    eos_id: int,
    block: int,
    chunk_blocks: int,
    dtype: str,
    num_workers: int,
) -> None:
    from litdata import TokensLoader, optimize

    # fork: a spawned worker re-imports torch and this package (a minute on a busy
    # 2-core machine, against well under a second); the workers only read files
    # and run the Rust tokenizer. Its thread pool must not be inherited mid-use.
    start_method = "fork" if sys.platform == "linux" else "spawn"
    if start_method == "fork":
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    print(f"prepare: tokenizing {name} ({len(ranges)} work items, {num_workers} worker(s))")
    optimize(
        fn=partial(
            _tokenize_range,
            ranges=ranges,
            tokenizer_path=str(tokenizer_path),
            eos_id=eos_id,
            block=block,
            dtype=dtype,
        ),
        inputs=list(range(len(ranges))),
        output_dir=str(folder),
        chunk_size=chunk_blocks * block,
        item_loader=TokensLoader(),
        num_workers=max(1, min(num_workers, len(ranges))),
        reorder_files=False,
        # Static, ordered slices per worker: the same input gives the same shards.
        keep_data_ordered=True,
        start_method=start_method,
        verbose=True,
    )


def prepare_command(arguments: dict) -> str:
    """The ``cli.py prepare`` command line that repeats a call with these arguments.

    Built from the arguments themselves (not ``sys.argv``), so it is exact also
    when ``prepare`` is called from Python.
    """
    words = ["python", "cli.py", "prepare"]
    for name, value in arguments.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        words.append(f"--{name}={text}")
    return shlex.join(words)


def prepare(
    inputs: str | list[str],
    output_dir: str = "data/prepared",
    text_field: str = "text",
    tokenizer: str | None = None,
    vocab_size: int = 8192,
    eos_token: str | None = None,
    val_fraction: float = 0.01,
    val_documents: int | None = None,
    seq_len: int = 256,
    chunk_blocks: int = 1024,
    dtype: Literal["auto", "uint16", "int32"] = "auto",
    num_workers: int | None = None,
    seed: int = 42,
    overwrite: bool = False,
) -> dict:
    """Tokenize local text into litdata shards (``train/``, ``val/``) plus ``meta.json``.

    Args:
        inputs: one path or a list ``[a,b]`` of files or folders of .txt (one
            document per file), .jsonl (one document per line), .parquet (one
            per row), or a ``datasets`` ``save_to_disk`` folder.
        output_dir: where the shards go; refused if it holds data, unless ``overwrite``.
        text_field: JSONL field or Parquet / ``datasets`` column holding the text.
        tokenizer: a ``tokenizer.json`` or a local HF tokenizer folder; if
            omitted, a byte-level BPE of ``vocab_size`` is trained on the
            training documents. Either way it is saved as ``output_dir/tokenizer.json``.
        vocab_size: size of the BPE to train (ignored when ``tokenizer`` is given).
        eos_token: the token appended after each document (default: the
            tokenizer's own EOS, else ``<|endoftext|>``, ``</s>``, ...).
        val_fraction: share of documents held out for validation.
        val_documents: exact number of validation documents (overrides ``val_fraction``).
        seq_len: training sequence length the shards are packed for (blocks of ``seq_len + 1``).
        chunk_blocks: blocks per chunk file (less than one block per chunk is lost).
        dtype: token dtype on disk; ``auto`` picks uint16 when the vocabulary fits.
        num_workers: tokenizer processes (default: all CPU cores).
        seed: seed of the validation hold-out.
        overwrite: replace an existing ``output_dir``.

    Returns:
        The contents of ``meta.json``.
    """
    command = prepare_command(dict(locals()))
    started = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    output = Path(output_dir).absolute()
    if seq_len < 1:
        raise ValueError(f"seq_len: {seq_len} is below 1; pass a positive --seq_len")
    if chunk_blocks < 1:
        raise ValueError(f"chunk_blocks: {chunk_blocks} is below 1; pass a positive --chunk_blocks")
    partial_dir = output.parent / f".{output.name}.partial"
    old_dir = output.parent / f".{output.name}.old"
    _recover_interrupted_swap(output, old_dir)
    _check_output(output, overwrite, inputs)

    loaded = None
    if tokenizer is not None:
        loaded = load_tokenizer(tokenizer)
        vocab = loaded[0].get_vocab_size(with_added_tokens=True)
    else:
        vocab = vocab_size
    dtype_name = token_dtype(vocab, dtype)

    scan = scan_inputs(inputs, text_field=text_field, documents_per_range=128)
    val_set = _held_out(scan.num_documents, val_fraction, val_documents, seed)
    splits = {
        "train": [r for r in (rng.select(val_set, inside=False) for rng in scan.ranges) if r],
        "val": [r for r in (rng.select(val_set, inside=True) for rng in scan.ranges) if r],
    }
    documents = {"train": scan.num_documents - len(val_set), "val": len(val_set)}
    print(
        f"prepare: {scan.num_documents} documents in {len(scan.files)} file(s) "
        f"({scan.empty_documents} empty skipped); {documents['val']} held out for validation"
    )

    if partial_dir.exists():  # left by a killed run
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True)
    tokenizer_path = partial_dir / TOKENIZER_FILE
    if loaded is not None:
        tok, configured_eos = loaded
        eos_id = eos_token_id(tok, eos_token or configured_eos)
        tokenizer_source = str(Path(tokenizer).absolute())
    else:
        print(f"prepare: training a byte-level BPE of {vocab_size} tokens on the training split")
        texts = (text for rng in splits["train"] for _, text in read_documents(rng))
        tok = train_byte_level_bpe(texts, vocab_size)
        eos_id = eos_token_id(tok, eos_token or EOS_TOKEN)
        tokenizer_source = f"trained: byte-level BPE, vocab {vocab_size}"
        vocab = tok.get_vocab_size(with_added_tokens=True)
        dtype_name = token_dtype(vocab, dtype)
    tok.save(str(tokenizer_path))

    block = seq_len + 1
    workers = num_workers or os.cpu_count() or 1
    split_meta = {}
    for name, ranges in splits.items():
        _write_split(
            name,
            ranges,
            partial_dir / name,
            tokenizer_path,
            eos_id,
            block,
            chunk_blocks,
            dtype_name,
            workers,
        )
        per_chunk = chunk_tokens(read_index(partial_dir / name))
        tokens = sum(per_chunk)
        usable = usable_tokens(per_chunk, block)
        split_meta[name] = {
            "documents": documents[name],
            "tokens": tokens,
            "usable_tokens": usable,
            "chunks": len(per_chunk),
        }

    elapsed = time.perf_counter() - started
    meta = {
        "format": "jreg-lightning token shards (litdata TokensLoader)",
        "tokenizer": TOKENIZER_FILE,
        "tokenizer_source": tokenizer_source,
        "vocab_size": vocab,
        "eos_id": eos_id,
        "dtype": dtype_name,
        "seq_len": seq_len,
        "chunk_blocks": chunk_blocks,
        "splits": split_meta,
        "empty_documents_skipped": scan.empty_documents,
        "val_seed": seed,
        "inputs": [str(Path(p).absolute()) for p in inputs],
        "text_field": text_field,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(elapsed, 2),
    }
    write_meta(partial_dir, meta)
    _swap_into_place(partial_dir, output, old_dir)

    total = sum(s["tokens"] for s in split_meta.values())
    for name, info in split_meta.items():
        lost = info["tokens"] - info["usable_tokens"]
        print(
            f"prepare: {name}: {info['documents']} documents, {info['tokens']:,} tokens written, "
            f"{info['usable_tokens']:,} usable as blocks of {block} "
            f"({lost:,} = {100 * lost / max(info['tokens'], 1):.2f}% dropped at chunk ends)"
        )
    print(
        f"prepare: {total:,} tokens in {elapsed:.1f} s ({total / elapsed:,.0f} tokens/s); "
        f"vocab {vocab} ({dtype_name}); wrote {output}"
    )
    return meta
