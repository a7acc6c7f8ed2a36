"""Checks that need two parts of a run at once, made before anything is written.

Each part validates itself where its value enters (the dataclasses of
``model.llama`` / ``model.jreg`` / ``model.optim``, the data module, ``prepare``).
What no single part can see is checked here, by ``cli.py`` before ``fit`` /
``validate`` / ``test`` start, so that a bad run fails in a second with one
line, and before the logger or ``SaveConfigCallback`` touch the run folder:
``data.seq_len`` against the model's positions, the shards against the model's
vocabulary, a global batch against the devices, a checkpoint against the
model's shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from jreg_lightning.errors import ConfigError
from jreg_lightning.model_config import LlamaModelConfig

CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")


GPU_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(accelerator: object, gpu_available: bool) -> None:
    """A config that asks for GPUs (``trainer.accelerator: gpu``) needs one to be visible.

    Called before the Trainer is built, whose own message is a traceback that names
    no fix. ``auto`` and ``cpu`` always pass.
    """
    if str(accelerator).lower() in GPU_ACCELERATORS and not gpu_available:
        raise ConfigError(
            f"trainer.accelerator is {accelerator} but no CUDA GPU is visible; on this machine "
            "pass --trainer.accelerator cpu (and a CPU-sized config such as "
            "configs/tiny_jreg.yaml), or check CUDA_VISIBLE_DEVICES and the driver"
        )


def check_sequence_length(seq_len: int, llama: LlamaModelConfig) -> None:
    """``data.seq_len`` must fit the model's ``max_position_embeddings``."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"data.seq_len must be a positive integer, got {seq_len!r}")
    if seq_len > llama.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={seq_len} is above model.llama.max_position_embeddings="
            f"{llama.max_position_embeddings}; lower data.seq_len or raise "
            "max_position_embeddings"
        )


def per_device_batch_size(
    batch_size: int, global_batch_size: int | None, world_size: int, accumulate: int
) -> int:
    """The per-device batch (``data.batch_size``) a run uses.

    ``data.batch_size`` is per device. ``global_batch_size``, when given, is the
    number of sequences per optimizer step over all devices and accumulation
    steps; it must divide evenly, and it sets ``data.batch_size``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if global_batch_size is None:
        return batch_size
    share = world_size * accumulate
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ConfigError(
            f"global_batch_size must be a positive integer, got {global_batch_size!r}"
        )
    if global_batch_size % share:
        raise ConfigError(
            f"global_batch_size={global_batch_size} does not divide over {world_size} device(s) x "
            f"{accumulate} accumulation step(s); use a multiple of {share}, or drop "
            "global_batch_size and set the per-device data.batch_size"
        )
    return global_batch_size // share


def check_token_shards(
    data_dir: str | Path,
    splits: tuple[str, ...],
    seq_len: int,
    batch_size: int,
    vocab_size: int,
    storage_options: dict | None = None,
) -> None:
    """Each split folder (or URL) is a readable litdata dataset with at least one full batch.

    A missing folder or split is reported by ``read_index``, which reads it.

    The vocabulary recorded by ``prepare`` in ``meta.json`` must fit in
    ``model.llama.vocab_size`` (an id beyond the embedding would fail deep
    inside the first forward pass).
    """
    from jreg_lightning.data.shard_meta import chunk_tokens, read_index, read_meta, usable_tokens
    from jreg_lightning.data.storage import join

    meta = read_meta(data_dir, storage_options)
    if meta is not None and int(meta.get("vocab_size", 0)) > vocab_size:
        raise ConfigError(
            f"model.llama.vocab_size={vocab_size} is below the data's vocabulary of "
            f"{meta['vocab_size']} tokens ({join(data_dir, 'meta.json')}); set "
            f"model.llama.vocab_size >= {meta['vocab_size']}"
        )
    block = seq_len + 1
    for split in splits:
        index = read_index(join(data_dir, split), storage_options)
        blocks = usable_tokens(chunk_tokens(index), block) // block
        if blocks < batch_size:
            raise ConfigError(
                f"data.data_dir: {join(data_dir, split)} holds {blocks} block(s) of "
                f"seq_len+1={block} tokens, fewer than one batch of "
                f"data.batch_size={batch_size}; prepare more text, or lower data.seq_len or "
                "data.batch_size"
            )


def resolve_checkpoint_path(ckpt_path: str | None, checkpoint_dirs: list[str]) -> Path | None:
    """The file a run will load: an explicit path, or the newest ``last*.ckpt`` for 'last'.

    Returns None when nothing will be loaded (no path, or 'last' before the first
    save, which Lightning treats as a fresh start) or for keywords Lightning
    resolves itself ('best', 'hpc', registry names). A path that does not exist
    is returned as it is: reading it (``read_checkpoint_meta``) names it in one line.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = [
            path
            for folder in checkpoint_dirs
            for path in Path(folder).glob("last*.ckpt")
            if path.exists()
        ]
        return max(candidates, key=os.path.getmtime) if candidates else None
    if ckpt_path in CHECKPOINT_KEYWORDS or "://" in ckpt_path:
        return None
    return Path(ckpt_path)


def check_checkpoint_shape(
    hyper_parameters: Mapping | None, llama: LlamaModelConfig, source: str
) -> None:
    """The checkpoint's ``model.llama`` must equal the config's (same shape, same init).

    Args:
        hyper_parameters: the checkpoint's ``hyper_parameters`` dict (None: not ours).
        llama: the shape the run is configured with.
        source: the checkpoint's path, for the message.
    """
    saved = (hyper_parameters or {}).get("llama")
    if not isinstance(saved, Mapping):
        return
    current = vars(llama)
    differing = [
        f"{key}={saved[key]!r} (config: {current[key]!r})"
        for key in current
        if key in saved and saved[key] != current[key]
    ]
    if differing:
        raise ConfigError(
            f"ckpt_path: {source} was trained with another model shape: model.llama "
            f"{', '.join(differing)}; set model.llama to the checkpoint's values or start a new run"
        )
