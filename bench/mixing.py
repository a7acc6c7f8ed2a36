"""Shuffled packing vs file order: the train/validation gap and the loss curve's smoothness.

    nice -n 19 .venv/bin/python bench/mixing.py --corpus demo --steps 480 --out mixing_demo.json

One corpus is prepared three times with the same tokenizer (one byte-level BPE, trained
once, or ``--tokenizer``) and the same validation documents (the hold-out depends
only on the seed and the document count):

* ``file order``: ``prepare --shuffle false --chunk_blocks 1024``, the behaviour
  before documents were shuffled: the training documents are packed in file
  order into chunks of 1024 blocks, so a small corpus makes a few chunks, each
  a stretch of neighbouring files, and litdata serves every batch from one chunk;
* ``documents shuffled``: documents shuffled before packing, ``--chunk_blocks auto``
  (about 64 chunks for a small corpus), but blocks written in packing order
  (``--shuffle_block_buffer 1``): a document longer than a chunk still fills chunks;
* ``shuffled``: ``prepare``'s defaults (documents, then whole blocks shuffled).

Then the same Llama (the shape of ``configs/study/base_cpu.yaml``, the demo's, unless
the flags change it; lam = 0), from the same seed, with the same optimizer and
constant learning rate, is trained for ``--steps`` on each through Lightning's
``Trainer`` with the project's ``JregLightningModule`` and ``TokenShardDataModule``
(shuffled chunks, the fit default), one variant after the other. It validates
``--val-points`` times, evenly spaced, the last at the final step, on the first
``--val-batches`` batches of the validation split; the script checks that these
are the same tokens for every variant.

Figures per variant: the training CE of every step (lam = 0, so the loss is the
CE); its mean over the last 10% of steps; the validation loss at each point;
the gap (final validation loss minus that train CE); the smoothness of the train
CE after the first 10% of steps (the common initial descent left out): the std
and the largest absolute value of its step-to-step differences, and the largest
change between the means of consecutive ``--window``-step windows (a chunk of
one kind of text shows as a shift of the mean, which single steps' noise hides).
A JSON of all of it, the per-step CE included, goes to ``--out``.

Corpora (``--corpus``): ``demo``: the docstring corpus (``write_demo_corpus(kind=
"docstrings")``: module, class and function docstrings and the pydoc topics,
~570 documents, ~0.5M tokens); ``stdlib``: the standard library's source
(``kind="stdlib_source"``, the corpus of ``cli.py demo`` and the CPU study, ~2.8M
tokens); or any ``prepare`` inputs (a path or glob of .jsonl with a ``text`` field).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_CONFIG = ROOT / "configs" / "study" / "base_cpu.yaml"
CORPUS_KINDS = {"demo": "docstrings", "stdlib": "stdlib_source"}
# name -> prepare arguments; "file order" is prepare's behaviour before shuffling.
VARIANTS = {
    "file order": {"shuffle": False, "chunk_blocks": 1024},
    "documents shuffled": {"shuffle": True, "chunk_blocks": "auto", "shuffle_block_buffer": 1},
    "shuffled": {"shuffle": True, "chunk_blocks": "auto"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        default="demo",
        help="demo (docstrings), stdlib (the standard library's source) or prepare inputs",
    )
    parser.add_argument(
        "--max-documents", type=int, help="keep the first N documents (demo/stdlib; checks)"
    )
    parser.add_argument("--tokenizer", help="a tokenizer.json to reuse instead of training a BPE")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary to train")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="as configs/study/demo")
    parser.add_argument("--prepare-workers", type=int, default=1, help="prepare's num_workers")
    parser.add_argument("--layers", type=int, help="blocks (default: base_cpu.yaml's 12)")
    parser.add_argument("--hidden", type=int, help="width (default: base_cpu.yaml's 256)")
    parser.add_argument("--intermediate", type=int, help="FFN width (default: scaled with width)")
    parser.add_argument("--steps", type=int, default=480, help="optimizer steps per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: base_cpu.yaml's)")
    parser.add_argument("--val-points", type=int, default=4, help="validations, evenly spaced")
    parser.add_argument("--val-batches", type=int, default=32, help="batches per validation")
    parser.add_argument("--window", type=int, default=10, help="steps per window of the CE mean")
    parser.add_argument("--seed", type=int, default=1, help="seed_everything (model init)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--work-dir", help="corpus and shards go here (kept); default: temporary")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error(f"--steps {args.steps}: pass at least 10 (10% of them are left out)")
    if args.val_points < 1 or args.steps % args.val_points:
        parser.error(
            f"--steps {args.steps} is not a multiple of --val-points {args.val_points}; "
            "pick steps divisible by val-points (the last validation is at the final step)"
        )
    return args


def write_corpus(args: argparse.Namespace, work: Path) -> list[str]:
    """The ``prepare`` inputs: the named corpus written into ``work``, or ``--corpus`` as given."""
    from jreg_tools.data.demo_corpus import write_demo_corpus

    kind = CORPUS_KINDS.get(args.corpus)
    if kind is None:
        return [args.corpus]
    path = work / f"{kind}.jsonl"
    written = write_demo_corpus(path, max_documents=args.max_documents, kind=kind)
    print(
        f"mixing: {args.corpus} corpus ({kind}): {written['documents']} documents, "
        f"{written['characters']:,} characters -> {path}"
    )
    return [str(path)]


def prepare_variants(inputs: list[str], args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """``meta.json`` of each variant's shards in ``work/<name>``; one tokenizer for all."""
    from jreg_tools.data.prepare import PrepareOptions, prepare

    metas: dict[str, dict] = {}
    tokenizer = args.tokenizer
    for name, options in VARIANTS.items():
        print(f"mixing: prepare, {name}: {options}")
        meta = prepare(
            PrepareOptions(
                inputs=inputs,
                output_dir=str(work / name.replace(" ", "_")),
                tokenizer=tokenizer,
                vocab_size=args.vocab,
                val_fraction=args.val_fraction,
                seq_len=args.seq_len,
                num_workers=args.prepare_workers,
                overwrite=True,
                **options,
            )
        )
        meta["data_dir"] = str(work / name.replace(" ", "_"))
        metas[name] = meta
        # The first variant's tokenizer (trained or given) serves the others.
        tokenizer = tokenizer or str(work / name.replace(" ", "_") / meta["tokenizer"])
    first, *others = metas.values()
    for meta in others:
        for key in ("vocab_size", "eos_id"):
            if meta[key] != first[key]:
                raise RuntimeError(
                    f"mixing: the variants' {key} differ: {meta[key]} vs {first[key]}"
                )
        if meta["splits"]["val"]["documents"] != first["splits"]["val"]["documents"]:
            raise RuntimeError("mixing: the variants hold out different validation documents")
    return metas


def validation_fingerprint(data_dir: str, args: argparse.Namespace) -> str:
    """sha256 of the validation blocks one validation reads (``--val-batches`` batches)."""
    import torch

    from jreg_lightning.data.datamodule import TokenShardDataModule

    data = TokenShardDataModule(data_dir, seq_len=args.seq_len, batch_size=args.batch)
    digest = hashlib.sha256()
    batches = 0
    for batch in data.val_dataloader():
        if batches == args.val_batches:
            break
        digest.update(batch.to(torch.int32).numpy().tobytes())
        batches += 1
    if batches == 0:
        raise ValueError(
            f"mixing: {data_dir}/val holds less than one batch of {args.batch} x "
            f"{args.seq_len + 1} tokens; raise --val-fraction or lower --batch / --seq-len"
        )
    return digest.hexdigest()


def model_settings(args: argparse.Namespace, vocab: int) -> tuple[dict, dict, dict]:
    """(llama, optim, data) keyword dicts: ``base_cpu.yaml``'s, with the flags applied."""
    import yaml

    base = yaml.safe_load(BASE_CONFIG.read_text())
    llama = dict(base["model"]["llama"])
    base_hidden = llama["hidden_size"]
    if args.layers:
        llama["num_layers"] = args.layers
    if args.hidden:
        llama["hidden_size"] = args.hidden
    llama["intermediate_size"] = args.intermediate or round(
        llama["intermediate_size"] * llama["hidden_size"] / base_hidden
    )
    llama["vocab_size"] = vocab  # the shards' tokenizer's
    llama["max_position_embeddings"] = max(llama["max_position_embeddings"], args.seq_len)
    optim = dict(base["model"]["optim"])
    if args.lr:
        optim["lr"] = args.lr
        optim["min_lr"] = min(optim["min_lr"], args.lr)
    optim["warmup_steps"] = min(optim["warmup_steps"], args.steps // 10)
    data = {"seq_len": args.seq_len, "batch_size": args.batch, "seed": base["data"]["seed"]}
    return llama, optim, data


def train_variant(data_dir: str, args: argparse.Namespace, settings: tuple) -> dict:
    """Train from ``args.seed`` on ``data_dir``: per-step train CE, validations, seconds."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from jreg_lightning.data.datamodule import TokenShardDataModule
    from jreg_lightning.model_config import LlamaModelConfig
    from jreg_lightning.module import JregLightningModule
    from jreg_lightning.optim import OptimConfig
    from jreg_lightning.regularizer import JregConfig

    llama, optim, data = settings
    train_ce: list[float] = []
    validations: list[dict] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            train_ce.append(round(float(outputs["loss"]), 5))

        def on_validation_end(self, trainer, pl_module) -> None:
            loss = pl_module.last_validation["loss"]
            validations.append({"step": trainer.global_step, "loss": loss})

    L.seed_everything(args.seed, verbose=False)
    module = JregLightningModule(
        llama=LlamaModelConfig(**llama), jreg=JregConfig(lam=0.0), optim=OptimConfig(**optim)
    )
    datamodule = TokenShardDataModule(data_dir, num_workers=0, shuffle=True, **data)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=args.steps,
        gradient_clip_val=1.0,
        val_check_interval=args.steps // args.val_points,
        check_val_every_n_epoch=None,
        limit_val_batches=args.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=args.steps,  # the module's profile metrics: rarely, they are not used
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    if len(train_ce) != args.steps or validations[-1]["step"] != args.steps:
        raise RuntimeError(
            f"mixing: recorded {len(train_ce)} steps and a last validation at step "
            f"{validations[-1]['step'] if validations else None}, expected {args.steps}"
        )
    return {
        "train_ce": train_ce,
        "validations": validations,
        "batches_per_epoch": datamodule.accounting["train"]["batches_per_epoch"],
        "seconds": round(seconds, 1),
    }


def curve_figures(train_ce: list[float], validations: list[dict], window: int) -> dict:
    """Final train CE, gap and smoothness of one run (see the module docstring)."""
    ce = np.asarray(train_ce)
    tail = max(1, len(ce) // 10)
    after_descent = ce[len(ce) // 10 :]
    steps = np.diff(after_descent)
    windows = len(after_descent) // window
    means = after_descent[: windows * window].reshape(windows, window).mean(axis=1)
    final_ce = float(ce[-tail:].mean())
    return {
        "train_ce_final": final_ce,
        "val_final": validations[-1]["loss"],
        "gap": validations[-1]["loss"] - final_ce,
        "step_diff_std": float(steps.std()),
        "step_diff_max": float(np.abs(steps).max()),
        "window_jump_max": float(np.abs(np.diff(means)).max()) if windows > 1 else None,
        "smoothness_from_step": len(ce) // 10 + 1,
    }


def format_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """One row per figure, one column per variant."""
    names = list(results)
    first = results[names[0]]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell) -> None:
        rows.append((label, [cell(results[name]) for name in names]))

    row(
        "prepare",
        lambda r: (
            f"shuffle={r['shuffle']}, chunk_blocks={r['chunk_blocks_arg']}, "
            f"block buffer={r['block_buffer']}"
        ),
    )
    row("train chunks x blocks per chunk", lambda r: f"{r['train_chunks']} x {r['chunk_blocks']}")
    row("val chunks", lambda r: str(r["val_chunks"]))
    row(
        "train batches per epoch (epochs run)",
        lambda r: f"{r['batches_per_epoch']} ({args.steps / r['batches_per_epoch']:.2f})",
    )
    tail = max(1, args.steps // 10)
    row(f"train CE, mean of the last {tail} steps", lambda r: f"{r['train_ce_final']:.4f}")
    for index, point in enumerate(first["validations"]):
        row(
            f"val loss at step {point['step']}",
            lambda r, i=index: f"{r['validations'][i]['loss']:.4f}",
        )
    row("gap: final val loss - train CE", lambda r: f"{r['gap']:+.4f}")
    since = first["smoothness_from_step"]
    row(f"train CE step-to-step diff: std (steps {since}+)", lambda r: f"{r['step_diff_std']:.4f}")
    row(
        f"train CE step-to-step diff: max |.| (steps {since}+)",
        lambda r: f"{r['step_diff_max']:.4f}",
    )
    row(
        f"largest change of {args.window}-step mean (steps {since}+)",
        lambda r: "n/a" if r["window_jump_max"] is None else f"{r['window_jump_max']:.4f}",
    )
    row("training wall s (validation included)", lambda r: f"{r['seconds']:.0f}")
    width = max(len(label) for label, _ in rows)
    cells = [max(len(name), *(len(c[i]) for _, c in rows)) for i, name in enumerate(names)]
    lines = ["  ".join([" " * width, *(n.rjust(w) for n, w in zip(names, cells))])]
    for label, values in rows:
        lines.append("  ".join([label.ljust(width), *(v.rjust(w) for v, w in zip(values, cells))]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from jreg_lightning.console import quiet_console

    quiet_console()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="mixing_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = write_corpus(args, work)
        metas = prepare_variants(inputs, args, work)
        fingerprints = {
            name: validation_fingerprint(m["data_dir"], args) for name, m in metas.items()
        }
        same_validation = len(set(fingerprints.values())) == 1
        if not same_validation:
            raise RuntimeError(
                f"mixing: the variants' validation batches differ ({fingerprints}); "
                "the comparison would not be on the same validation tokens"
            )
        vocab = next(iter(metas.values()))["vocab_size"]
        settings = model_settings(args, vocab)
        results: dict[str, dict] = {}
        for name, meta in metas.items():
            print(f"mixing: training on {name} ({args.steps} steps)", flush=True)
            run = train_variant(meta["data_dir"], args, settings)
            results[name] = {
                "shuffle": VARIANTS[name]["shuffle"],
                "chunk_blocks_arg": VARIANTS[name]["chunk_blocks"],
                "block_buffer": meta.get("shuffle_block_buffer"),
                "chunk_blocks": meta["chunk_blocks"],
                "train_chunks": meta["splits"]["train"]["chunks"],
                "val_chunks": meta["splits"]["val"]["chunks"],
                "train_tokens": meta["splits"]["train"]["tokens"],
                **run,
                **curve_figures(run["train_ce"], run["validations"], args.window),
            }
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    llama, optim, data = settings
    first = next(iter(metas.values()))
    print()
    print(
        f"mixing: corpus {args.corpus}: {first['splits']['train']['documents']} train / "
        f"{first['splits']['val']['documents']} val documents, "
        f"{first['splits']['train']['tokens']:,} / {first['splits']['val']['tokens']:,} tokens; "
        f"{llama['num_layers']} blocks d={llama['hidden_size']}, batch {args.batch} x "
        f"{args.seq_len}, lr {optim['lr']} ({optim['schedule']}), seed {args.seed}; "
        f"validation: {args.val_batches} batches, the same tokens for every variant"
    )
    print(format_table(results, args))
    figures = {
        "command": " ".join([".venv/bin/python", "bench/mixing.py", *(argv or sys.argv[1:])]),
        "args": vars(args),
        "llama": llama,
        "optim": optim,
        "data": data,
        "corpus": {
            "train_documents": first["splits"]["train"]["documents"],
            "val_documents": first["splits"]["val"]["documents"],
            "train_tokens": first["splits"]["train"]["tokens"],
            "val_tokens": first["splits"]["val"]["tokens"],
            "vocab_size": first["vocab_size"],
        },
        "validation_sha256": next(iter(fingerprints.values())),
        "variants": results,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"mixing: figures -> {args.out}")
    print(f"mixing: {figures['seconds']:.0f} s in all")
    return figures


if __name__ == "__main__":
    main()
