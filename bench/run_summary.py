"""One line per fit of a run folder: steps, loss, gradient norm, tokens/s and MFU as logged.

    .venv/bin/python bench/run_summary.py runs/llama_1b_jreg

Reads each ``logs/version_*/metrics.csv`` that ``cli.py fit`` wrote (CSVLogger) and
the ``global_step`` of ``checkpoints/last.ckpt``. Throughput is the median of the
logged ``train/device/tokens_per_sec`` windows after the first (which holds compile
and warm-up), per device, as ``jreg_lightning.throughput.TokenThroughputMonitor`` logs it.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _column(rows: list[dict], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def summarize(run_dir: Path) -> list[str]:
    """The summary lines of the run folder ``run_dir``."""
    from jreg_lightning.checkpoints import read_checkpoint_meta

    lines = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        rows = list(csv.DictReader(path.open()))
        losses, norms = _column(rows, "train/loss"), _column(rows, "train/grad_norm")
        tokens = _column(rows, "train/device/tokens_per_sec")
        mfu = _column(rows, "train/device/mfu")
        steps = [int(row["step"]) for row in rows if row.get("train/loss")]
        text = f"{path.parent.name}: {len(losses)} logged steps"
        if steps:
            text += f" ({steps[0]}..{steps[-1]})"
        if losses:
            text += f", train/loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        if norms:
            text += f", grad_norm {norms[0]:.3g} -> {norms[-1]:.3g}"
        if len(tokens) > 1:
            text += f", {statistics.median(tokens[1:]):,.0f} tokens/s per device"
        if len(mfu) > 1:
            text += f", MFU {statistics.median(mfu[1:]):.3f}"
        val = _column(rows, "val/loss")
        if val:
            text += f", val/loss {val[-1]:.3f}, val J {_column(rows, 'val/jump_strength')[-1]:.2f}"
        lines.append(text)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        lines.append(f"last.ckpt: global_step {read_checkpoint_meta(last)['global_step']}")
    return lines


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(f"run_summary: {folder}")
        for line in summarize(Path(folder)):
            print(f"  {line}")
