"""Tokens/s of ``litgpt pretrain`` vs ours, same Llama shape, same tokens, same batch.

litgpt is not a dependency of this package. Install it once into a separate
venv that reuses the main venv's torch and lightning (nothing in .venv
changes; litgpt's own pins of huggingface-hub and jsonargparse stay in it):

    bash bench/setup_litgpt.sh            # makes /tmp/litgpt-venv
    .venv/bin/python bench/vs_litgpt.py   # --litgpt-python /tmp/litgpt-venv/bin/python

Both sides are the real entry points, run as subprocesses on one set of
litdata token shards (random tokens, written once by this script):

- litgpt: ``litgpt pretrain --config <yaml>`` with a config-defined model
  (``model_config``: RMSNorm, SwiGLU ``LLaMAMLP``, full rotary, no biases,
  tied embeddings) and ``litgpt.data.LitData`` on the shards. litgpt's
  pretraining always wraps the model in ``torch.compile``.
- ours: ``cli.py fit --config configs/tiny_jreg.yaml`` (CE + JREG) and the
  same with ``configs/tiny_baseline.yaml`` (plain CE), plus, with
  ``--compile``, both with ``model.parallel.compile: true`` (one device: the
  whole training loss, forward + CE + JREG, compiled as one graph).

Each run logs its elapsed training time every ``--log-every`` steps (litgpt
through its ThroughputMonitor, ours through ``TokenThroughputMonitor``); a
run's step time is the median over its log intervals of elapsed time / steps,
skipping the first interval (start-up and compilation). The runs alternate
in rounds (litgpt, then ours in each variant; then reversed), and tokens/s is
``batch * seq_len`` over the median step time of each side.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_options import add_shape_options, llama_shape  # noqa: E402
from fit_throughput import timed_trainer, write_shards  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litgpt-python", default="/tmp/litgpt-venv/bin/python")
    add_shape_options(parser)
    parser.add_argument("--steps", type=int, default=26, help="optimizer steps per run")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also run ours compiled")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--keep", help="keep the runs' files in this folder")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of every run (default: torch's own choice)"
    )
    return parser.parse_args(argv)


def litgpt_config(args, data_dir: Path, out_dir: Path) -> dict:
    """A ``litgpt pretrain`` config of the same shape, optimizer and schedule as ours."""
    return {
        "model_name": "jreg-bench",
        "model_config": {
            "name": "jreg-bench",
            "block_size": args.seq,
            "vocab_size": args.vocab,
            "padded_vocab_size": args.vocab,
            "n_layer": args.layers,
            "n_head": args.heads,
            "n_embd": args.hidden,
            "n_query_groups": args.heads,
            "rotary_percentage": 1.0,
            "parallel_residual": False,
            "bias": False,
            "norm_class_name": "RMSNorm",
            "norm_eps": 1e-5,
            "mlp_class_name": "LLaMAMLP",
            "intermediate_size": args.intermediate,
            "rope_base": 10000,
        },
        "out_dir": str(out_dir),
        "precision": "32-true" if args.device == "cpu" else "bf16-mixed",
        "data": {
            "class_path": "litgpt.data.LitData",
            "init_args": {
                "data_path": str(data_dir),
                "split_names": ["train", "val"],
                "num_workers": 0,
            },
        },
        "train": {
            "save_interval": None,
            "log_interval": args.log_every,
            "global_batch_size": args.batch,
            "micro_batch_size": args.batch,
            "lr_warmup_steps": 3,
            "max_tokens": args.steps * args.batch * args.seq,
            "tie_embeddings": True,
            "max_norm": 1.0,
            "min_lr": 3e-4,
        },
        "eval": {
            "interval": 100000,
            "max_iters": 2,
            "initial_validation": False,
            "final_validation": False,
        },
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {"lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        },
        "devices": 1,
        "logger_name": "csv",
        "seed": 1337,
    }


def ours_override(args, data_dir: Path, out_dir: Path, compile_loss: bool) -> dict:
    """Overrides of the tiny configs: shape, data, steps, logging, no checkpoints or validation."""
    override = {
        "trainer": {
            "accelerator": args.device,
            "precision": "32-true" if args.device == "cpu" else "bf16-mixed",
            **timed_trainer(out_dir, args.steps, args.log_every, window_size=2),
        },
        "model": {
            "llama": {**llama_shape(args), "tie_word_embeddings": True},
            "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3},
        },
        "data": {"data_dir": str(data_dir), "seq_len": args.seq, "batch_size": args.batch},
    }
    if compile_loss:
        override["model"]["parallel"] = {"compile": True, "compile_scope": "loss"}
    return override


def step_times(metrics_csv: Path, time_key: str, steps_key: str) -> list[float]:
    """Seconds per step over each log interval of a run, the first interval skipped."""
    points = []
    with open(metrics_csv) as handle:
        for row in csv.DictReader(handle):
            if row.get(time_key) and row.get(steps_key):
                points.append((float(row[steps_key]), float(row[time_key])))
    points = sorted(set(points))
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(points)]
    return per_step[1:]


def run(command: list[str], log: Path, env: dict) -> None:
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(command)}\n{tail}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.litgpt_python).exists():
        raise SystemExit(
            f"--litgpt-python {args.litgpt_python} not found; "
            "run `bash bench/setup_litgpt.sh` first"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vs_litgpt_"))
    work.mkdir(parents=True, exist_ok=True)
    sequences = args.batch * (args.steps + 8)
    # Named by their shape, so that a --keep folder reused with other options gets new ones.
    data_dir = work / f"shards_vocab{args.vocab}_seq{args.seq}_n{sequences}"
    if not (data_dir / "val" / "index.json").exists():
        write_shards(data_dir, args.vocab, args.seq, sequences)

    sides = {
        "litgpt pretrain (torch.compile)": None,
        "ours, CE + JREG (tiny_jreg)": ("configs/tiny_jreg.yaml", False),
        "ours, CE only (tiny_baseline)": ("configs/tiny_baseline.yaml", False),
    }
    if args.compile:
        sides["ours, CE + JREG, compiled"] = ("configs/tiny_jreg.yaml", True)
        sides["ours, CE only, compiled"] = ("configs/tiny_baseline.yaml", True)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    print(
        f"# vs_litgpt: device={args.device} layers={args.layers} d={args.hidden} "
        f"ffn={args.intermediate} heads={args.heads} vocab={args.vocab} "
        f"batch={args.batch}x{args.seq} steps/run={args.steps} log every {args.log_every} "
        f"rounds={args.rounds} threads={args.threads or 'default'} work={work}",
        flush=True,
    )
    for index in range(args.rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            out_dir = work / f"round{index}_{names.index(name)}"
            shutil.rmtree(out_dir, ignore_errors=True)  # a reused --keep folder: no stale logs
            out_dir.mkdir(parents=True)
            started = time.perf_counter()
            if sides[name] is None:
                config = out_dir / "litgpt.yaml"
                config.write_text(yaml.safe_dump(litgpt_config(args, data_dir, out_dir)))
                command = [args.litgpt_python, "-m", "litgpt", "pretrain", "--config", str(config)]
                run(command, out_dir / "stdout.txt", env)
                metrics = next(out_dir.glob("logs/csv/version_*/metrics.csv"))
                times[name] += step_times(metrics, "time", "iter")
            else:
                base, compile_loss = sides[name]
                override = out_dir / "override.yaml"
                override.write_text(
                    yaml.safe_dump(ours_override(args, data_dir, out_dir, compile_loss))
                )
                command = [
                    sys.executable,
                    "cli.py",
                    "fit",
                    "--config",
                    base,
                    "--config",
                    str(override),
                ]
                run(command, out_dir / "stdout.txt", env)
                metrics = next(out_dir.glob("logs/version_*/metrics.csv"))
                times[name] += step_times(metrics, "train/time", "train/batches")
            print(f"  round {index}: {name}: {time.perf_counter() - started:.0f} s", flush=True)

    tokens = args.batch * args.seq
    reference = statistics.median(times[names[0]])
    print("| run | intervals | median step ms | tokens/s | vs litgpt |")
    print("|---|---|---|---|---|")
    for name in names:
        median = statistics.median(times[name])
        print(
            f"| {name} | {len(times[name])} | {median * 1e3:.1f} | {tokens / median:.0f} "
            f"| {reference / median:.3f} |"
        )


if __name__ == "__main__":
    main()
