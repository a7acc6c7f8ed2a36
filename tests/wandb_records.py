"""Read a W&B offline run file (``run-ID.wandb``) back: its records, decoded.

The file is W&B's 7-byte header, then a LevelDB-style log of 32 KiB blocks whose
records (7-byte header: crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST)
hold ``wandb_internal_pb2.Record`` protobufs. wandb 0.31 ships no Python reader
(its Go core reads them for ``wandb sync``), so the tests read them here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        body = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            position += BLOCK - position % BLOCK
            continue


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records = []
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def history_rows(records: list[wandb_internal_pb2.Record]) -> list[dict]:
    """The logged rows (``wandb.log`` calls) as ``{key: decoded JSON value}``."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def run_record(records: list[wandb_internal_pb2.Record]):
    """The run's own record (name, tags, project)."""
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")
