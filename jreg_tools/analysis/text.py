"""Token batches for the analysis, streamed: from prepared litdata shards, a text file, documents.

Packed (shards, ``--text``): each batch is a ``(batch_size, seq_len + 1)`` int64
tensor (inputs ``[:, :-1]``, targets ``[:, 1:]``), the same layout as training
batches. Per document (``--documents``): a ``DocumentBatch``, one document per
row with the model's own special tokens, padded on the right to the batch's
longest and masked, the way encoders are used. At most ``max_batches`` are
read; nothing beyond one batch is held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from jreg_lightning.data.shard_meta import read_meta
from jreg_lightning.data.storage import Location, as_location, is_remote, join, read_text
from jreg_lightning.data.tokenizer import encode_texts
from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_tools.data.sources import COMPRESSED_SUFFIXES, json_line, open_binary

# Lines of text encoded together when reading a text file.
_TEXT_CHUNK_CHARS = 1 << 16


def shard_dir(data: Location, split: str) -> Location:
    """The litdata dataset of ``split`` (``data/split``), or ``data`` itself; folder or URL."""
    for candidate in (join(data, split), data):
        if read_text(join(candidate, "index.json"), "data") is not None:
            return candidate
    raise InputNotFoundError(
        f"analyze: {data} holds no litdata dataset ({join(data, split)}/index.json is missing); "
        "pass --data_dir a folder made by `prepare` (with train/ and val/) and --split train or val"
    )


def shard_vocab_size(data: Location) -> int | None:
    """``vocab_size`` from ``meta.json`` beside prepared shards, if there is one."""
    value = (read_meta(as_location(data)) or {}).get("vocab_size")
    return int(value) if value is not None else None


def shard_batches(
    data: str | Path, split: str, seq_len: int, batch_size: int, max_batches: int
) -> Iterator[Tensor]:
    """Batches of consecutive ``seq_len + 1`` token blocks from a litdata TokensLoader dataset.

    ``data`` is a folder or a URL (streamed through litdata's default cache).
    """
    from litdata import StreamingDataset, TokensLoader

    folder = shard_dir(as_location(data), split)
    dataset = StreamingDataset(
        input_dir=str(folder if is_remote(folder) else Path(folder).resolve()),
        item_loader=TokensLoader(block_size=seq_len + 1),
        shuffle=False,
        drop_last=True,
    )
    rows: list[Tensor] = []
    produced = 0
    for item in dataset:
        rows.append(torch.as_tensor(item).long())
        if len(rows) == batch_size:
            yield torch.stack(rows)
            rows = []
            produced += 1
            if produced == max_batches:
                return


def text_batches(
    text: str | Path,
    encode: Callable[[str], list[int]],
    seq_len: int,
    batch_size: int,
    max_batches: int,
) -> Iterator[Tensor]:
    """Batches of ``seq_len + 1`` token blocks from a UTF-8 text file, read in chunks."""
    path = Path(text)
    if not path.is_file():
        raise InputNotFoundError(f"analyze: text file {path} does not exist; pass --text a file")
    block = seq_len + 1
    needed = batch_size * block
    pending: list[int] = []
    produced = 0
    with path.open(encoding="utf-8") as handle:
        while produced < max_batches:
            chunk = handle.read(_TEXT_CHUNK_CHARS)
            if not chunk:
                break
            # Finish the chunk at a line end so that words are not split between encodes.
            chunk += handle.readline()
            pending.extend(encode(chunk))
            while len(pending) >= needed and produced < max_batches:
                yield torch.tensor(pending[:needed], dtype=torch.long).view(batch_size, block)
                del pending[:needed]
                produced += 1


@dataclass
class DocumentBatch:
    """Documents of one forward pass, padded on the right.

    Attributes:
        input_ids: ``(batch, seq)`` int64, ``seq`` the longest document of the batch;
            padding positions hold ``PAD_ID`` (masked, so its value does not matter).
        attention_mask: ``(batch, seq)`` int64, 1 at document tokens, 0 at padding.
    """

    input_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device | str) -> DocumentBatch:
        return DocumentBatch(self.input_ids.to(device), self.attention_mask.to(device))


PAD_ID = 0


@dataclass
class DocumentCounts:
    """What ``document_batches`` read: filled while the batches are consumed.

    Attributes:
        documents: documents put in batches.
        tokens: their tokens after truncation, special tokens included.
        special_tokens: special tokens the tokenizer's post-processor added to each one.
        truncated_documents: documents longer than ``max_length``, cut.
        truncated_tokens: tokens cut from them (the special tokens are kept).
        max_length: the length documents were cut to.
    """

    max_length: int
    documents: int = 0
    tokens: int = 0
    special_tokens: int = 0
    truncated_documents: int = 0
    truncated_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "special_tokens_per_document": self.special_tokens,
            "truncated_documents": self.truncated_documents,
            "truncated_tokens": self.truncated_tokens,
            "max_length": self.max_length,
        }


def documents_format(path: str | Path) -> str:
    """``jsonl`` or ``txt``: how ``read_document_texts`` reads ``path``; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"analyze: documents file {path} does not exist; pass --documents a .jsonl or .txt file"
        )
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if not name.endswith((".jsonl", ".json", ".txt")):
        raise ConfigError(
            f"analyze: --documents {path} is not .jsonl, .json or .txt (optionally compressed); "
            "pass one document per line in one of those"
        )
    return "txt" if name.endswith(".txt") else "jsonl"


def read_document_texts(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """The documents of a file: ``.jsonl``/``.json`` one per line (``text_field``), ``.txt``
    one per non-empty line; each also compressed (``.gz``, ``.zst``, ...). Blank ones skipped."""
    path = Path(path)
    is_json = documents_format(path) == "jsonl"
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            if is_json:
                record = json_line(line, path, number, "analyze")
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise ConfigError(
                        f"analyze: {path} line {number} has no text field {text_field!r}; "
                        "pass --text_field with the field that holds the text"
                    )
                line = text
            if line.strip():
                yield line.rstrip("\n")


def encode_documents(
    tokenizer: Tokenizer, texts: list[str], max_length: int, counts: DocumentCounts
) -> list[list[int]]:
    """Each text's ids with the model's special tokens, at most ``max_length``; counted.

    A longer document keeps its first tokens and still gets its special tokens
    (e.g. BERT's final ``[SEP]``): its text is cut, then post-processed.
    """
    special = tokenizer.num_special_tokens_to_add(False)
    if max_length <= special:
        raise ConfigError(
            f"analyze: max length {max_length} leaves no room for a document beside "
            f"{special} special tokens; use a model with a longer max_position_embeddings"
        )
    rows = encode_texts(tokenizer, texts, add_special_tokens=True)
    for index, ids in enumerate(rows):
        if len(ids) > max_length:
            encoding = tokenizer.encode(texts[index], add_special_tokens=False)
            encoding.truncate(max_length - special)
            rows[index] = tokenizer.post_process(encoding, None, True).ids
            counts.truncated_documents += 1
            counts.truncated_tokens += len(ids) - len(rows[index])
    counts.documents += len(rows)
    counts.tokens += sum(map(len, rows))
    counts.special_tokens = special
    return rows


def pad_documents(rows: list[list[int]]) -> DocumentBatch:
    """Token lists padded on the right with ``PAD_ID`` to the longest, and their mask."""
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return DocumentBatch(ids, mask)


def document_batches(
    path: str | Path,
    tokenizer: Tokenizer,
    max_length: int,
    batch_size: int,
    max_batches: int,
    counts: DocumentCounts,
    text_field: str = "text",
) -> Iterator[DocumentBatch]:
    """Batches of ``batch_size`` documents of a file, in file order (see ``DocumentBatch``)."""
    produced = 0
    texts: list[str] = []
    for text in read_document_texts(path, text_field):
        texts.append(text)
        if len(texts) == batch_size:
            yield pad_documents(encode_documents(tokenizer, texts, max_length, counts))
            texts = []
            produced += 1
            if produced == max_batches:
                return
    if texts:
        yield pad_documents(encode_documents(tokenizer, texts, max_length, counts))
