"""Checkpoints: read their metadata, load their weights in any layout, save them atomically.

The one home of checkpoint files, used by ``fit`` (``AtomicCheckpointIO``,
``AtomicModelParallelStrategy``), the preflight of ``fit`` / ``validate`` /
``test``, ``export``, ``analyze``, the evaluation commands and ``consolidate``.

Layouts that come out of ``fit``:

- a single file (``last.ckpt``) from single-device, DDP, or ``ModelParallelStrategy``
  with ``save_distributed_checkpoint: false``: a ``torch.save`` dict whose
  ``state_dict`` holds the module's weights;
- a folder (also named ``*.ckpt``) from ``ModelParallelStrategy`` (FSDP2) with the
  default ``save_distributed_checkpoint: true``: a ``torch.distributed.checkpoint``
  (DCP) folder, ``.metadata`` plus one ``__R_0.distcp`` shard per rank, where the
  weights sit under the top-level key ``state_dict`` and each optimizer under
  ``optimizer_N``, and ``meta.pt`` beside them holds everything else (step
  counters, loop and callback state, hyperparameters).

Reading never runs code: files are loaded with ``weights_only=True`` and a DCP
folder's ``.metadata`` (which torch unpickles without ``weights_only``) is
vetted first. Weight keys never depend on ``torch.compile``: per-block compile
inserts ``_orig_mod.`` into the keys of ``module.state_dict()``; saves strip it
and ``accept_uncompiled_keys`` lets a compiled block load the plain keys, so a
run resumes with compile on or off.

Saves are atomic: a file is written beside its target, fsynced and renamed over
it; a DCP folder is written into a hidden staging folder and swapped into place.
A kill at any point leaves the previous checkpoint or the new one, never half.
``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` as a second full save
through the same path, so it is atomic too. ``save_last: link`` is not:
Lightning removes the old ``last.ckpt`` before it creates the symlink, so a kill
in between leaves no ``last.ckpt`` and ``--ckpt_path last`` would start from
scratch. The shipped configs use ``save_last: true``.

Keep the last K step checkpoints with Lightning's own ``ModelCheckpoint``:
``every_n_train_steps: N, save_top_k: K, monitor: step, mode: max`` ranks the
checkpoints by the ``step`` it always offers as a monitor and removes the oldest
through the strategy (files and DCP folders alike; tested with 2 ranks).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_lightning.init import canonical_name
from jreg_lightning.model_config import LlamaModelConfig, build_llama

DCP_METADATA_FILE = ".metadata"
LIGHTNING_METADATA_FILE = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME
COMPILE_PREFIX = "_orig_mod."
TEMP_PREFIX = "."
TEMP_SUFFIX = ".partial"


# ------------------------------------------------------------------ reading safely
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
        hint = " or 'last' (the newest last*.ckpt of the run)" if field == "ckpt_path" else ""
        raise InputNotFoundError(
            f"{field}: {path} does not exist; pass an existing .ckpt file or "
            f"distributed-checkpoint folder{hint}"
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
    path = Path(folder) / DCP_METADATA_FILE
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


def is_distributed_checkpoint(path: str | Path) -> bool:
    """True for a DCP folder (one that holds a ``.metadata`` file)."""
    path = Path(path)
    return path.is_dir() and (path / DCP_METADATA_FILE).is_file()


# ------------------------------------------------------------------ metadata
def read_checkpoint_meta(path: str | Path, field: str = "ckpt_path") -> dict:
    """Everything a checkpoint holds but its weights: ``hyper_parameters``, ``global_step``, ...

    A single file is memory-mapped, so its tensors are not read. For a
    distributed-checkpoint folder the ``.metadata`` pickle is vetted first (torch
    reads it without ``weights_only``) and ``meta.pt`` is read. Always loaded with
    ``weights_only=True``; errors are one line naming ``field``.

    Returns:
        The checkpoint's dict, or ``{}`` for a folder without ``meta.pt``.
    """
    path = Path(path)
    if path.is_dir():
        check_distributed_checkpoint(path, field)
        path = path / LIGHTNING_METADATA_FILE
        if not path.is_file():
            return {}
    content = safe_torch_load(path, map_location="cpu", field=field, mmap=True)
    return content if isinstance(content, dict) else {}


def read_hyperparameters(checkpoint: str | Path, field: str = "checkpoint") -> dict:
    """The module's hyperparameters (``llama``, ``jreg``, ``optim`` plain dicts) of a checkpoint.

    Args:
        checkpoint: a single-file Lightning ``.ckpt`` or a distributed-checkpoint
            folder (its ``meta.pt`` holds everything but the tensors).
        field: the option that named the checkpoint, for the messages.
    """
    hparams = read_checkpoint_meta(checkpoint, field=field).get("hyper_parameters")
    if not hparams or "llama" not in hparams:
        raise ConfigError(
            f"{field}: {checkpoint} has no 'llama' hyperparameters; it was not saved by "
            "JregLightningModule (export an HF folder from a checkpoint of cli.py fit)"
        )
    return dict(hparams)


# ------------------------------------------------------------------ weights
def strip_compiled_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``_orig_mod.`` (compile) and checkpoint/FSDP1 wrapper segments of the keys."""
    return {canonical_name(key): value for key, value in state_dict.items()}


def accept_uncompiled_keys(compiled: nn.Module) -> nn.Module:
    """Let a ``torch.compile``-d submodule load a state dict saved without ``_orig_mod.``.

    ``torch.compile(block)`` wraps ``block`` as ``_orig_mod``, so its keys gain
    that segment; this load hook adds it to the keys that lack it, so a
    checkpoint of an eager run (or one saved through ``AtomicCheckpointIO``,
    which strips the segment) loads into a compiled model. ``state_dict()`` is
    left alone: torch's distributed-checkpoint state-dict API expects the segment.

    Returns:
        ``compiled``, with the hook registered.
    """

    def add_prefix(module, state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if not key[len(prefix) :].startswith(COMPILE_PREFIX):
                state_dict[prefix + COMPILE_PREFIX + key[len(prefix) :]] = state_dict.pop(key)

    compiled.register_load_state_dict_pre_hook(add_prefix)
    return compiled


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
    if path.is_dir():
        check_distributed_checkpoint(path, field="checkpoint")
        state_dict = _load_dcp_weights(path)
    else:
        checkpoint = safe_torch_load(path, field="checkpoint", mmap=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ConfigError(
                f"checkpoint {path} has no 'state_dict' entry; pass a checkpoint written by "
                "Lightning's Trainer (or by the consolidate command)"
            )
        state_dict = checkpoint["state_dict"]
    return strip_compiled_prefix(dict(state_dict))


def _load_dcp_weights(path: Path) -> dict[str, Tensor]:
    # Only the weights entry is read: the optimizer state (2x the weights under
    # AdamW) is never materialised. Without a process group the reader loads
    # every rank's shard into full CPU tensors. No public torch API loads one
    # top-level key of a DCP folder into unsharded tensors (checked against torch 2.14.1).

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    # ModelParallelStrategy (FSDP2) stores the weights under "state_dict",
    # FSDPStrategy (FSDP1, state_dict_type="sharded") under "model".
    top_levels = {key.split(".", 1)[0] for key in stored}
    entry = next((name for name in ("state_dict", "model") if name in top_levels), None)
    if entry is None:
        raise ConfigError(
            f"distributed checkpoint {path} holds no 'state_dict' or 'model' entry; it was not "
            "written by Lightning's ModelParallelStrategy or FSDPStrategy"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        loaded = _load_state_dict_from_keys(keys={entry}, checkpoint_id=str(path))
    return loaded[entry]


PRE_NORM_COPY_PREFIX = "_pre_norm_hooked."


def drop_pre_norm_model_copy(state_dict: dict[str, Tensor]) -> None:
    """Remove, in place, the second copy of the model some ``pre_norm`` checkpoints hold.

    Which files carry it: checkpoints of ``fit`` runs with ``jreg.final_state:
    pre_norm`` written by the code of 2026-11-29 to 2026-11-30 (commits d0cc0b0
    to ac31aee), whose module held the hooked model in an attribute
    ``_pre_norm_hooked``: torch registered it as a submodule, so every weight is
    stored twice, the copy under ``_pre_norm_hooked.`` (the study's ``pre_norm``
    runs of 2026-11-29 wrote such files; see docs/study_log.md). The copy is the
    same model: dropping it loads the run's weights. ``on_load_checkpoint`` of the
    module calls it, so ``validate``, ``test`` and a resume read these files.
    """
    for key in [k for k in state_dict if k.startswith(PRE_NORM_COPY_PREFIX)]:
        del state_dict[key]


def hf_state_dict(module_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``LlamaForCausalLM`` keys of a module state dict.

    Keeps the ``model.`` entries (the module's HF model), drops that prefix and
    the path segments that compile and activation-checkpoint wrappers add;
    metric and regularizer state is left out.
    """
    result = {}
    for key, value in module_state.items():
        if key.startswith("model."):
            result[canonical_name(key[len("model.") :])] = value
    if not result:
        raise ConfigError(
            "checkpoint: no 'model.*' weights found; it was not saved by JregLightningModule"
        )
    return result


def load_checkpoint_model(checkpoint: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild the trained ``LlamaForCausalLM`` (CPU, eval mode) from a checkpoint of ``fit``.

    Used by export, analysis and evaluation alike: the weights are read
    memory-mapped (a file) or unsharded on CPU (a DCP folder), in any layout.

    Args:
        checkpoint: a single-file Lightning ``.ckpt`` or an FSDP2
            distributed-checkpoint folder of ``cli.py fit``.
        dtype: dtype to hold the weights in.
    """
    path = Path(checkpoint)
    llama = LlamaModelConfig(**read_hyperparameters(path)["llama"])
    weights = hf_state_dict(load_full_state_dict(path))
    head, embedding = weights.get("lm_head.weight"), weights.get("model.embed_tokens.weight")
    if llama.tie_word_embeddings and head is not None and not torch.equal(head, embedding):
        # The run was configured tied but trained two tensors (e.g. a meta-device
        # build whose materialisation broke the sharing): keep what was trained.
        print(
            f"checkpoint: {path} has tie_word_embeddings=true but a separate LM head; "
            "loading it untied so the logits stay those of the trained model"
        )
        llama = replace(llama, tie_word_embeddings=False)
    with torch.device("meta"):  # no random init of weights that are overwritten anyway
        model = build_llama(llama)
    expected = set(model.state_dict())
    if llama.tie_word_embeddings:
        # One tensor under two names: a checkpoint may hold either or both.
        weights.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint: {path} does not match its own llama config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved by this project?"
        )
    model.load_state_dict(
        {k: v.to(torch.float32) for k, v in weights.items()},
        strict=not llama.tie_word_embeddings,
        assign=True,
    )
    model.tie_weights()
    # The rotary inv_freq buffer is computed, not saved: build that module for real.
    with torch.device("cpu"):
        model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
    return model.to(dtype).eval()


# ------------------------------------------------------------------ saving atomically
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


def _staging_folder(path: Path) -> Path:
    # Matches _remove_stale_temporaries' pattern; not *.ckpt, so no search for
    # checkpoints (Lightning's last*.ckpt, analyze's *.ckpt) picks it up.
    return path.with_name(f"{TEMP_PREFIX}{path.name}.dcp{TEMP_SUFFIX}")


def _remove_stale_temporaries(path: Path) -> None:
    for stale in path.parent.glob(f"{TEMP_PREFIX}{path.name}.*{TEMP_SUFFIX}"):
        _remove(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where that is not available (another OS, an old libc, a
    filesystem that refuses it); the caller then falls back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    done = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return done == 0


def _replace_folder(staging: Path, path: Path) -> None:
    """Put the complete folder ``staging`` at ``path``, replacing a file or folder there."""
    if not path.exists() and not path.is_symlink():
        os.rename(staging, path)
    elif _exchange(staging, path):
        _remove(staging)  # now holds the previous checkpoint
    else:
        # Two renames: a kill between them leaves the previous checkpoint under
        # .NAME.replaced.partial (a window of microseconds, not of a whole save).
        previous = path.with_name(f"{TEMP_PREFIX}{path.name}.replaced{TEMP_SUFFIX}")
        _remove(previous)
        os.rename(path, previous)
        os.rename(staging, path)
        _remove(previous)
    _fsync_folder(path.parent)


def reopen_unfinished_epoch(checkpoint: dict[str, Any]) -> None:
    """Record an epoch that ``max_steps`` (or a stop) cut short as still running, in place.

    Lightning counts the epoch in which ``max_steps`` is reached as finished, so
    the ``last.ckpt`` written at the end of a run says "epoch 1, before its first
    batch" while its dataloader state sits part-way through epoch 0. Extending that
    run (``--ckpt_path last`` with a larger ``max_steps``) then trains the rest of
    epoch 0's data under the label epoch 1, and the progress bar counts from the old
    position against a new total. Recorded as a mid-epoch checkpoint instead, the
    resume takes Lightning's mid-epoch path, the same as a checkpoint saved by
    ``every_n_train_steps``: epoch and position are those of an uninterrupted run.
    A checkpoint whose epoch really ended (its last batch was seen) is left alone.
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not loop:
        return
    epochs = loop.get("epoch_progress") or {}
    batches = loop.get("epoch_loop.batch_progress") or {}
    total, current = epochs.get("total"), epochs.get("current")
    ended_early = (
        total is not None
        and current is not None
        and not batches.get("is_last_batch", True)
        and (batches.get("current") or {}).get("completed", 0) > 0
        and total["processed"] == total["started"] >= 1
        and total["completed"] == total["processed"]
    )
    if not ended_early:
        return
    for counts in (total, current):
        counts["processed"] -= 1
        counts["completed"] -= 1
    checkpoint["epoch"] = max(0, checkpoint.get("epoch", 1) - 1)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, fsynced saves and ``weights_only=True`` loads.

    Weight keys are saved without compile's ``_orig_mod.`` segment. Local paths
    only for the atomic save; a remote URL (``s3://``...) falls back to
    Lightning's own save, whose object stores commit whole objects.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see ``atomic_torch_save``)."""
        if isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = {**checkpoint, "state_dict": _without_compile_prefix(checkpoint)}
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


def _without_compile_prefix(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key.replace(COMPILE_PREFIX, ""): v for key, v in checkpoint["state_dict"].items()}


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) whose distributed-checkpoint saves are atomic.

    Lightning writes the shards straight into the checkpoint folder, so a kill
    during a save (of ``last.ckpt`` above all) leaves a folder mixing two steps.
    Here every rank writes into a hidden staging folder beside it; rank 0 adds
    ``meta.pt``, fsyncs, and swaps the complete folder into place in one rename.
    Single-file saves (``save_distributed_checkpoint: false``) go through the
    strategy's ``CheckpointIO`` as before (``AtomicCheckpointIO`` under ``cli.py``).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to the folder ``filepath`` atomically (all ranks call this)."""
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        import torch.distributed.checkpoint as dcp

        path = Path(self.broadcast(filepath))
        staging = _staging_folder(path)
        if self.global_rank == 0:
            _remove_stale_temporaries(path)
            staging.mkdir(parents=True)
        self.barrier("staging folder created")
        state = {"state_dict": checkpoint.pop("state_dict")}
        for index, optimizer_state in enumerate(checkpoint.pop("optimizer_states", [])):
            state[f"optimizer_{index}"] = optimizer_state
        dcp.save(state, checkpoint_id=staging)  # shards and .metadata, fsynced by torch
        if self.global_rank == 0:
            atomic_torch_save(checkpoint, staging / LIGHTNING_METADATA_FILE)
            _replace_folder(staging, path)
        self.barrier("checkpoint in place")
