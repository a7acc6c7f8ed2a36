"""Tokens/s, FLOPs/s and MFU of a real ``cli.py fit`` run, as its throughput monitor logs them.

    .venv/bin/python bench/fit_throughput.py --config configs/tiny_jreg.yaml
    .venv/bin/python bench/fit_throughput.py --config configs/llama_1b_jreg.yaml --gpu --batch 4 \
        --set model.parallel.compile=false

The config is parsed as ``cli.py fit`` parses it (includes, ``--set`` overrides as
``--key=value`` flags). Writes random-token shards of its vocabulary and sequence
length into a temporary folder (or ``--data``), runs ``--steps`` optimizer steps
on ONE device (``strategy: auto``, so no FSDP2 even for the GPU configs; give
``--set trainer.strategy=...`` to time another) with checkpointing and validation
off, and prints the last window of ``jreg_lightning.throughput.TokenThroughputMonitor``:
tokens/s, FLOPs/s (matrix products, from ``measure_flops`` on a meta copy), MFU
against the device's peak (Lightning's table of GPUs, or ``--peak-tflops``) and,
on a GPU, the peak memory allocated.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _document(index: int, vocab: int, length: int):
    import numpy as np
    import torch

    rng = np.random.default_rng(index)
    yield torch.tensor(rng.integers(0, vocab, size=length), dtype=torch.int32)


def write_shards(out_dir: Path, vocab: int, seq: int, sequences: int) -> None:
    """Random-token litdata shards in ``out_dir/{train,val}``, whole blocks of ``seq + 1``."""
    from litdata import TokensLoader, optimize

    block = seq + 1
    for split, count in (("train", sequences), ("val", 4)):
        optimize(
            fn=partial(_document, vocab=vocab, length=block * 4),
            inputs=list(range(count // 4 + 1)),
            output_dir=str(out_dir / split),
            chunk_size=block * 16,
            item_loader=TokensLoader(),
            num_workers=1,
        )


def timed_trainer(
    out_dir: Path, steps: int, log_every: int, window_size: int, peak_flops: float | None = None
) -> dict:
    """``trainer`` overrides of a timed fit: CSV logs and the throughput monitor, nothing else.

    No validation, checkpoints or progress bar, so the logged training time is the steps'.
    """
    return {
        "max_steps": steps,
        "log_every_n_steps": log_every,
        "val_check_interval": 10**6,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "default_root_dir": str(out_dir),
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out_dir), "name": "logs"},
        },
        "callbacks": [
            {
                "class_path": "jreg_lightning.throughput.TokenThroughputMonitor",
                "init_args": {"window_size": window_size, "peak_flops": peak_flops},
            }
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny_jreg.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--batch", type=int, help="override data.batch_size")
    parser.add_argument("--seq", type=int, help="override data.seq_len")
    parser.add_argument("--gpu", action="store_true", help="one GPU in bf16-mixed")
    parser.add_argument("--data", help="shards folder (written there if missing)")
    parser.add_argument(
        "--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: Lightning's)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="more cli.py fit overrides, KEY=VALUE, e.g. model.parallel.compile=false",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from jreg_tools.cli import main as cli_main
    from jreg_tools.plan import read_run_config

    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"fit_throughput: --set {item!r} is not KEY=VALUE")
    flags = [f"--{item}" for item in args.set]
    flags += [f"--data.seq_len={args.seq}"] if args.seq else []
    flags += [f"--data.batch_size={args.batch}"] if args.batch else []
    config = read_run_config(args.config, flags)
    vocab, seq, batch = config.model.llama.vocab_size, config.data.seq_len, config.data.batch_size
    work = Path(tempfile.mkdtemp(prefix="fit_throughput_"))
    data = Path(args.data) if args.data else work / "shards"
    if not (data / "train").exists():
        write_shards(data, vocab, seq, batch * (args.steps + 4))
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else None
    override = {
        "trainer": timed_trainer(work, args.steps, args.log_every, 3, peak_flops),
        "data": {"data_dir": str(data), "num_workers": 0},
    }
    # One device: the GPU configs' FSDP2 strategy gives way to Lightning's single device.
    override["trainer"].update(devices=1, strategy="auto")
    if args.gpu:
        override["trainer"].update(accelerator="gpu", precision="bf16-mixed")
    else:
        override["trainer"].update(accelerator="cpu")
    (work / "override.yaml").write_text(yaml.safe_dump(override))
    cli_main(["fit", "--config", args.config, "--config", str(work / "override.yaml"), *flags])
    metrics = next(work.glob("logs/version_*/metrics.csv"))
    last = {}
    with open(metrics) as handle:
        for row in csv.DictReader(handle):
            last.update({k: v for k, v in row.items() if v})
    tokens = float(last.get("train/device/tokens_per_sec", "nan"))
    flops = float(last.get("train/device/flops_per_sec", "nan"))
    mfu = last.get("train/device/mfu")
    memory = ""
    if args.gpu:
        import torch

        memory = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(
        f"fit_throughput: {args.config} batch={batch}x{seq} gpu={args.gpu} {' '.join(args.set)}: "
        f"{tokens:.0f} tokens/s, {flops / 1e12:.3f} TFLOP/s"
        + (f", MFU {float(mfu):.3f}" if mfu else ", MFU n/a (no known peak)")
        + memory
    )


if __name__ == "__main__":
    main()
