"""Documents from local files: .txt, .jsonl/.json, .parquet and ``datasets`` folders.

Text and JSON-lines files may be compressed (``.gz``, ``.zst``, ``.bz2``,
``.xz``); they are read as streams, never whole into memory. Inputs may be
files, folders (searched recursively) or globs.

``scan_inputs`` reads every input once in the main process: it checks that each
file is readable and valid (UTF-8, the JSONL field / Parquet column exists)
and numbers the non-empty documents ``0 .. n-1`` in a fixed order (sorted
paths, then lines / rows). It returns work items: small ranges of documents
that a worker re-reads with ``read_documents`` and that give the same
numbering. Bad input fails here, before anything is written.

Policy: a file that cannot be read or is not valid UTF-8 stops the run with an
error naming it (nothing is skipped silently); documents whose text is empty
or only whitespace are skipped and counted.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import importlib
import io
import json
import lzma
import math
import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jreg_lightning.errors import ConfigError, InputNotFoundError, InputUnreadableError

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2", ".xz")
# A plain JSON-lines file larger than this is read as several ranges, in parallel.
RANGE_BYTES = 64 * 2**20
SUPPORTED = ".txt, .jsonl, .json (JSON lines), .parquet, each text format also as .gz/.zst/.bz2/.xz"


def _compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSED_SUFFIXES else None


def _format_suffix(path: Path) -> str:
    """``.jsonl`` for ``a.jsonl.zst``: the suffix under any compression suffix."""
    return Path(path.stem).suffix.lower() if _compression(path) else path.suffix.lower()


@contextmanager
def open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed as a stream by its suffix (plain files as they are)."""
    compression = _compression(path)
    if compression is None:
        with open(path, "rb") as handle:
            yield handle
    elif compression == ".gz":
        with gzip.open(path, "rb") as handle:
            yield handle
    elif compression == ".bz2":
        with bz2.open(path, "rb") as handle:
            yield handle
    elif compression == ".xz":
        with lzma.open(path, "rb") as handle:
            yield handle
    else:
        with open(path, "rb") as raw, io.BufferedReader(_ZstdReader(raw)) as handle:
            yield handle


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression that, unlike ``stream_reader``, fails on a truncated frame."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._decoder = zstandard.ZstdDecompressor().decompressobj()
        # Decompressed bytes not yet read, from _offset on: an offset, not a re-slice,
        # so that each 8 KiB read does not copy the rest (30x slower on 16 MB).
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending):
            compressed = self._raw.read(1 << 18)
            if not compressed:
                if not self._decoder.eof:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            pieces = []
            while compressed:
                if self._decoder.eof:  # a new frame follows the finished one
                    self._decoder = self._zstd.ZstdDecompressor().decompressobj()
                pieces.append(self._decoder.decompress(compressed))
                compressed = self._decoder.unused_data if self._decoder.eof else b""
            self._pending, self._offset = b"".join(pieces), 0
        size = min(len(buffer), len(self._pending) - self._offset)
        buffer[:size] = memoryview(self._pending)[self._offset : self._offset + size]
        self._offset += size
        return size


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a decompression failure into one line that names the file."""
    try:
        yield
    except (EOFError, OSError, lzma.LZMAError, gzip.BadGzipFile) as error:
        raise ConfigError(
            f"inputs: {path} is corrupt or truncated ({type(error).__name__}: {error}); "
            "re-download or re-compress it, or leave it out"
        ) from None
    except Exception as error:
        if type(error).__module__.startswith("zstandard") or "Zstd" in type(error).__name__:
            raise ConfigError(
                f"inputs: {path} is corrupt or truncated (zstd: {error}); "
                "re-download or re-compress it, or leave it out"
            ) from None
        raise


@dataclass(frozen=True)
class DocumentRange:
    """A run of documents in one source that one worker call tokenizes.

    Attributes:
        path: the file (or ``datasets`` folder) to read.
        kind: ``txt``, ``jsonl``, ``parquet`` or ``datasets``.
        field: JSONL field / Parquet or ``datasets`` column holding the text.
        position: where to start reading: byte offset (jsonl), row group
            (parquet), first row (datasets); unused for txt.
        length: lines (jsonl) or rows (datasets) to read; unused otherwise.
        first_index: global number of the first non-empty document in the range.
        num_documents: non-empty documents in the range.
        keep: global numbers to keep (``None``: all of the range).
        skip: global numbers to leave out. The training side of a range names
            the few validation documents it skips rather than the many it keeps,
            so that its memory does not grow with the corpus (a 10M-document
            compressed file is one range).
    """

    path: str
    kind: str
    field: str | None
    position: int
    length: int
    first_index: int
    num_documents: int
    keep: frozenset[int] | None = None
    skip: frozenset[int] = frozenset()

    def select(self, indices: Sequence[int], inside: bool) -> DocumentRange | None:
        """This range kept to documents in (or not in) sorted ``indices``; ``None`` if empty."""
        stop = self.first_index + self.num_documents
        mine = set(indices[bisect_left(indices, self.first_index) : bisect_left(indices, stop)])
        count = len(mine) if inside else self.num_documents - len(mine)
        if count == 0:
            return None
        return DocumentRange(
            self.path,
            self.kind,
            self.field,
            self.position,
            self.length,
            self.first_index,
            self.num_documents,
            keep=frozenset(mine) if inside else None,
            skip=frozenset() if inside else frozenset(mine),
        )


@dataclass
class ScanResult:
    """What ``scan_inputs`` found: work items in document order, and counts."""

    ranges: list[DocumentRange] = field(default_factory=list)
    num_documents: int = 0
    empty_documents: int = 0
    characters: int = 0
    files: list[str] = field(default_factory=list)


def _is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    )


def _source_files(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Every readable input as ``(path, kind)``, folders expanded in sorted order."""
    found: list[tuple[Path, str]] = []
    expanded: list[Path] = []
    for entry in inputs:
        if glob.has_magic(str(entry)):
            matches = sorted(glob.glob(str(entry), recursive=True))
            if not matches:
                raise InputNotFoundError(
                    f"inputs: the pattern {entry} matches no file; check the path "
                    "(quote the pattern so that the shell does not expand it)"
                )
            expanded.extend(Path(match) for match in matches)
        else:
            expanded.append(Path(entry))
    for path in expanded:
        if not path.exists():
            raise InputNotFoundError(
                f"inputs: {path} does not exist; pass existing files, folders or globs of "
                f"{SUPPORTED}, or a datasets save_to_disk folder"
            )
        if _is_datasets_folder(path):
            found.append((path, "datasets"))
            continue
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in candidates:
            suffix = _format_suffix(file)
            if suffix in PARQUET_SUFFIXES and _compression(file):
                suffix = file.suffix.lower()  # a compressed parquet file is not supported
            if suffix in TEXT_SUFFIXES:
                found.append((file, "txt"))
            elif suffix in JSONL_SUFFIXES:
                found.append((file, "jsonl"))
            elif suffix in PARQUET_SUFFIXES:
                found.append((file, "parquet"))
            elif not path.is_dir():
                raise ConfigError(
                    f"inputs: {file} has an unsupported suffix {''.join(file.suffixes)!r}; "
                    f"use {SUPPORTED}, or a datasets save_to_disk folder"
                )
    return found


def _open_check(path: Path) -> None:
    if not os.access(path, os.R_OK):
        raise InputUnreadableError(
            f"inputs: cannot read {path} (permission denied); fix its permissions or leave it out"
        )


def _utf8(raw: bytes, path: Path, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"inputs: {path}{where} is not valid UTF-8 (byte {error.start}); "
            "re-encode the file as UTF-8 (e.g. iconv -t UTF-8) or leave it out"
        ) from None


def json_line(line: str, path: Path, line_number: int, option: str) -> object:
    """One line of a JSON-lines file, parsed; a one-line ``ConfigError`` naming ``option``,
    the file and the line if it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{option}: {path} line {line_number} is not valid JSON ({error.msg}); "
            "fix or remove that line"
        ) from None


def _jsonl_text(line: bytes, path: Path, line_number: int, text_field: str) -> str | None:
    """The document of one JSONL line; ``None`` for a blank line."""
    if not line.strip():
        return None
    record = json_line(_utf8(line, path, f" line {line_number}"), path, line_number, "inputs")
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(
            f"inputs: {path} line {line_number} has no field {text_field!r} (found {keys}); "
            "pass --text_field with the field that holds the text"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise ConfigError(
            f"inputs: {path} line {line_number} field {text_field!r} is {type(text).__name__}, "
            "not a string; pass --text_field naming a text field"
        )
    return text


def _import_extra(module: str, path: Path, package: str, extra: str):
    """``module``, imported; without it, an ``ImportError`` naming the input and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"inputs: reading {path} needs the {package} package; install the extra: "
            f"pip install -e '.[{extra}]'"
        ) from None


def _require_column(path: Path, column: str, names: list[str]) -> None:
    if column not in names:
        raise ConfigError(
            f"inputs: {path} has no column {column!r} (columns: {names}); "
            "pass --text_field with the column that holds the text"
        )


def _parquet_column(path: Path, column: str):
    parquet = _import_extra("pyarrow.parquet", path, "pyarrow", "parquet").ParquetFile(path)
    _require_column(path, column, parquet.schema_arrow.names)
    return parquet


def _load_datasets_folder(path: Path, column: str):
    dataset = _import_extra("datasets", path, "datasets", "datasets").load_from_disk(str(path))
    if hasattr(dataset, "column_names") and isinstance(dataset.column_names, dict):
        raise ConfigError(
            f"inputs: {path} is a DatasetDict with splits {list(dataset.keys())}; "
            f"pass one split's folder (e.g. {path}/train)"
        )
    _require_column(path, column, dataset.column_names)
    return dataset


def _documents(rng: DocumentRange) -> Iterator[str | None]:
    """Every record of a range, ``None`` for records that are not documents (blank lines)."""
    path = Path(rng.path)
    if rng.kind == "txt":
        with _reading(path), open_binary(path) as handle:
            yield _utf8(handle.read(), path, "")
    elif rng.kind == "jsonl":
        with _reading(path), open_binary(path) as handle:
            if rng.position:  # only plain files are split into ranges by byte offset
                handle.seek(rng.position)
            for _ in range(rng.length):
                yield _jsonl_text(handle.readline(), path, 0, rng.field or "text")
    elif rng.kind == "parquet":
        table = _parquet_column(path, rng.field or "text").read_row_group(
            rng.position, columns=[rng.field]
        )
        for value in table.column(0).to_pylist():
            yield value if isinstance(value, str) else None
    elif rng.kind == "datasets":
        dataset = _load_datasets_folder(path, rng.field or "text")
        yield from dataset[rng.position : rng.position + rng.length][rng.field]
    else:
        raise ValueError(f"unknown source kind {rng.kind!r}")


def read_documents(rng: DocumentRange) -> Iterator[tuple[int, str]]:
    """``(global index, text)`` for the kept non-empty documents of ``rng``, in order."""
    index = rng.first_index
    for text in _documents(rng):
        if not text or not text.strip():
            continue
        if (rng.keep is None or index in rng.keep) and index not in rng.skip:
            yield index, text
        index += 1


def scan_inputs(
    inputs: Sequence[str | Path], text_field: str = "text", documents_per_range: int = 512
) -> ScanResult:
    """Check every input and number its documents; one-line errors for bad input.

    Args:
        inputs: files or folders (searched recursively for .txt/.jsonl/.parquet)
            or ``datasets`` ``save_to_disk`` folders.
        text_field: JSONL field / Parquet or ``datasets`` column with the text.
        documents_per_range: records per range of a ``datasets`` folder (JSON-lines
            files are split every ``RANGE_BYTES``, compressed ones not at all).
    """
    if not inputs:
        raise ConfigError("inputs: no input given; pass --inputs with files or folders of text")
    result = ScanResult()
    sources = _source_files(inputs)
    if not sources:
        raise ConfigError(
            f"inputs: no supported file found in {[str(p) for p in inputs]}; "
            f"point --inputs at files or folders of {SUPPORTED}"
        )

    def add(path: Path, kind: str, position: int, length: int, count: int, empty: int) -> None:
        if count:
            result.ranges.append(
                DocumentRange(
                    str(path), kind, text_field, position, length, result.num_documents, count
                )
            )
        result.num_documents += count
        result.empty_documents += empty

    from tqdm import tqdm

    for path, kind in tqdm(sources, desc="scan inputs", unit="file", disable=len(sources) < 8):
        result.files.append(str(path))
        if kind != "datasets":
            _open_check(path)
        if kind == "txt":
            with _reading(path), open_binary(path) as handle:
                text = _utf8(handle.read(), path, "")
            empty = not text.strip()
            result.characters += len(text)
            add(path, kind, 0, 1, 0 if empty else 1, int(empty))
        elif kind == "jsonl":
            # A plain file is split by bytes so that big files are read in parallel; a
            # compressed one cannot be entered in the middle and stays one range. Files
            # below RANGE_BYTES are one range either way (the same shards, compressed or not).
            split = _compression(path) is None and path.stat().st_size > RANGE_BYTES
            with _reading(path), open_binary(path) as handle:
                start, lines, count, empty, line_number = 0, 0, 0, 0, 0
                while True:
                    line = handle.readline()
                    if not line:
                        break
                    line_number += 1
                    text = _jsonl_text(line, path, line_number, text_field)
                    lines += 1
                    if text is not None and text.strip():
                        count += 1
                        result.characters += len(text)
                    elif text is not None:
                        empty += 1
                    if split and handle.tell() - start >= RANGE_BYTES:
                        add(path, kind, start, lines, count, empty)
                        start, lines, count, empty = handle.tell(), 0, 0, 0
                add(path, kind, start, lines, count, empty)
        elif kind == "parquet":
            parquet = _parquet_column(path, text_field)
            for group in range(parquet.num_row_groups):
                values = parquet.read_row_group(group, columns=[text_field]).column(0).to_pylist()
                texts = [v for v in values if isinstance(v, str) and v.strip()]
                result.characters += sum(map(len, texts))
                add(path, kind, group, len(values), len(texts), len(values) - len(texts))
        else:
            dataset = _load_datasets_folder(path, text_field)
            for start in range(0, len(dataset), documents_per_range):
                values = dataset[start : start + documents_per_range][text_field]
                texts = [v for v in values if isinstance(v, str) and v.strip()]
                result.characters += sum(map(len, texts))
                add(path, kind, start, len(values), len(texts), len(values) - len(texts))
    if result.num_documents == 0:
        raise ConfigError(
            f"inputs: no non-empty document in {len(result.files)} file(s) "
            f"({result.empty_documents} empty); check --inputs and --text_field"
        )
    return result


class BpeSample:
    """Every n-th training document, at most ``max_bytes`` of text: what trains the BPE.

    Iterable (the tokenizers trainer pulls from it); ``taken`` counts what it gave.
    """

    def __init__(self, ranges: Sequence[DocumentRange], characters: int, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ConfigError(f"bpe_sample_bytes: {max_bytes} is below 1; pass e.g. 536870912")
        self.ranges = ranges
        self.max_bytes = max_bytes
        self.every = max(1, math.ceil(characters / max_bytes))
        self.taken = {"documents": 0, "characters": 0, "every_nth_document": self.every}

    def __iter__(self) -> Iterator[str]:
        position = 0
        for rng in self.ranges:
            for _, text in read_documents(rng):
                position += 1
                if (position - 1) % self.every:
                    continue
                full = self.taken["characters"] + len(text) > self.max_bytes
                if full and self.taken["documents"]:
                    return
                self.taken["documents"] += 1
                self.taken["characters"] += len(text)
                yield text


def bpe_sample_documents(
    ranges: Sequence[DocumentRange], characters: int, max_bytes: int
) -> BpeSample:
    """The bounded sample of training documents a BPE is trained on (see ``BpeSample``)."""
    return BpeSample(ranges, characters, max_bytes)
