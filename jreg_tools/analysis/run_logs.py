"""Read the per-layer profile a training run logged (CSVLogger ``metrics.csv``).

During ``fit`` the module logs ``train/psi/layer_NN``, ``train/jump_strength``
and friends every log interval, and ``val/...`` at each validation; this turns
those rows into a series (steps, profiles, J) for the same plots as ``analyze``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_tools.analysis.loading import metrics_files

# ``val``, ``train``, or ``val/<source>`` of a data mixture.
_LAYER_COLUMN = re.compile(r"^(?P<stage>\w+(?:/[\w.-]+)?)/psi/layer_(?P<layer>\d+)$")


def _number(text: str | None) -> float:
    if text is None or text == "":
        return math.nan
    return float(text)


def read_logged_series(run_dir: str | Path, stage: str = "val") -> dict:
    """The logged profile of ``stage`` (``train``, ``val``, ``val/<source>``) at every logged step.

    All ``metrics.csv`` files under ``run_dir`` are read (a resumed run writes a
    new logger version); a step logged twice keeps its last row.

    Returns:
        ``{"steps": [...], "profiles": [[Psi_1..Psi_L], ...], "jump_strength": [...],
        "jump_strength_late": [...], "jump_layer": [...], "loss": [...]}``, ascending
        by step (``loss`` is ``val/loss`` or ``train/ce``, NaN when absent).
    """
    run_dir = Path(run_dir)
    files = metrics_files(run_dir)
    if not files:
        raise InputNotFoundError(
            f"analyze: no metrics.csv under {run_dir}; pass the run's directory "
            "(trainer.default_root_dir) of a run logged with CSVLogger"
        )
    loss_column = "train/ce" if stage == "train" else f"{stage}/loss"
    by_step: dict[int, dict] = {}
    layer_columns: dict[int, str] = {}
    for path in files:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            for column in reader.fieldnames or []:
                match = _LAYER_COLUMN.match(column)
                if match and match["stage"] == stage:
                    layer_columns[int(match["layer"])] = column
            for row in reader:
                if not layer_columns or row.get(layer_columns[min(layer_columns)], "") == "":
                    continue
                by_step[int(float(row["step"]))] = row
    if not by_step:
        raise ConfigError(
            f"analyze: {run_dir} has no {stage}/psi/layer_NN values in its metrics.csv; "
            f"use --stage {'train' if stage == 'val' else 'val'} or a run that logged them"
        )
    layers = sorted(layer_columns)
    series: dict[str, list] = {
        "steps": [],
        "profiles": [],
        "jump_strength": [],
        "jump_strength_late": [],
        "jump_layer": [],
        "loss": [],
    }
    for step in sorted(by_step):
        row = by_step[step]
        series["steps"].append(step)
        series["profiles"].append([_number(row.get(layer_columns[i])) for i in layers])
        for key in ("jump_strength", "jump_strength_late", "jump_layer"):
            series[key].append(_number(row.get(f"{stage}/{key}")))
        series["loss"].append(_number(row.get(loss_column)))
    return series
