"""Data throughput: ``prepare`` tokens/s, and the loader against the training step's consumption.

One run, side by side:
1. ``prepare`` on the demo corpus (stdlib docstrings + pydoc topics), with 1
   worker and with all workers: tokens written per second (the BPE training
   is timed separately and left out of the rate).
2. The tiny config's loader (``TokenShardDataModule``, batch 8 x (seq_len + 1))
   against the tiny model's training step (forward, CE + JREG, backward,
   AdamW) on the same batch shape, alternating loader batches and steps:
   tokens per second of each and their ratio. The loader must stay far ahead
   of the step (ratio >> 1), or training waits on data.

    .venv/bin/python bench/data_throughput.py [--steps 20] [--work /tmp/jreg_bench_data]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _prepare_rates(work: Path) -> None:
    from jreg_lightning.data.demo_corpus import write_demo_corpus
    from jreg_lightning.data.prepare import prepare

    corpus = work / "corpus.jsonl"
    if not corpus.exists():
        write_demo_corpus(corpus)
    tokenizer = work / "tokenizer.json"
    if not tokenizer.exists():
        started = time.perf_counter()
        prepare([str(corpus)], str(work / "trained"), vocab_size=8192, seq_len=128, overwrite=True)
        print(f"prepare with BPE training (vocab 8192): {time.perf_counter() - started:.1f} s")
        (work / "trained" / "tokenizer.json").replace(tokenizer)
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        started = time.perf_counter()
        meta = prepare(
            [str(corpus)],
            str(work / f"shards_w{workers}"),
            tokenizer=str(tokenizer),
            seq_len=128,
            num_workers=workers,
            overwrite=True,
        )
        seconds = time.perf_counter() - started
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        print(
            f"RESULT prepare workers={workers}: {tokens:,} tokens in {seconds:.1f} s "
            f"= {tokens / seconds:,.0f} tokens/s (tokenizer given, no training)"
        )


def _loader_vs_step(data_dir: Path, steps: int) -> None:
    import torch
    import yaml

    from jreg_lightning.data.datamodule import TokenShardDataModule
    from jreg_lightning.model_config import LlamaModelConfig
    from jreg_lightning.module import JregLightningModule
    from jreg_lightning.regularizer import JregConfig

    settings = yaml.safe_load((REPO / "configs" / "tiny_jreg.yaml").read_text())
    data_cfg = settings["data"]
    data = TokenShardDataModule(
        data_dir=data_dir, seq_len=data_cfg["seq_len"], batch_size=data_cfg["batch_size"]
    )
    module = JregLightningModule(
        LlamaModelConfig(**settings["model"]["llama"]), JregConfig(**settings["model"]["jreg"])
    )
    module.configure_model()
    module._is_log_step = lambda: False  # a plain step, as between log steps
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    loader = iter(data.train_dataloader())
    tokens = data_cfg["batch_size"] * (data_cfg["seq_len"] + 1)

    load_times, step_times = [], []
    for _ in range(steps + 2):
        started = time.perf_counter()
        batch = data.on_before_batch_transfer(next(loader), 0)
        load_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - started)
    load = statistics.median(load_times[2:])  # the first batches open the chunk files
    step = statistics.median(step_times[2:])
    print(
        f"RESULT loader: {tokens / load:,.0f} tokens/s ({1000 * load:.2f} ms per batch of "
        f"{tokens} tokens); training step: {tokens / step:,.0f} tokens/s ({step:.2f} s); "
        f"loader / step = {step / load:,.0f}x (median of {steps}, alternating)"
    )


def main() -> None:
    """Run both measurements and print one RESULT line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/jreg_bench_data"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    _prepare_rates(args.work)
    cores = os.cpu_count() or 1
    _loader_vs_step(args.work / f"shards_w{cores}", args.steps)


if __name__ == "__main__":
    main()
