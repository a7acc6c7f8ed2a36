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

3. With ``--corpus-mb``, instead: ``prepare`` on synthetic ``.jsonl.zst``
   corpora of those sizes (uncompressed MB; excerpts of the standard library's
   pydoc text, deterministic): once training a BPE on a bounded sample
   (``bpe_sample_bytes``), then with the tokenizer given, 1 and 2 workers.
   Each run is a fresh process; its peak RSS comes from ``getrusage``:
   ``RUSAGE_SELF`` for the main process, ``RUSAGE_CHILDREN`` for the largest
   worker (pages shared with the main process at fork count in both).
   Flat peaks across sizes mean memory does not grow with the corpus.

    .venv/bin/python bench/data_throughput.py [--steps 20] [--work /tmp/jreg_bench_data]
    nice -n 19 .venv/bin/python bench/data_throughput.py --corpus-mb 25 100
    .venv/bin/python bench/data_throughput.py --corpus-mb 4096 --runs 2   # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _prepare_rates(work: Path) -> None:
    from jreg_tools.data.demo_corpus import write_demo_corpus
    from jreg_tools.data.prepare import PrepareOptions, prepare

    corpus = work / "corpus.jsonl"
    if not corpus.exists():
        write_demo_corpus(corpus)
    tokenizer = work / "tokenizer.json"
    if not tokenizer.exists():
        started = time.perf_counter()
        prepare(
            PrepareOptions(
                [str(corpus)], str(work / "trained"), vocab_size=8192, seq_len=128, overwrite=True
            )
        )
        print(f"prepare with BPE training (vocab 8192): {time.perf_counter() - started:.1f} s")
        (work / "trained" / "tokenizer.json").replace(tokenizer)
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        started = time.perf_counter()
        meta = prepare(
            PrepareOptions(
                [str(corpus)],
                str(work / f"shards_w{workers}"),
                tokenizer=str(tokenizer),
                seq_len=128,
                num_workers=workers,
                overwrite=True,
            )
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


SHARD_BYTES = 4 * 2**20


def write_corpus(folder: Path, megabytes: float, seed: int = 0) -> dict:
    """A deterministic pseudo-English corpus of ``megabytes`` (uncompressed), ``.jsonl.zst`` files.

    Documents of 300-6000 characters are spans of 10-60 words cut from the
    standard library's pydoc topics at random places, so a BPE has real words to
    learn. Files of ``SHARD_BYTES`` each, as corpora ship (and so that 2 workers
    have files to share). Returns ``files``, ``documents`` and ``bytes``.
    """
    import pydoc_data.topics

    import zstandard

    words = re.findall(r"\S+", "\n".join(pydoc_data.topics.topics.values()))
    generator = random.Random(seed)
    target = int(megabytes * 2**20)
    folder.mkdir(parents=True, exist_ok=True)
    written = documents = 0
    files = []
    compressor = zstandard.ZstdCompressor(level=3)
    while written < target:
        path = folder / f"part-{len(files):05d}.jsonl.zst"
        files.append(path)
        shard = 0
        with path.open("wb") as raw, compressor.stream_writer(raw) as out:
            while shard < SHARD_BYTES and written < target:
                length = generator.randint(300, 6000)
                pieces, size = [], 0
                while size < length:
                    start = generator.randrange(len(words) - 60)
                    span = " ".join(words[start : start + generator.randint(10, 60)])
                    pieces.append(span)
                    size += len(span) + 1
                line = json.dumps({"text": " ".join(pieces)}) + "\n"
                data = line.encode()
                out.write(data)
                shard += len(data)
                written += len(data)
                documents += 1
    return {"files": [str(f) for f in files], "documents": documents, "bytes": written}


def corpus_of_size(folder: Path, megabytes: float, seed: int = 0) -> dict:
    """The corpus of ``write_corpus(folder, megabytes, seed)``, written only if not there yet.

    A GB corpus takes minutes to generate; ``corpus.json`` in the folder records
    what was written, so a second bench run (other runs, same size) reuses it.
    """
    record = folder / "corpus.json"
    if record.exists():
        info = json.loads(record.read_text())
        if (
            info.get("megabytes") == megabytes
            and info.get("seed") == seed
            and all(Path(f).exists() for f in info["files"])
        ):
            return info
    info = {"megabytes": megabytes, "seed": seed, **write_corpus(folder, megabytes, seed)}
    record.write_text(json.dumps(info))
    return info


def prepare_once(settings: dict) -> dict:
    """Run ``prepare(**settings)`` here; tokens, seconds and peak RSS (MiB) of this process tree.

    ``rss_main_mib``: this process (``RUSAGE_SELF``); ``rss_worker_mib``: the
    largest finished child (``RUSAGE_CHILDREN``, i.e. the prepare workers), so
    call it in a fresh process for figures of one run alone.
    """
    from jreg_tools.data.prepare import PrepareOptions, prepare

    started = time.perf_counter()
    meta = prepare(PrepareOptions(**settings))
    seconds = time.perf_counter() - started
    kib = 1 if sys.platform != "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    main, workers = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {
        "tokens": sum(s["tokens"] for s in meta["splits"].values()),
        "seconds": seconds,
        # CPU seconds of the whole process (imports included) and of all workers: on a
        # shared machine, tokens per CPU second is the figure that does not depend on load.
        "cpu_main_s": main.ru_utime + main.ru_stime,
        "cpu_workers_s": workers.ru_utime + workers.ru_stime,
        "rss_main_mib": main.ru_maxrss / 1024 / kib,
        "rss_worker_mib": workers.ru_maxrss / 1024 / kib,
        "bpe_sample": meta["bpe_sample"],
    }


def _prepare_in_fresh_process(settings: dict) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--prepare-once",
        json.dumps(settings),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


BIG_RUNS = ("bpe", "1", "2")


def big_corpus_rates(
    work: Path,
    sizes_mb: list[float],
    bpe_sample_mb: float,
    vocab_size: int = 8192,
    runs_wanted: tuple[str, ...] = BIG_RUNS,
) -> list[dict]:
    """Per corpus size: a run training the BPE (2 workers), then tokenizer given: 1, 2 workers.

    ``runs_wanted`` picks among ``bpe``, ``1`` and ``2`` (e.g. only ``2`` at a
    size where the memory, not the speed-up, is the question); without ``bpe``
    the tokenizer a previous run trained in ``work`` is used.
    """
    rows = []
    tokenizer = work / "big_trained" / "tokenizer.json"
    if "bpe" not in runs_wanted and not tokenizer.exists():
        raise SystemExit(f"--runs without bpe needs {tokenizer}: run once with --runs bpe first")
    for megabytes in sizes_mb:
        corpus = work / f"corpus_{megabytes:g}mb"
        started = time.perf_counter()
        info = corpus_of_size(corpus, megabytes)
        print(
            f"corpus {megabytes:g} MB: {info['documents']:,} documents in {len(info['files'])} "
            f".jsonl.zst files, ready in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        base = {"inputs": str(corpus / "*.jsonl.zst"), "seq_len": 256, "overwrite": True}
        runs = {}
        if "bpe" in runs_wanted:
            runs["bpe"] = _prepare_in_fresh_process(
                {
                    **base,
                    "output_dir": str(work / "big_trained"),
                    "vocab_size": vocab_size,
                    "bpe_sample_bytes": int(bpe_sample_mb * 2**20),
                    "num_workers": 2,
                }
            )
        for workers in (1, 2):
            if str(workers) not in runs_wanted:
                continue
            runs[workers] = _prepare_in_fresh_process(
                {
                    **base,
                    "output_dir": str(work / "big_shards"),
                    "tokenizer": str(tokenizer),
                    "num_workers": workers,
                }
            )
        for name, run in runs.items():
            label = (
                "BPE trained, 2 workers" if name == "bpe" else f"tokenizer given, {name} worker(s)"
            )
            sample = run["bpe_sample"]
            taken = f", BPE sample {sample['characters'] / 2**20:.1f} MB" if sample else ""
            cpu = run["cpu_main_s"] + run["cpu_workers_s"]
            print(
                f"RESULT big corpus {megabytes:g} MB, {label}: {run['tokens']:,} tokens in "
                f"{run['seconds']:.0f} s = {run['tokens'] / run['seconds']:,.0f} tokens/s wall, "
                f"{run['tokens'] / cpu:,.0f} per CPU second (main {run['cpu_main_s']:.0f} s + "
                f"workers {run['cpu_workers_s']:.0f} s); "
                f"peak RSS main {run['rss_main_mib']:.0f} MiB, "
                f"largest worker {run['rss_worker_mib']:.0f} MiB{taken}",
                flush=True,
            )
            rows.append({"megabytes": megabytes, "run": str(name), **run})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and print one RESULT line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/jreg_bench_data"))
    parser.add_argument(
        "--corpus-mb",
        type=float,
        nargs="+",
        help="instead: prepare synthetic .jsonl.zst corpora of these sizes (uncompressed MB)",
    )
    parser.add_argument("--bpe-sample-mb", type=float, default=8.0)
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=BIG_RUNS,
        default=list(BIG_RUNS),
        help="with --corpus-mb: which runs per size (bpe = BPE trained; 1, 2 = workers)",
    )
    parser.add_argument("--prepare-once", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_once:
        print(json.dumps(prepare_once(json.loads(args.prepare_once))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.corpus_mb:
        big_corpus_rates(
            args.work, args.corpus_mb, args.bpe_sample_mb, runs_wanted=tuple(args.runs)
        )
        return
    _prepare_rates(args.work)
    cores = os.cpu_count() or 1
    _loader_vs_step(args.work / f"shards_w{cores}", args.steps)


if __name__ == "__main__":
    main()
