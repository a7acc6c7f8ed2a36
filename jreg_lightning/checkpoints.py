"""Read a training checkpoint's weights whatever its layout, and consolidate sharded ones.

Two layouts come out of ``fit``:

- a single file (``last.ckpt``) from single-device, DDP, or ``ModelParallelStrategy``
  with ``save_distributed_checkpoint: false``: a ``torch.save`` dict whose
  ``state_dict`` holds the module's weights;
- a folder (also named ``*.ckpt``) from ``ModelParallelStrategy`` (FSDP2) with the
  default ``save_distributed_checkpoint: true``: a ``torch.distributed.checkpoint``
  (DCP) folder, ``.metadata`` plus one ``__R_0.distcp`` shard per rank, where the
  weights sit under the top-level key ``state_dict`` and each optimizer under
  ``optimizer_N``, and ``meta.pt`` beside them holds everything else (step
  counters, loop and callback state, hyperparameters).

``load_full_state_dict`` returns the same dict for both, so export and analysis
need not know how the run was sharded.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from jreg_lightning.init import canonical_name

DCP_METADATA_FILE = ".metadata"
LIGHTNING_METADATA_FILE = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME


def is_distributed_checkpoint(path: str | Path) -> bool:
    """True for a DCP folder (one that holds a ``.metadata`` file)."""
    path = Path(path)
    return path.is_dir() and (path / DCP_METADATA_FILE).is_file()


def read_checkpoint_meta(path: str | Path, field: str = "ckpt_path") -> dict:
    """Everything a checkpoint holds but its weights: ``hyper_parameters``, ``global_step``, ...

    A single file is memory-mapped, so its tensors are not read. For a
    distributed-checkpoint folder the ``.metadata`` pickle is vetted first (torch
    reads it without ``weights_only``) and ``meta.pt`` is read. Always loaded with
    ``weights_only=True``; errors are one line naming ``field``.

    Returns:
        The checkpoint's dict, or ``{}`` for a folder without ``meta.pt``.
    """
    from jreg_lightning.checkpoint_io import check_distributed_checkpoint, safe_torch_load

    path = Path(path)
    if path.is_dir():
        check_distributed_checkpoint(path, field)
        path = path / LIGHTNING_METADATA_FILE
        if not path.is_file():
            return {}
    content = safe_torch_load(path, map_location="cpu", field=field, mmap=True)
    return content if isinstance(content, dict) else {}


def strip_compiled_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``_orig_mod.`` (compile) and checkpoint/FSDP1 wrapper segments of the keys."""
    return {canonical_name(key): value for key, value in state_dict.items()}


def load_full_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The module's full (unsharded) weights from a Lightning checkpoint, on CPU.

    Args:
        path: a single-file Lightning checkpoint, or an FSDP2 distributed-checkpoint
            folder written by ``ModelParallelStrategy``.

    Returns:
        ``{key: tensor}`` with the keys of a single-file checkpoint's
        ``state_dict`` (e.g. ``model.model.layers.0.self_attn.q_proj.weight``),
        ``_orig_mod.`` (and other wrapper) segments stripped; optimizer state is not read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a distributed-checkpoint "
            "folder from a run's checkpoints/ directory"
        )
    if path.is_dir():
        if not is_distributed_checkpoint(path):
            raise ValueError(
                f"checkpoint folder {path} has no {DCP_METADATA_FILE} file, so it is not a "
                "torch.distributed.checkpoint folder; pass the .ckpt folder itself (the one "
                "holding .metadata and *.distcp files)"
            )
        state_dict = _load_dcp_weights(path)
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(
                f"checkpoint {path} has no 'state_dict' entry; pass a checkpoint written by "
                "Lightning's Trainer (or by the consolidate command)"
            )
        state_dict = checkpoint["state_dict"]
    return strip_compiled_prefix(dict(state_dict))


def _load_dcp_weights(path: Path) -> dict[str, Tensor]:
    # Only the weights entry is read: the optimizer state (2x the weights under
    # AdamW) is never materialised. Without a process group the reader loads
    # every rank's shard into full CPU tensors.

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    # ModelParallelStrategy (FSDP2) stores the weights under "state_dict",
    # FSDPStrategy (FSDP1, state_dict_type="sharded") under "model".
    top_levels = {key.split(".", 1)[0] for key in stored}
    entry = next((name for name in ("state_dict", "model") if name in top_levels), None)
    if entry is None:
        raise ValueError(
            f"distributed checkpoint {path} holds no 'state_dict' or 'model' entry; it was not "
            "written by Lightning's ModelParallelStrategy or FSDPStrategy"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        loaded = _load_state_dict_from_keys(keys={entry}, checkpoint_id=str(path))
    return loaded[entry]


def consolidate(checkpoint: Path, out: Path, overwrite: bool = False) -> Path:
    """Merge a sharded FSDP2 checkpoint folder into one single-file checkpoint.

    The file holds the full weights under ``state_dict`` plus the run's metadata
    (hyperparameters, step counters), so it loads with
    ``torch.load(..., weights_only=True)``, ``load_full_state_dict``,
    ``JregLightningModule.load_from_checkpoint`` and ``cli.py validate --ckpt_path``.
    Optimizer state is left out: resume training from the sharded folder itself.

    Args:
        checkpoint: the distributed-checkpoint folder (e.g. ``runs/x/checkpoints/last.ckpt``).
        out: the single file to write (written to a temporary name, then renamed).
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if checkpoint.resolve() == out.resolve():
        raise ValueError("--out must differ from --checkpoint: the sharded folder is the input")
    state_dict = load_full_state_dict(checkpoint)
    contents: dict = {}
    if checkpoint.is_dir() and (checkpoint / LIGHTNING_METADATA_FILE).is_file():
        metadata = torch.load(checkpoint / LIGHTNING_METADATA_FILE, weights_only=True)
        contents.update({k: v for k, v in metadata.items() if k != "optimizer_states"})
    elif checkpoint.is_file():
        metadata = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        contents.update({k: v for k, v in metadata.items() if k != "optimizer_states"})
    contents["state_dict"] = state_dict
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        torch.save(contents, temporary)
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    print(f"wrote {out} ({len(state_dict)} tensors, step {contents.get('global_step', '?')})")
    return out
