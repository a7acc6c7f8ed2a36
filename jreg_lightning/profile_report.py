"""The per-layer report of ``validate`` / ``test``: a table printed, a CSV and a JSON written.

``ProfileReport`` is a callback (``cli.py`` adds it to every Trainer): after a
``validate`` or ``test`` it reads the module's ``last_validation`` dict, prints
it as a table and writes ``STAGE_profile.{csv,json}`` into the run folder. The
dict holds ``profile`` (Psi per block), ``early_exit_loss`` (per block, or
None), ``jump_strength``, ``jump_strength_late``, ``jump_layer``, ``loss``,
``ppl`` and ``final_state``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class ProfileReport(L.Callback):
    """After ``validate`` / ``test`` (not the validations inside ``fit``): table and files.

    The files go to ``trainer.log_dir`` (the run folder when the logger is off),
    written by rank 0 only.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stem: str) -> None:
        last = getattr(pl_module, "last_validation", None)
        if last is None:
            return
        rank_zero_info(format_profile_table(last))
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it.
        out_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            report = {**last, "ckpt_path": trainer.ckpt_path}
            for path in write_profile_report(report, out_dir, stem):
                rank_zero_info(f"wrote {path}")


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
    sources = report.get("sources") or {}
    if sources:
        lines.append("per source (the total above is their weighted mean):")
        lines.append(
            "source            loss       ppl        J   J_late  argmax  "
            + "  ".join(f"Psi_{i}" for i in range(1, len(profile) + 1))
        )
        for name, source in sources.items():
            psi = "  ".join(f"{v:.4f}" for v in source["profile"])
            lines.append(
                f"{name:<14} {source['loss']:7.4f} {source['ppl']:9.2f} "
                f"{source['jump_strength']:8.3f} {source['jump_strength_late']:8.3f} "
                f"{source['jump_layer']:7d}  {psi}"
            )
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
