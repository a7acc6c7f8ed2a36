"""The per-layer table of ``cli.py validate`` / ``test``: printed, and written as CSV and JSON.

The report is the module's ``last_validation`` dict: ``profile`` (Psi per
block), ``early_exit_loss`` (per block, or None), ``jump_strength``,
``jump_strength_late``, ``jump_layer``, ``loss``, ``ppl``, ``final_state``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def format_profile_table(report: dict) -> str:
    """A per-layer table (layer, Psi, early-exit loss) with J, J_late, the argmax layer and loss."""
    profile = report["profile"]
    early = report.get("early_exit_loss")
    peak = max(profile[1:]) if len(profile) > 1 else max(profile)
    header = "layer      Psi" + ("   early-exit loss" if early else "")
    lines = [f"Layer profile (final state: {report['final_state']})", header]
    for index, value in enumerate(profile, start=1):
        bar = "#" * round(30 * value / peak) if peak > 0 and index > 1 else ""
        exit_loss = f"   {early[index - 1]:15.4f}" if early else ""
        lines.append(f"{index:5d}  {value:.5f}{exit_loss}  {bar}")
    lines.append(
        f"J = {report['jump_strength']:.3f}   J_late = {report['jump_strength_late']:.3f}   "
        f"argmax layer = {report['jump_layer']}"
    )
    lines.append(f"val loss = {report['loss']:.4f}   ppl = {report['ppl']:.2f}")
    return "\n".join(lines)


def write_profile_report(report: dict, out_dir: str | Path, stem: str = "validation") -> list[Path]:
    """Write ``STEM_profile.json`` (everything) and ``STEM_profile.csv`` (one row per block).

    Args:
        report: the dict described in the module docstring (extra keys are kept in the JSON).
        out_dir: the run directory (created if missing).
        stem: ``validation`` or ``test``.

    Returns:
        The two written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}_profile.json"
    csv_path = out / f"{stem}_profile.csv"
    safe = {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in report.items()
    }
    json_path.write_text(json.dumps(safe, indent=2) + "\n")
    early = report.get("early_exit_loss")
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "psi", "early_exit_loss"])
        for index, value in enumerate(report["profile"], start=1):
            writer.writerow([index, value, early[index - 1] if early else ""])
    return [json_path, csv_path]


def format_side_by_side(reports: dict[str, dict]) -> str:
    """Several runs' profiles in columns, then J, J_late, the argmax block and the loss.

    Args:
        reports: run label -> report (the dict described in the module docstring).
    """
    names = list(reports)
    width = max(14, *(len(name) + 2 for name in names))
    head = f"{'block':<8}" + "".join(f"{name:>{width}}" for name in names)
    lines = ["Psi per block (final state: post-norm unless a run says otherwise)", head]
    layers = max(len(report["profile"]) for report in reports.values())
    for index in range(layers):
        cells = "".join(
            f"{report['profile'][index]:>{width}.5f}"
            if index < len(report["profile"])
            else " " * width
            for report in reports.values()
        )
        lines.append(f"{index + 1:<8d}{cells}")
    rows = (
        ("J", "jump_strength", ".3f"),
        ("J_late", "jump_strength_late", ".3f"),
        ("argmax", "jump_layer", "d"),
        ("val loss", "loss", ".4f"),
    )
    for label, key, spec in rows:
        lines.append(
            f"{label:<8}" + "".join(f"{report[key]:>{width}{spec}}" for report in reports.values())
        )
    lines.append("J = Psi_L / mean(Psi_2..Psi_{L-1}); J = 1 means no jump.")
    return "\n".join(lines)
