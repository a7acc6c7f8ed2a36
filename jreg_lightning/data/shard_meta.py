"""``meta.json`` beside the shards, the token dtype, and token accounting from ``index.json``."""

from __future__ import annotations

import json
from pathlib import Path

from jreg_lightning.data.storage import Location, is_remote, join, read_text
from jreg_lightning.errors import ConfigError, InputNotFoundError

META_FILE = "meta.json"
INDEX_FILE = "index.json"
DTYPE_LIMITS = {"uint16": 2**16, "int32": 2**31}


def token_dtype(vocab_size: int, dtype: str = "auto") -> str:
    """``uint16`` when every id fits, else ``int32``; an explicit dtype is checked."""
    if dtype == "auto":
        dtype = "uint16" if vocab_size <= DTYPE_LIMITS["uint16"] else "int32"
    if dtype not in DTYPE_LIMITS:
        raise ConfigError(f"dtype: {dtype!r} is not one of auto, uint16, int32")
    if vocab_size > DTYPE_LIMITS[dtype]:
        raise ConfigError(
            f"dtype: vocab_size {vocab_size} does not fit {dtype} (ids up to "
            f"{DTYPE_LIMITS[dtype] - 1}); pass --dtype int32 or --dtype auto"
        )
    return dtype


def read_meta(data_dir: Location, storage_options: dict | None = None) -> dict | None:
    """The ``meta.json`` of a prepared data folder or URL, or ``None`` if there is none."""
    path = join(data_dir, META_FILE)
    try:
        text = read_text(path, "data.data_dir", storage_options)
        return None if text is None else json.loads(text)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"data_dir: {path} is unreadable ({error}); re-run `cli.py prepare` into that folder"
        ) from None


def read_index(split_dir: Location, storage_options: dict | None = None) -> dict:
    """The litdata ``index.json`` of one split; a one-line error if it is missing or broken."""
    path = join(split_dir, INDEX_FILE)
    if not is_remote(split_dir) and not Path(split_dir).is_dir():
        raise InputNotFoundError(
            f"data.data_dir: {split_dir} does not exist; run `python cli.py prepare` "
            "or point data.data_dir at a folder holding train/ and val/"
        )
    try:
        text = read_text(path, "data.data_dir", storage_options)
    except OSError:
        text = None
    if text is None and is_remote(split_dir):
        raise InputNotFoundError(
            f"data.data_dir: {path} does not exist; run `python cli.py prepare --output_dir "
            f"{str(split_dir).rsplit('/', 1)[0]}` or fix the URL"
        )
    try:
        index = json.loads(text or "")
        index["chunks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(
            f"data.data_dir: {split_dir} is not a litdata dataset ({path} missing or unreadable); "
            "write it with `python cli.py prepare`"
        ) from None
    return index


def chunk_tokens(index: dict) -> list[int]:
    """Tokens in each chunk of a ``TokensLoader`` dataset (its ``dim`` field)."""
    return [int(chunk.get("dim") or 0) for chunk in index["chunks"]]


def usable_tokens(tokens_per_chunk: list[int], block: int) -> int:
    """Tokens that ``TokensLoader(block_size=block)`` serves: each chunk's tail is dropped."""
    return sum((tokens // block) * block for tokens in tokens_per_chunk)


def write_meta(folder: Path, meta: dict) -> Path:
    """Write ``meta`` as ``folder/meta.json`` (indented, key order kept)."""
    path = Path(folder) / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path
