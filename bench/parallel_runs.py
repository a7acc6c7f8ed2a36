"""Two runs at a time with one thread each, or one run at a time with two threads?

    .venv/bin/python bench/parallel_runs.py --config configs/study/base_cpu.yaml --steps 30

Times ``bench/fit_throughput.py`` (random tokens, no validation or checkpoints)
on the study's model in both ways, side by side in one call, alternating
``--rounds`` times (these machines are noisy), and prints the summed tokens/s
of each way and their ratio. The study runner (``cli.py study``) runs
``parallel`` runs of ``threads_per_run`` threads; this is the measurement
behind its default of 2 x 1 on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TOKENS = re.compile(r"fit_throughput: .*?: (\d+) tokens/s")


def _launch(config: str, steps: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        sys.executable,
        str(ROOT / "bench" / "fit_throughput.py"),
        "--config",
        config,
        "--steps",
        str(steps),
        "--log-every",
        "5",
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )


def _tokens_per_second(process: subprocess.Popen) -> float:
    output, _ = process.communicate()
    match = _TOKENS.search(output)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"parallel_runs: a timed fit failed:\n{output[-2000:]}")
    return float(match.group(1))


def measure(config: str, steps: int, rounds: int) -> dict[str, list[float]]:
    """Summed tokens/s of one 2-thread run and of two concurrent 1-thread runs, per round."""
    results: dict[str, list[float]] = {"one run x 2 threads": [], "two runs x 1 thread": []}
    for _ in range(rounds):
        results["one run x 2 threads"].append(_tokens_per_second(_launch(config, steps, 2)))
        pair = [_launch(config, steps, 1) for _ in range(2)]
        results["two runs x 1 thread"].append(sum(_tokens_per_second(p) for p in pair))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/study/base_cpu.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results = measure(args.config, args.steps, args.rounds)
    for name, values in results.items():
        print(f"{name:>22}: {statistics.median(values):7.0f} tokens/s (rounds: {values})")
    ratio = statistics.median(results["two runs x 1 thread"]) / statistics.median(
        results["one run x 2 threads"]
    )
    print(f"two 1-thread runs / one 2-thread run: {ratio:.2f}x the tokens per second")


if __name__ == "__main__":
    main()
