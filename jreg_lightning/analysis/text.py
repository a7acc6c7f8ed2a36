"""Token batches for the analysis, streamed: from prepared litdata shards or a text file.

Each batch is a ``(batch_size, seq_len + 1)`` int64 tensor (inputs ``[:, :-1]``,
targets ``[:, 1:]``), the same layout as training batches. At most
``max_batches`` are read; nothing beyond one batch is held.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

# Lines of text encoded together when reading a text file.
_TEXT_CHUNK_CHARS = 1 << 16


def shard_dir(data: Path, split: str) -> Path:
    """The litdata dataset folder of ``split`` (``data/split``), or ``data`` itself."""
    if (data / split / "index.json").is_file():
        return data / split
    if (data / "index.json").is_file():
        return data
    raise FileNotFoundError(
        f"analyze: {data} holds no litdata dataset ({data / split}/index.json is missing); "
        "pass --data a folder made by `prepare` (with train/ and val/) and --split train or val"
    )


def shard_vocab_size(data: Path) -> int | None:
    """``vocab_size`` from ``meta.json`` beside prepared shards, if there is one."""
    meta = data / "meta.json"
    if meta.is_file():
        value = json.loads(meta.read_text()).get("vocab_size")
        return int(value) if value is not None else None
    return None


def shard_batches(
    data: str | Path, split: str, seq_len: int, batch_size: int, max_batches: int
) -> Iterator[Tensor]:
    """Batches of consecutive ``seq_len + 1`` token blocks from a litdata TokensLoader dataset."""
    from litdata import StreamingDataset, TokensLoader

    folder = shard_dir(Path(data), split).resolve()
    dataset = StreamingDataset(
        input_dir=str(folder),
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
        raise FileNotFoundError(f"analyze: text file {path} does not exist; pass --text a file")
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
