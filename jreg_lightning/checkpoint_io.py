"""Checkpoint files that are either complete or absent, and loaded without running code.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose
temporary file lives in the system temp folder: committing it is a copy when
that folder is on another filesystem, and nothing is fsynced, so a kill or a
power loss during a save can leave a truncated ``last.ckpt``.
``AtomicCheckpointIO`` writes a temporary file beside the target, fsyncs it,
``os.replace``-s it into place (atomic on POSIX within one filesystem) and
fsyncs the folder. A kill at any point leaves either the previous checkpoint or
the new one, never half of one.

``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` as a second full save
through the same path, so it is atomic too. ``save_last: link`` is not: Lightning
removes the old ``last.ckpt`` before it creates the symlink, so a kill in
between leaves no ``last.ckpt`` and ``--ckpt_path last`` would start from
scratch. The shipped configs use ``save_last: true``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from jreg_lightning.errors import ConfigError

TEMP_PREFIX = "."
TEMP_SUFFIX = ".partial"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is never seen half-written.

    The bytes go to a hidden ``.NAME.*.partial`` file in the same folder (its
    suffix is not ``.ckpt``, so Lightning's search for ``last*.ckpt`` ignores
    it); the file is fsynced, renamed over ``path`` and the folder fsynced. A
    leftover temporary file from a killed save is removed by the next save of
    the same name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, temp_name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    try:
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    for stale in path.parent.glob(f"{TEMP_PREFIX}{path.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_torch_load(
    path: str | os.PathLike, map_location: Any = "cpu", field: str = "ckpt_path", **kwargs: Any
) -> Any:
    """``torch.load(path, weights_only=True)``, with one-line errors naming ``field``.

    A pickle that would run code (any global outside torch's allow-list) is
    refused; so is a missing or truncated file. ``kwargs`` go to ``torch.load``
    (e.g. ``mmap=True`` to read the hyperparameters of a large checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{field}: {path} does not exist; pass an existing .ckpt file, or 'last' to "
            "resume from the newest last*.ckpt of the run's ModelCheckpoint folder"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split("WeightsUnpickler error:")[-1].split())[:160]
        raise ConfigError(
            f"{field}: refusing to load {path}: it holds objects that weights_only=True "
            f"does not allow ({detail}); only load checkpoints you trust, re-saved as plain "
            "tensors and dicts"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ConfigError(
            f"{field}: {path} is not a readable checkpoint ({' '.join(str(err).split())[:160]}); "
            "it may be truncated: use an earlier checkpoint of the run"
        ) from err


# What the ``.metadata`` pickle of a torch.distributed.checkpoint folder may name.
_METADATA_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only the types torch writes into a DCP ``.metadata`` file."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module.startswith(_METADATA_MODULE_PREFIXES)
            or (module, name) in _METADATA_GLOBALS
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.memory_format))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def check_distributed_checkpoint(folder: str | os.PathLike, field: str = "ckpt_path") -> None:
    """Refuse a distributed-checkpoint folder whose ``.metadata`` could run code.

    ``torch.distributed.checkpoint`` reads ``.metadata`` with plain ``pickle``
    (there is no ``weights_only`` for it), so this unpickles it first with an
    allow-list of torch's checkpoint types and raises if it names anything else.
    """
    path = Path(folder) / ".metadata"
    try:
        with path.open("rb") as handle:
            _MetadataUnpickler(handle).load()
    except FileNotFoundError:
        raise ConfigError(
            f"{field}: {folder} has no .metadata file, so it is not a distributed checkpoint; "
            "pass the checkpoint folder itself (the one holding .metadata and *.distcp)"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise ConfigError(
            f"{field}: refusing to load {folder}: its .metadata is not a plain "
            f"torch.distributed.checkpoint index ({err}); only load checkpoints you trust"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, fsynced saves and ``weights_only=True`` loads.

    Local paths only for the atomic save; a remote URL (``s3://``...) falls
    back to Lightning's own save, whose object stores commit whole objects.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see ``atomic_torch_save``)."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only=None
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` unless the caller passed ``False`` explicitly."""
        if weights_only is False or "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return safe_torch_load(path, map_location=map_location)
