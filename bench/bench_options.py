"""Command-line options the benches share: the Llama shape they build, and how they time a step.

Imported by the bench scripts from this folder (``sys.path`` holds ``bench/``).
"""

from __future__ import annotations

import argparse
import time

import torch


def add_shape_options(parser: argparse.ArgumentParser, layers: int | list[int] = 8) -> None:
    """``--layers --hidden --intermediate --heads --vocab --batch --seq`` (a 256-wide model).

    ``layers`` is the default depth; a list makes ``--layers`` take several depths.
    """
    if isinstance(layers, list):
        parser.add_argument("--layers", type=int, nargs="+", default=layers)
    else:
        parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)


def llama_shape(args: argparse.Namespace, layers: int | None = None) -> dict:
    """The ``LlamaModelConfig`` fields the shape options name (``model.llama`` of a config).

    ``layers`` replaces ``args.layers`` (for a bench that loops over depths);
    ``num_kv_heads`` is ``args.kv_heads`` where a bench has that option, else ``args.heads``.
    """
    return {
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_layers": args.layers if layers is None else layers,
        "num_heads": args.heads,
        "num_kv_heads": getattr(args, "kv_heads", None) or args.heads,
        "max_position_embeddings": args.seq,
    }


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """``--device --threads --clock``: where a step runs and which clock times it."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (time.process_time), steadier on a shared machine",
    )


def step_clock(args: argparse.Namespace):
    """``time.process_time`` for ``--clock cpu``, else ``time.perf_counter`` (wall time)."""
    return time.process_time if args.clock == "cpu" else time.perf_counter
