"""The layer-profile picture (Psi_l against l, one line per run) and the PNG helpers it shares.

Training logs it to experiment trackers (``tracking``); ``jreg_tools.analysis.plots``
draws its other pictures with the same helpers. Takes plain numbers, writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first
from matplotlib.ticker import MaxNLocator

# Small pictures: the README ships one, and each should stay well under 150 KB.
FIGSIZE = (6.4, 4.0)
_DPI = 100


def save_figure(fig, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out_path`` (parent folders created) and close it."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=_DPI)
    plt.close(fig)
    return path


def finish_figure(fig, ax, out_path: str | Path, title: str, legend: bool = True) -> Path:
    """Title, a light grid and (one entry per run) a legend; then ``save_figure``."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    return save_figure(fig, out_path)


def check_series(series: Mapping[str, Sequence[float]], what: str) -> None:
    """Refuse an empty mapping or a run without values, naming ``what`` was drawn."""
    if not series:
        raise ValueError(f"{what}: nothing to plot; pass at least one run name -> values")
    for name, values in series.items():
        if len(values) == 0:
            raise ValueError(f"{what}: run {name!r} has no values; drop it or pass its numbers")


def plot_layer_profiles(
    profiles: Mapping[str, Sequence[float]],
    out_path: str | Path,
    title: str | None = None,
) -> Path:
    """One line per run: Psi_l against the block index l = 1 .. L.

    Args:
        profiles: run name -> layer profile (Psi_1 ... Psi_L); runs may differ in L.
        out_path: PNG file to write.
        title: figure title; a default names the quantity.

    Returns:
        The written path.
    """
    check_series(profiles, "plot_layer_profiles")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, profile in profiles.items():
        layers = range(1, len(profile) + 1)
        ax.plot(layers, [float(v) for v in profile], marker="o", markersize=3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block l")
    ax.set_ylabel("Psi_l = (1 - cos(h_{l-1}, h_l)) / 2")
    # Psi_1 (embedding -> block 1) is often 10x the rest: a log axis keeps the others readable.
    values = [float(v) for p in profiles.values() for v in p]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    return finish_figure(fig, ax, out_path, title or "Layer profile")
