"""Tokens/s the training loader delivers from object storage vs local disk, side by side.

    .venv/bin/python bench/storage_throughput.py --sequences 4096 --rounds 3

Writes random-token shards (``--vocab``, ``--seq``) to a local folder and uploads the
same folder to a local S3-compatible server (``moto_server`` over TLS, as the tests
start it, so the numbers measure litdata's S3 path on loopback, not a network). Then,
round by round and alternating, reads ``--batches`` batches of the training split
through the project's own loader (``TokenShardDataModule.train_dataloader``) from the
folder and from ``s3://``, with 1 and 2 loader workers; every S3 read starts from an
empty cache, so each chunk is downloaded. Prints the median tokens/s of each variant
and the S3 / disk ratio; compare them with what a training step consumes
(``bench/README.md``: tokens/s per device of a fit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUCKET = "bench-shards"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--sequences", type=int, default=2048, help="training sequences written")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100, help="batches read per variant")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def _read(data_dir: str, cache: str | None, args: argparse.Namespace, workers: int) -> float:
    """Tokens/s of ``args.batches`` batches of the project's training loader."""
    from jreg_lightning.data.datamodule import TokenShardDataModule

    module = TokenShardDataModule(
        data_dir, seq_len=args.seq, batch_size=args.batch, num_workers=workers, cache_dir=cache
    )
    loader = module.train_dataloader()
    started = time.perf_counter()
    seen = 0
    for index, batch in enumerate(loader):
        seen += batch.numel()
        if index + 1 == args.batches:
            break
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    """Write, upload, read side by side; print the medians and the S3 / disk ratios."""
    args = parse_args(argv)
    from fit_throughput import write_shards

    from jreg_lightning.data.storage import upload_folder
    from tests.s3_server import start_s3_server

    work = Path(tempfile.mkdtemp(prefix="storage_throughput_"))
    server = start_s3_server(work / "s3")
    try:
        os.environ.update(server.environment())
        server.create_bucket(BUCKET)
        local = work / "shards"
        write_shards(local, args.vocab, args.seq, args.sequences)
        url = f"s3://{BUCKET}/shards"
        upload_folder(local, url, "bench")
        rates: dict[str, list[float]] = {}
        for round_index in range(args.rounds):
            for workers in args.workers:
                variants = [("disk", str(local)), ("s3", url)]
                for name, source in variants if round_index % 2 == 0 else variants[::-1]:
                    cache = tempfile.mkdtemp(dir=work) if name == "s3" else None
                    key = f"{name}, {workers} worker(s)"
                    rates.setdefault(key, []).append(_read(source, cache, args, workers))
    finally:
        server.stop()
    print(
        f"storage_throughput: {args.batches} batches of {args.batch} x {args.seq + 1} tokens, "
        f"{args.rounds} rounds, medians"
    )
    print("| variant | tokens/s |")
    print("| --- | --- |")
    for key, values in rates.items():
        print(f"| {key} | {statistics.median(values):,.0f} |")
    for workers in args.workers:
        s3 = statistics.median(rates[f"s3, {workers} worker(s)"])
        disk = statistics.median(rates[f"disk, {workers} worker(s)"])
        print(f"storage_throughput: {workers} worker(s): s3 / disk {s3 / disk:.3f}")


if __name__ == "__main__":
    main()
