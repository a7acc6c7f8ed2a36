"""Write an analysis as JSON, CSV and PNG files.

The analysis is a dict ``{"models": [...], "series": {...}, "settings": {...}}``:
each model entry is ``measure_model``'s result plus ``name``, ``source``,
``kind`` and ``step``; each series is ``{"steps", "profiles", "jump_strength",
"jump_strength_late", "jump_layer", "loss"}`` (from checkpoints or from logs).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from jreg_lightning.profile_plot import plot_layer_profiles
from jreg_tools.analysis import plots

_SUMMARY_KEYS = (
    "jump_strength",
    "jump_strength_late",
    "jump_layer",
    "spread_std",
    "spread_max_over_mean",
)


def _json_safe(value):
    # JSON has no NaN: write null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def write_tables(analysis: dict, out_dir: Path) -> list[Path]:
    """``analysis.json``, ``layers.csv`` (one row per model and block) and ``summary.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "analysis.json"]
    written[0].write_text(json.dumps(_json_safe(analysis), indent=2) + "\n")
    models = analysis["models"]
    if models:
        layers_csv = out_dir / "layers.csv"
        with layers_csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "model",
                    "step",
                    "layer",
                    "psi_post_norm",
                    "psi_pre_norm",
                    "early_exit_loss",
                    "skip_loss_increase",
                ]
            )
            for model in models:
                early = model["early_exit_loss"]
                skip = model["skip_loss_increase"]
                for index in range(model["num_layers"]):
                    writer.writerow(
                        [
                            model["name"],
                            model["step"],
                            index + 1,
                            model["profiles"]["post_norm"][index],
                            model["profiles"]["pre_norm"][index],
                            early[index] if early else "",
                            skip[index] if skip else "",
                        ]
                    )
        summary_csv = out_dir / "summary.csv"
        with summary_csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            header = ["model", "step", "tokens", "loss", "perplexity"]
            header += [
                f"{key}_{state}" for state in ("post_norm", "pre_norm") for key in _SUMMARY_KEYS
            ]
            writer.writerow(header)
            for model in models:
                row = [model["name"], model["step"], model["tokens"], model["loss"]]
                row.append(model["perplexity"])
                row += [
                    model["jump"][state][key]
                    for state in ("post_norm", "pre_norm")
                    for key in _SUMMARY_KEYS
                ]
                writer.writerow(["" if value is None else value for value in row])
        written += [layers_csv, summary_csv]
    for name, series in analysis["series"].items():
        series_csv = out_dir / f"series_{_file_stem(name)}.csv"
        with series_csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            num_layers = len(series["profiles"][0])
            writer.writerow(
                ["step", "jump_strength", "jump_strength_late", "jump_layer", "loss"]
                + [f"psi_layer_{i:02d}" for i in range(1, num_layers + 1)]
            )
            for index, step in enumerate(series["steps"]):
                writer.writerow(
                    [
                        step,
                        series["jump_strength"][index],
                        series["jump_strength_late"][index],
                        series["jump_layer"][index],
                        series["loss"][index],
                        *series["profiles"][index],
                    ]
                )
        written.append(series_csv)
    return written


def draw_plots(analysis: dict, out_dir: Path) -> list[Path]:
    """The PNGs: overlaid profiles, early-exit losses, skip-block losses, J vs step, heat-maps.

    A series contributes its last profile to the overlay, labelled with its step.
    """
    written: list[Path] = []
    models = analysis["models"]
    series = analysis["series"]
    single = [m for m in models if m.get("series") is None]
    profiles = {m["name"]: m["profiles"]["post_norm"] for m in single}
    for name, run in series.items():
        profiles[f"{name} (step {run['steps'][-1]})"] = run["profiles"][-1]
    if profiles:
        written.append(
            plot_layer_profiles(
                profiles, out_dir / "profiles.png", title="Layer profile (post-norm final state)"
            )
        )
    early = {m["name"]: m["early_exit_loss"] for m in single if m["early_exit_loss"]}
    for name in series:
        last = [m for m in models if m.get("series") == name and m["early_exit_loss"]]
        if last:
            early[f"{name} (step {last[-1]['step']})"] = last[-1]["early_exit_loss"]
    if early:
        written.append(plots.plot_early_exit_losses(early, out_dir / "early_exit_loss.png"))
    skip = {m["name"]: m["skip_loss_increase"] for m in single if m["skip_loss_increase"]}
    if skip:
        written.append(
            plots.plot_early_exit_losses(
                skip,
                out_dir / "skip_loss_increase.png",
                title="Loss increase when block l is skipped",
                xlabel="skipped block l",
                ylabel="loss(skip l) - loss (nats)",
            )
        )
    if series:
        jumps = {name: (run["steps"], run["jump_strength"]) for name, run in series.items()}
        written.append(plots.plot_jump_over_steps(jumps, out_dir / "jump_vs_step.png"))
        for name, run in series.items():
            written.append(
                plots.plot_profile_heatmap(
                    run["steps"],
                    run["profiles"],
                    out_dir / f"heatmap_{_file_stem(name)}.png",
                    title=f"Psi per block over training: {name}",
                )
            )
    return written
