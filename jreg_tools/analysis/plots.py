"""PNG pictures of layer profiles, J over training and early-exit losses (matplotlib Agg).

Every function takes plain Python numbers (lists, dicts), writes one PNG and
returns its path; the parent folder is created. Nothing here needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first
from matplotlib.ticker import MaxNLocator

from jreg_lightning.profile_plot import (
    FIGSIZE,
    check_series,
    finish_figure,
    save_figure,
)

# tab10 without its grey, which would read as a baseline's.
_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")
_EMPHASIS_COLOURS = ("black", "dimgrey", "darkgrey")
_LINE_STYLES = ("-", "--", ":", "-.")
# Past this many runs the legend moves beside the axes.
_LEGEND_INSIDE_MAX = 8


def line_styles(
    names: Sequence[str],
    emphasis: Collection[str] = (),
    groups: Mapping[str, str] | None = None,
) -> dict[str, dict]:
    """Matplotlib ``color``, ``linestyle`` and ``linewidth`` per run; no two runs alike.

    Args:
        names: the runs, in drawing order.
        emphasis: runs drawn heavier in black and greys (the baselines).
        groups: run -> setting; the seeds of one setting share a colour and differ in
            line style. A run not in it is a setting of its own.

    Returns:
        Run name -> keyword arguments for ``Axes.plot``. Colour and line style pairs are
        unique up to 9 x 4 settings' seeds and 3 x 4 emphasised runs.
    """
    groups = groups or {}
    used: set[tuple[str, str]] = set()
    # Each setting's first colour: the baselines (one setting) start at black.
    first_colour: dict[tuple[bool, str], int] = {}
    styles = {}
    for name in names:
        heavy = name in emphasis
        palette = _EMPHASIS_COLOURS if heavy else _COLOURS
        setting = (heavy, "" if heavy else groups.get(name, name))
        start = first_colour.setdefault(setting, sum(h == heavy for h, _ in first_colour))
        pairs = [
            (palette[(start + shift) % len(palette)], style)
            for shift in range(len(palette))
            for style in _LINE_STYLES
        ]
        colour, style = next((pair for pair in pairs if pair not in used), pairs[0])
        used.add((colour, style))
        styles[name] = {"color": colour, "linestyle": style, "linewidth": 2.4 if heavy else 1.2}
    return styles


def plot_jump_over_steps(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out_path: str | Path,
    title: str | None = None,
    ylabel: str = "J = Psi_L / mean(Psi_2..Psi_{L-1})",
    emphasis: Collection[str] = (),
    groups: Mapping[str, str] | None = None,
) -> Path:
    """One line per run: a scalar (J by default) against the training step.

    Args:
        series: run name -> (steps, values) of equal length.
        out_path: PNG file to write.
        title: figure title.
        ylabel: what the values are.
        emphasis: runs drawn heavier (the baselines); see ``line_styles``.
        groups: run -> setting: seeds of one setting share a colour.

    Returns:
        The written path.
    """
    check_series({name: steps for name, (steps, _) in series.items()}, "plot_jump_over_steps")
    styles = line_styles(list(series), emphasis, groups)
    many = len(series) > _LEGEND_INSIDE_MAX
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 2.0, FIGSIZE[1]) if many else FIGSIZE)
    for name, (steps, values) in series.items():
        if len(steps) != len(values):
            raise ValueError(
                f"plot_jump_over_steps: run {name!r} has {len(steps)} steps but "
                f"{len(values)} values; pass one value per step"
            )
        ax.plot(
            list(steps),
            [float(v) for v in values],
            marker="o",
            markersize=3,
            label=name,
            **styles[name],
        )
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if many:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return finish_figure(
        fig, ax, out_path, title or "Jump strength during training", legend=not many
    )


def plot_early_exit_losses(
    losses: Mapping[str, Sequence[float]],
    out_path: str | Path,
    title: str | None = None,
    xlabel: str = "exit after block l",
    ylabel: str = "cross-entropy (nats)",
) -> Path:
    """One line per run: a loss per block, by default the logit lens (final norm + LM head on h_l).

    Args:
        losses: run name -> loss per layer l = 1 .. L (NaN entries are skipped).
        out_path: PNG file to write.
        title: figure title.
        xlabel: what the block index means (also used for skip-block losses).
        ylabel: what the values are.

    Returns:
        The written path.
    """
    check_series(losses, "plot_early_exit_losses")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, values in losses.items():
        points = [(i, float(v)) for i, v in enumerate(values, start=1) if not math.isnan(float(v))]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return finish_figure(fig, ax, out_path, title or "Early-exit (logit lens) loss")


def plot_profile_heatmap(
    steps: Sequence[int],
    profiles: Sequence[Sequence[float]],
    out_path: str | Path,
    title: str | None = None,
    skip_first_block: bool = True,
) -> Path:
    """Layer x step heat-map of Psi for one run.

    Args:
        steps: training step of each profile, ascending.
        profiles: one profile (Psi_1 ... Psi_L) per step, all of the same L.
        out_path: PNG file to write.
        title: figure title.
        skip_first_block: leave out Psi_1, which is usually far larger than the
            rest and would wash out the colour scale.

    Returns:
        The written path.
    """
    if len(steps) == 0 or len(steps) != len(profiles):
        raise ValueError(
            f"plot_profile_heatmap: got {len(steps)} steps and {len(profiles)} profiles; "
            "pass one profile per step (at least one)"
        )
    lengths = {len(p) for p in profiles}
    if len(lengths) != 1:
        raise ValueError(
            f"plot_profile_heatmap: profiles have different layer counts {sorted(lengths)}; "
            "a heat-map needs one run (one L)"
        )
    num_layers = lengths.pop()
    first = 2 if skip_first_block and num_layers > 1 else 1
    grid = [[float(p[layer - 1]) for p in profiles] for layer in range(first, num_layers + 1)]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    image = ax.imshow(
        grid,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(-0.5, len(steps) - 0.5, first - 0.5, num_layers + 0.5),
        cmap="viridis",
    )
    ticks = list(range(len(steps)))
    stride = max(1, len(ticks) // 10)
    ax.set_xticks(ticks[::stride], [str(steps[i]) for i in ticks[::stride]])
    ax.set_xlabel("training step")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("block l")
    fig.colorbar(image, ax=ax, label="Psi_l")
    ax.set_title(title or "Psi per block over training")
    return save_figure(fig, out_path)


def plot_tradeoff(
    points: Mapping[str, tuple[float, float]],
    out_path: str | Path,
    title: str | None = None,
    xlabel: str = "validation loss",
    ylabel: str = "J = Psi_L / mean(Psi_2..Psi_{L-1})",
) -> Path:
    """One labelled point per run: (x, y), by default validation loss against J.

    Args:
        points: run name -> (x, y).
        out_path: PNG file to write.
        title: figure title.
        xlabel: what x is.
        ylabel: what y is.

    Returns:
        The written path.
    """
    check_series({name: point for name, point in points.items()}, "plot_tradeoff")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, (x, y) in points.items():
        ax.scatter([float(x)], [float(y)], s=18)
        ax.annotate(
            name,
            (float(x), float(y)),
            fontsize="x-small",
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return finish_figure(
        fig, ax, out_path, title or "Jump strength against validation loss", legend=False
    )
