"""Find and load what ``analyze`` reads: HF model folders, checkpoints, series, run logs.

Local files only: Hugging Face loading uses ``local_files_only=True`` and
``trust_remote_code=False``. Checkpoints are read by ``jreg_lightning.checkpoints``
(``weights_only=True``, any layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from jreg_lightning.checkpoints import is_distributed_checkpoint, read_checkpoint_meta
from jreg_lightning.errors import ConfigError, InputNotFoundError

SourceKind = Literal["hf", "checkpoint", "series", "run_logs"]
_CHECKPOINT_SUFFIX = ".ckpt"


@dataclass
class Source:
    """One input of ``analyze``.

    Attributes:
        path: where it is.
        kind: ``hf`` (a folder with config.json), ``checkpoint`` (a Lightning
            .ckpt file or FSDP2 checkpoint folder), ``series`` (a folder of
            checkpoints) or ``run_logs`` (a run directory with CSVLogger metrics).
        name: label in tables and plots.
    """

    path: Path
    kind: SourceKind
    name: str


def _is_checkpoint(path: Path) -> bool:
    return (path.is_file() and path.suffix == _CHECKPOINT_SUFFIX) or is_distributed_checkpoint(path)


def classify(path: str | Path, name: str | None = None) -> Source:
    """Decide what ``path`` is (see ``Source.kind``).

    A run directory with a ``checkpoints/`` folder is read as a series of
    checkpoints; pass its ``logs/`` folder to plot what the run logged instead.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(
            f"analyze: input {path} does not exist; pass a HF model folder, a .ckpt file, a "
            "folder of checkpoints or a run directory"
        )
    label = name or (path.stem if path.is_file() else path.name)
    if _is_checkpoint(path):
        return Source(path, "checkpoint", label)
    if (path / "config.json").is_file():
        return Source(path, "hf", label)
    if path.is_dir() and checkpoint_files(path):
        return Source(path, "series", label)
    if path.is_dir() and (path / "checkpoints").is_dir() and checkpoint_files(path / "checkpoints"):
        return Source(path / "checkpoints", "series", name or path.name)
    if path.is_dir() and metrics_files(path):
        return Source(path, "run_logs", label)
    raise ConfigError(
        f"analyze: cannot tell what {path} is: no config.json (HF model), no *.ckpt "
        "(checkpoints) and no metrics.csv (run logs) in it; pass one of those"
    )


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints directly inside ``folder`` (files or DCP folders named ``*.ckpt``)."""
    return sorted(
        p for p in folder.iterdir() if p.suffix == _CHECKPOINT_SUFFIX and _is_checkpoint(p)
    )


def metrics_files(run_dir: Path) -> list[Path]:
    """CSVLogger ``metrics.csv`` files under ``run_dir`` (one per logger version), in order.

    Also the flat copies a study's archive keeps (``metrics_version_N.csv``, written by
    ``jreg_tools.study.report.archive_runs``), so an archived run reads like the run.
    """
    found = [*run_dir.rglob("metrics.csv"), *run_dir.rglob("metrics_version_*.csv")]
    return sorted(found, key=lambda path: (_version(path), str(path)))


def _version(path: Path) -> int:
    name = path.parent.name if path.name == "metrics.csv" else path.stem
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a checkpoint was saved at (None if it records none)."""
    step = read_checkpoint_meta(path, field="inputs").get("global_step")
    return None if step is None else int(step)


def series_in_order(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoints of ``folder`` as ``(global_step, path)``, ascending by step.

    ``last.ckpt`` repeats the step of another checkpoint; each step is kept once,
    preferring the file that is not named ``last``.
    """
    by_step: dict[int, Path] = {}
    for path in checkpoint_files(folder):
        step = checkpoint_step(path)
        if step is None:
            raise ConfigError(f"checkpoint {path} has no global_step; it cannot be put in a series")
        if step not in by_step or by_step[step].stem.startswith("last"):
            by_step[step] = path
    return sorted(by_step.items())


def load_hf_model(path: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, bool]:
    """A local HF model: ``AutoModelForCausalLM`` when the config has one, else ``AutoModel``.

    Returns:
        ``(model, is_causal_lm)``.
    """
    from transformers import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
    )

    options = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(path, **options)
    except (ValueError, OSError) as err:
        raise ConfigError(
            f"analyze: {path}/config.json is not a config transformers can read without remote "
            f"code ({err}); pass a model of a family transformers ships"
        ) from None
    load = {**options, "dtype": dtype}
    if any(path.glob("*.safetensors")):
        load["use_safetensors"] = True
    # The saved architecture decides: a BERT encoder also has a causal-LM class in
    # transformers, but loading it would invent an untrained head.
    architectures = getattr(config, "architectures", None) or []
    causal = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and (
        not architectures or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    )
    loader = AutoModelForCausalLM if causal else AutoModel
    model = loader.from_pretrained(path, config=config, **load)
    return model.eval(), causal
