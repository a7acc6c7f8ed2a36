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
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from jreg_lightning.data.shard_meta import (
    chunk_tokens,
    read_index,
    token_dtype,
    usable_tokens,
    write_meta,
)
from jreg_lightning.data.storage import check_destination, is_remote, upload_folder
from jreg_lightning.data.tokenizer import (
    EOS_TOKEN,
    TOKENIZER_FILE,
    encode_texts,
    eos_token_id,
    load_tokenizer,
    train_byte_level_bpe,
)
from jreg_lightning.errors import ConfigError, OutputExistsError
from jreg_tools.data.sources import (
    DocumentRange,
    ScanResult,
    bpe_sample_documents,
    read_documents,
    scan_inputs,
)

T = TypeVar("T")
_TOKENIZERS: dict[str, object] = {}
COUNTS_FOLDER = ".token_counts"
TARGET_CHUNKS = 64
MIN_CHUNK_BLOCKS = 8
MAX_CHUNK_BLOCKS = 1024
CHARACTERS_PER_TOKEN = 5.0
# Training documents per work item: small enough for many items per worker,
# large enough that an item's shuffle mixes documents from many places.
DOCUMENTS_PER_ITEM = 256
# Documents encoded per call of the Rust tokenizer inside a worker.
_ENCODE_BATCH = 64


@dataclass(frozen=True)
class WorkItem:
    """What one worker call tokenizes: ranges of documents, mixed in a seeded order.

    Attributes:
        ranges: the document ranges, read one after another.
        seed: seeds the shuffle buffer (``None``: documents keep their order).
    """

    ranges: tuple[DocumentRange, ...]
    seed: int | None


def work_items(
    ranges: Sequence[DocumentRange], seed: int | None, documents_per_item: int
) -> list[WorkItem]:
    """Ranges grouped into work items; with a ``seed``, in a seeded random order.

    Shuffling whole ranges and then the documents inside each item (see
    ``_mixed_documents``) spreads neighbouring files over the shards, so that
    a chunk, and so a batch, is a sample of the whole corpus.
    """
    order = list(range(len(ranges)))
    if seed is not None:
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(ranges))]
    items, current, count = [], [], 0
    for index in order:
        current.append(ranges[index])
        count += ranges[index].num_documents
        if count >= documents_per_item:
            items.append(current)
            current, count = [], 0
    if current:
        items.append(current)
    return [
        WorkItem(tuple(group), None if seed is None else seed * 1_000_003 + position)
        for position, group in enumerate(items)
    ]


def _buffer_shuffled(values: Iterable[T], size: int, generator: np.random.Generator) -> Iterator[T]:
    """``values`` in a random order, through a buffer of at most ``size`` of them.

    A stream shorter than the buffer comes out fully shuffled; a longer one is
    mixed within a moving window, in bounded memory.
    """
    buffer: list[T] = []
    for value in values:
        if len(buffer) < size:
            buffer.append(value)
            continue
        slot = int(generator.integers(len(buffer)))
        yield buffer[slot]
        buffer[slot] = value
    generator.shuffle(buffer)
    yield from buffer


def _mixed_documents(item: WorkItem, buffer_size: int) -> Iterator[str]:
    """The item's documents through a seeded shuffle buffer of ``buffer_size`` documents."""
    documents = (text for rng in item.ranges for _, text in read_documents(rng))
    if item.seed is None:
        return documents
    return _buffer_shuffled(documents, buffer_size, np.random.default_rng(item.seed))


def _tokenize_item(
    position: int,
    items: Sequence[WorkItem],
    tokenizer_path: str,
    eos_id: int,
    block: int,
    dtype: str,
    counts_dir: str,
    buffer_size: int,
    block_buffer: int,
) -> Iterator:
    """Worker: the tokens of one work item, EOS after each document, in pieces of ``block``.

    With a seeded item the blocks also go through a shuffle buffer of
    ``block_buffer`` blocks: a document longer than a chunk would otherwise fill
    whole chunks, and litdata draws each batch from one chunk. Counts what it
    encodes (documents, tokens, EOS) into ``counts_dir`` so that the main
    process can check that every token reached the shards.
    """
    import torch

    item = items[position]
    blocks = _packed_blocks(
        item, tokenizer_path, eos_id, block, dtype, counts_dir, position, buffer_size
    )
    if item.seed is not None and block_buffer > 1:
        blocks = _shuffled_full_blocks(blocks, block, block_buffer, item.seed)
    for piece in blocks:
        yield torch.from_numpy(piece)


def _shuffled_full_blocks(
    blocks: Iterable[np.ndarray], block: int, buffer_size: int, seed: int
) -> Iterator[np.ndarray]:
    """Full blocks in a seeded random order; the short last piece stays last.

    Only whole blocks move, so every training item still reads one contiguous
    stretch of the packed stream.
    """
    tail: list[np.ndarray] = []

    def full_blocks() -> Iterator[np.ndarray]:
        for piece in blocks:
            if len(piece) == block:
                yield piece
            else:
                tail.append(piece)

    yield from _buffer_shuffled(full_blocks(), buffer_size, np.random.default_rng([seed, 1]))
    yield from tail


def _packed_blocks(
    item: WorkItem,
    tokenizer_path: str,
    eos_id: int,
    block: int,
    dtype: str,
    counts_dir: str,
    position: int,
    buffer_size: int,
) -> Iterator[np.ndarray]:
    """The item's documents encoded, an EOS after each, cut into pieces of ``block`` tokens.

    Writes the item's counts to ``counts_dir/<position>.json`` once it is exhausted.
    """
    tokenizer = _TOKENIZERS.get(tokenizer_path)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_path] = load_tokenizer(tokenizer_path)[0]
    eos = np.array([eos_id], dtype=dtype)
    pending = np.zeros(0, dtype=dtype)
    documents = encoded = 0

    def encode(texts: list[str]) -> np.ndarray:
        nonlocal documents, encoded
        pieces = []
        for ids in encode_texts(tokenizer, texts):
            pieces.append(np.asarray(ids, dtype=dtype))
            pieces.append(eos)
            encoded += len(ids)
        documents += len(texts)
        return np.concatenate(pieces)

    texts: list[str] = []
    for text in _mixed_documents(item, buffer_size):
        texts.append(text)
        if len(texts) < _ENCODE_BATCH:
            continue
        pending = np.concatenate([pending, encode(texts)])
        texts = []
        whole = len(pending) - len(pending) % block
        for start in range(0, whole, block):
            yield pending[start : start + block].copy()
        pending = pending[whole:]
    if texts:
        pending = np.concatenate([pending, encode(texts)])
    for start in range(0, len(pending), block):
        yield pending[start : start + block].copy()
    record = {"documents": documents, "document_tokens": encoded, "eos_tokens": documents}
    (Path(counts_dir) / f"{position}.json").write_text(json.dumps(record))


def _summed_counts(counts_dir: Path, expected_items: int) -> dict[str, int]:
    files = sorted(counts_dir.glob("*.json"))
    if len(files) != expected_items:
        raise RuntimeError(
            f"prepare: {len(files)} of {expected_items} work items reported their token counts; "
            "a worker failed: rerun prepare (nothing was written to output_dir)"
        )
    total = {"documents": 0, "document_tokens": 0, "eos_tokens": 0}
    for file in files:
        for key, value in json.loads(file.read_text()).items():
            total[key] += value
    return total


def check_token_count(split: str, counted: dict[str, int], written: int) -> None:
    """Refuse shards that do not hold exactly the encoded tokens plus one EOS per document."""
    expected = counted["document_tokens"] + counted["eos_tokens"]
    if written != expected:
        raise RuntimeError(
            f"prepare: {split}: the shards hold {written:,} tokens but {expected:,} were encoded "
            f"({counted['document_tokens']:,} + {counted['eos_tokens']:,} EOS); tokens were "
            "lost or added: nothing was written to output_dir, report this with the command"
        )


def _held_out(
    num_documents: int, val_fraction: float, val_documents: int | None, seed: int
) -> list[int]:
    """The global numbers of the validation documents, sorted (a seeded random subset).

    ``val_fraction`` and ``val_documents`` are checked by ``PrepareOptions``; what
    is checked here is that training keeps some of the ``num_documents``.
    """
    count = max(1, round(val_fraction * num_documents)) if val_documents is None else val_documents
    if count >= num_documents:
        raise ConfigError(
            f"val_documents: {count} of {num_documents} documents leaves none for training; "
            "pass a smaller --val_documents / --val_fraction or more input"
        )
    order = np.random.default_rng(seed).permutation(num_documents)
    return sorted(int(i) for i in order[:count])


def _check_output(output: Path, overwrite: bool, inputs: Sequence[str]) -> None:
    for entry in inputs:
        source = Path(entry).absolute()
        if source == output or output in source.parents:
            raise ConfigError(
                f"output_dir: {output} contains the input {entry}; choose an --output_dir "
                "outside the inputs"
            )
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output_dir: {output} is a file; pass a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(
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
    items: list[WorkItem],
    folder: Path,
    tokenizer_path: Path,
    eos_id: int,
    block: int,
    chunk_blocks: int,
    dtype: str,
    num_workers: int,
    buffer_size: int,
    block_buffer: int,
) -> dict[str, int]:
    """Tokenize ``items`` into ``folder``; returns the workers' summed counts."""
    from litdata import TokensLoader, optimize

    counts_dir = folder.parent / COUNTS_FOLDER / name
    counts_dir.mkdir(parents=True)
    # fork: a spawned worker re-imports torch and this package (a minute on a busy
    # 2-core machine, against well under a second); the workers only read files
    # and run the Rust tokenizer. Its thread pool must not be inherited mid-use.
    start_method = "fork" if sys.platform == "linux" else "spawn"
    if start_method == "fork":
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    print(f"prepare: tokenizing {name} ({len(items)} work items, {num_workers} worker(s))")
    optimize(
        fn=partial(
            _tokenize_item,
            items=items,
            tokenizer_path=str(tokenizer_path),
            eos_id=eos_id,
            block=block,
            dtype=dtype,
            counts_dir=str(counts_dir),
            buffer_size=buffer_size,
            block_buffer=block_buffer,
        ),
        inputs=list(range(len(items))),
        output_dir=str(folder),
        chunk_size=chunk_blocks * block,
        item_loader=TokensLoader(),
        num_workers=max(1, min(num_workers, len(items))),
        reorder_files=False,
        # Static, ordered slices per worker: the same input gives the same shards.
        keep_data_ordered=True,
        start_method=start_method,
        verbose=False,
    )
    counted = _summed_counts(counts_dir, len(items))
    shutil.rmtree(counts_dir.parent)
    return counted


def auto_chunk_blocks(characters: int, block: int) -> int:
    """Blocks per chunk so that a corpus of ``characters`` gives about ``TARGET_CHUNKS`` chunks.

    litdata serves a batch from one chunk, so a small corpus needs many small
    chunks to mix; a large one gets chunks of ``MAX_CHUNK_BLOCKS`` blocks.
    The token count is estimated at ``CHARACTERS_PER_TOKEN`` (low, so the
    estimate errs towards more chunks).
    """
    estimated_blocks = characters / CHARACTERS_PER_TOKEN / block
    return int(min(MAX_CHUNK_BLOCKS, max(MIN_CHUNK_BLOCKS, estimated_blocks // TARGET_CHUNKS)))


@dataclass(frozen=True)
class PrepareOptions:
    """Tokenize local text into litdata shards (``train/``, ``val/``) plus ``meta.json``.

    The options of ``cli.py prepare``, one flag each (``--output_dir``). They are
    checked when made, so a bad value fails before any input is read.

    Attributes:
        inputs: one path, a glob (``'corpus/*.jsonl.zst'``) or a list ``[a,b]`` of
            files or folders of .txt (one document per file), .jsonl / .json
            (one document per line), .parquet (one per row), each of the text
            formats also compressed (.gz, .zst), or a ``datasets`` ``save_to_disk`` folder.
        output_dir: where the shards go, a local folder or an object-store URL
            (``s3://bucket/path``: built in a local staging folder, checked, then
            uploaded, ``meta.json`` last); refused if it holds data, unless ``overwrite``.
        text_field: JSONL field or Parquet / ``datasets`` column holding the text.
        tokenizer: a ``tokenizer.json``, a local HF tokenizer folder or a sentencepiece
            folder; if omitted, a byte-level BPE of ``vocab_size`` is trained on the
            training documents. Either way it is saved as ``output_dir/tokenizer.json``.
            Truncation, padding and post-processor special tokens are never applied.
        vocab_size: size of the BPE to train (ignored when ``tokenizer`` is given).
        eos_token: the token appended after each document (default: the
            tokenizer's own EOS, else ``<|endoftext|>``, ``</s>``, ...).
        val_fraction: share of documents held out for validation.
        val_documents: exact number of validation documents (overrides ``val_fraction``).
        seq_len: training sequence length the shards are packed for (blocks of ``seq_len + 1``).
        chunk_blocks: blocks per chunk file; ``auto`` aims at ~64 chunks for a small
            corpus (litdata draws a batch from one chunk) and 1024 blocks for a large one.
        shuffle: mix the training documents before packing (seeded by ``seed``), so
            that neighbouring files do not fill one chunk; validation keeps its order.
        shuffle_buffer: documents a worker mixes at once (memory bound per worker).
        shuffle_block_buffer: packed blocks a worker mixes at once before writing
            (memory bound per worker: this many blocks of ``seq_len + 1`` tokens), so
            that a document longer than a chunk is spread over many chunks; 1 turns it off.
        bpe_sample_bytes: at most this many bytes of training text train the BPE
            (every n-th document), so training a tokenizer on a huge corpus stays bounded.
        dtype: token dtype on disk; ``auto`` picks uint16 when the vocabulary fits.
        num_workers: tokenizer processes (default: all CPU cores).
        seed: seed of the validation hold-out and of the shuffle.
        overwrite: replace an existing ``output_dir``.
        storage_options: object-store client arguments for a URL ``output_dir`` (boto3's
            ``client`` for ``s3://``); endpoint and credentials come from the AWS environment.
    """

    inputs: str | list[str]
    output_dir: str = "data/prepared"
    text_field: str = "text"
    tokenizer: str | None = None
    vocab_size: int = 8192
    eos_token: str | None = None
    val_fraction: float = 0.01
    val_documents: int | None = None
    seq_len: int = 256
    chunk_blocks: int | Literal["auto"] = "auto"
    shuffle: bool = True
    shuffle_buffer: int = 4096
    shuffle_block_buffer: int = 32768
    bpe_sample_bytes: int = 512 * 2**20
    dtype: Literal["auto", "uint16", "int32"] = "auto"
    num_workers: int | None = None
    seed: int = 42
    overwrite: bool = False
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        """Refuse a value that cannot work, naming the field and the fix."""
        if self.seq_len < 1:
            raise ConfigError(f"seq_len: {self.seq_len} is below 1; pass a positive --seq_len")
        if self.chunk_blocks != "auto" and (
            not isinstance(self.chunk_blocks, int) or self.chunk_blocks < 1
        ):
            raise ConfigError(
                f"chunk_blocks: {self.chunk_blocks} is not a positive number; "
                "pass e.g. 1024 or auto"
            )
        if self.shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer: {self.shuffle_buffer} is below 1; pass e.g. 4096")
        if self.shuffle_block_buffer < 1:
            raise ConfigError(
                f"shuffle_block_buffer: {self.shuffle_block_buffer} is below 1; "
                "pass e.g. 32768 (1 = off)"
            )
        if self.val_documents is None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: {self.val_fraction} is not in (0, 1); pass e.g. 0.01")
        if self.val_documents is not None and self.val_documents < 1:
            raise ConfigError(f"val_documents: {self.val_documents} is below 1; pass at least 1")

    @property
    def input_paths(self) -> list[str]:
        """``inputs`` as a list (one path or glob is a list of one)."""
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


def prepare_command(options: PrepareOptions) -> str:
    """The ``cli.py prepare`` command line that repeats a call with these options.

    Built from the options themselves (not ``sys.argv``), so it is exact also
    when ``prepare`` is called from Python. ``storage_options`` may hold
    credentials: it stays out.
    """
    words = ["python", "cli.py", "prepare"]
    for option in fields(options):
        if option.name == "storage_options":
            continue
        value = getattr(options, option.name)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        words.append(f"--{option.name}={text}")
    return shlex.join(words)


@dataclass(frozen=True)
class Corpus:
    """The scanned input documents, split into training and validation ranges.

    Attributes:
        scan: what ``scan_inputs`` found (files, ranges, counts).
        splits: the document ranges of ``train`` and ``val``.
        documents: the number of documents of ``train`` and ``val``.
    """

    scan: ScanResult
    splits: dict[str, list[DocumentRange]]
    documents: dict[str, int]


@dataclass(frozen=True)
class SavedTokenizer:
    """The tokenizer written into the shard folder, with what the shards need of it.

    Attributes:
        path: its ``tokenizer.json``.
        eos_id: the id appended after each document.
        vocab_size: tokens, added ones included.
        dtype: the token dtype on disk.
        source: where it came from (a path, or the trained BPE), for ``meta.json``.
        bpe_sample: what trained the BPE (``None`` for a given tokenizer).
    """

    path: Path
    eos_id: int
    vocab_size: int
    dtype: str
    source: str
    bpe_sample: dict | None


def _documents(options: PrepareOptions) -> Corpus:
    """Scan the inputs and hold out the validation documents (seeded by ``options.seed``)."""
    scan = scan_inputs(options.input_paths, text_field=options.text_field, documents_per_range=256)
    val_set = _held_out(
        scan.num_documents, options.val_fraction, options.val_documents, options.seed
    )
    splits = {
        "train": [r for r in (rng.select(val_set, inside=False) for rng in scan.ranges) if r],
        "val": [r for r in (rng.select(val_set, inside=True) for rng in scan.ranges) if r],
    }
    documents = {"train": scan.num_documents - len(val_set), "val": len(val_set)}
    print(
        f"prepare: {scan.num_documents} documents in {len(scan.files)} file(s) "
        f"({scan.empty_documents} empty skipped); {documents['val']} held out for validation"
    )
    return Corpus(scan, splits, documents)


def _save_tokenizer(
    options: PrepareOptions, given: tuple | None, corpus: Corpus, folder: Path
) -> SavedTokenizer:
    """The given tokenizer, or a BPE trained on the training split, saved into ``folder``."""
    path = folder / TOKENIZER_FILE
    if given is not None:
        tokenizer, configured_eos = given
        eos_id = eos_token_id(tokenizer, options.eos_token or configured_eos)
        source, bpe_sample = str(Path(options.tokenizer).absolute()), None
    else:
        vocab_size = options.vocab_size
        print(f"prepare: training a byte-level BPE of {vocab_size} tokens on the training split")
        sample = bpe_sample_documents(
            corpus.splits["train"], corpus.scan.characters, options.bpe_sample_bytes
        )
        tokenizer = train_byte_level_bpe(sample, vocab_size)
        bpe_sample = {"max_bytes": options.bpe_sample_bytes, **sample.taken}
        eos_id = eos_token_id(tokenizer, options.eos_token or EOS_TOKEN)
        source = f"trained: byte-level BPE, vocab {vocab_size}"
    tokenizer.save(str(path))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    return SavedTokenizer(
        path, eos_id, vocab, token_dtype(vocab, options.dtype), source, bpe_sample
    )


def _write_checked_split(
    name: str,
    options: PrepareOptions,
    corpus: Corpus,
    tokenizer: SavedTokenizer,
    folder: Path,
    chunk_blocks: int,
    workers: int,
) -> dict[str, int]:
    """Tokenize one split into ``folder/name`` and check every token arrived; its meta entry."""
    block = options.seq_len + 1
    seed = options.seed if options.shuffle and name == "train" else None
    # Shuffled: one item per worker, so that each worker's block buffer mixes
    # its whole share of the corpus (the shards then depend on num_workers).
    documents = corpus.documents[name]
    per_item = DOCUMENTS_PER_ITEM if seed is None else max(1, -(-documents // workers))
    counted = _write_split(
        name,
        work_items(corpus.splits[name], seed, per_item),
        folder / name,
        tokenizer.path,
        tokenizer.eos_id,
        block,
        chunk_blocks,
        tokenizer.dtype,
        workers,
        options.shuffle_buffer,
        options.shuffle_block_buffer,
    )
    per_chunk = chunk_tokens(read_index(folder / name))
    tokens = sum(per_chunk)
    check_token_count(name, counted, tokens)
    if counted["documents"] != documents:
        raise RuntimeError(
            f"prepare: {name}: {counted['documents']} documents were tokenized but "
            f"{documents} were found; nothing was written to output_dir"
        )
    return {
        "documents": documents,
        "document_tokens": counted["document_tokens"],
        "eos_tokens": counted["eos_tokens"],
        "tokens": tokens,
        "usable_tokens": usable_tokens(per_chunk, block),
        "chunks": len(per_chunk),
    }


def _print_summary(meta: dict, output: Path, elapsed: float) -> None:
    """The per-split token accounting and the throughput, from ``meta``."""
    block = meta["seq_len"] + 1
    print(f"prepare: {meta['chunk_blocks']} blocks of {block} tokens per chunk")
    for name, info in meta["splits"].items():
        lost = info["tokens"] - info["usable_tokens"]
        print(
            f"prepare: {name}: {info['documents']} documents, {info['tokens']:,} tokens written "
            f"= {info['document_tokens']:,} encoded + {info['eos_tokens']:,} EOS (checked), "
            f"{info['chunks']} chunks, {info['usable_tokens']:,} usable as blocks of {block} "
            f"({lost:,} = {100 * lost / max(info['tokens'], 1):.2f}% dropped at chunk ends)"
        )
    total = sum(s["tokens"] for s in meta["splits"].values())
    print(
        f"prepare: {total:,} tokens in {elapsed:.1f} s ({total / elapsed:,.0f} tokens/s); "
        f"vocab {meta['vocab_size']} ({meta['dtype']}); wrote {output}"
    )


def prepare(options: PrepareOptions) -> dict:
    """Tokenize ``options.inputs`` into litdata shards plus ``meta.json`` in ``options.output_dir``.

    Steps: check the output folder, load the given tokenizer, scan and split the
    documents, then in a partial folder save (or train) the tokenizer, write and
    check the shards of each split and ``meta.json``, and rename it into place.

    Returns:
        The contents of ``meta.json``.
    """
    if is_remote(options.output_dir):
        return _prepare_to_url(options)
    started = time.perf_counter()
    output = Path(options.output_dir).absolute()
    partial_dir = output.parent / f".{output.name}.partial"
    old_dir = output.parent / f".{output.name}.old"
    _recover_interrupted_swap(output, old_dir)
    _check_output(output, options.overwrite, options.input_paths)

    given = load_tokenizer(options.tokenizer) if options.tokenizer is not None else None
    # A dtype too narrow for the vocabulary fails here, before the inputs are read.
    vocab = given[0].get_vocab_size(with_added_tokens=True) if given else options.vocab_size
    token_dtype(vocab, options.dtype)
    corpus = _documents(options)

    if partial_dir.exists():  # left by a killed run
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True)
    tokenizer = _save_tokenizer(options, given, corpus, partial_dir)
    train_share = corpus.documents["train"] / corpus.scan.num_documents
    chunk_blocks = (
        auto_chunk_blocks(int(corpus.scan.characters * train_share), options.seq_len + 1)
        if options.chunk_blocks == "auto"
        else options.chunk_blocks
    )
    workers = options.num_workers or os.cpu_count() or 1
    splits = {
        name: _write_checked_split(
            name, options, corpus, tokenizer, partial_dir, chunk_blocks, workers
        )
        for name in corpus.splits
    }

    elapsed = time.perf_counter() - started
    meta = {
        "format": "jreg-lightning token shards (litdata TokensLoader)",
        "tokenizer": TOKENIZER_FILE,
        "tokenizer_source": tokenizer.source,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "add_special_tokens": False,
        "dtype": tokenizer.dtype,
        "seq_len": options.seq_len,
        "chunk_blocks": chunk_blocks,
        "splits": splits,
        "empty_documents_skipped": corpus.scan.empty_documents,
        "val_seed": options.seed,
        "shuffle_seed": options.seed if options.shuffle else None,
        "shuffle_buffer": options.shuffle_buffer,
        "shuffle_block_buffer": options.shuffle_block_buffer if options.shuffle else None,
        "num_workers": workers,
        "bpe_sample": tokenizer.bpe_sample,
        "inputs": [str(Path(p).absolute()) for p in options.input_paths],
        "text_field": options.text_field,
        "command": prepare_command(options),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(elapsed, 2),
    }
    write_meta(partial_dir, meta)
    _swap_into_place(partial_dir, output, old_dir)
    _print_summary(meta, output, elapsed)
    return meta


def _prepare_to_url(options: PrepareOptions) -> dict:
    """``prepare`` into a local staging folder, then upload it to the URL ``output_dir``.

    The destination is checked first (scheme, bucket, credentials, an empty prefix unless
    ``overwrite``), so bad input fails before any work; the token check runs on the staged
    shards as for a local folder, and nothing is uploaded unless it passed.
    """
    url = str(options.output_dir).rstrip("/")
    storage = options.storage_options
    occupied = check_destination(url, options.overwrite, "output_dir", storage)
    with tempfile.TemporaryDirectory(prefix="jreg-prepare-") as staging:
        local = Path(staging) / "data"
        meta = prepare(replace(options, output_dir=str(local), overwrite=False))
        meta.update(command=prepare_command(options), location=url)
        write_meta(local, meta)
        count = upload_folder(local, url, "output_dir", storage, replace=occupied)
    print(f"prepare: uploaded {count} files to {url}")
    return meta
