"""A LightningDataModule that streams pre-tokenized litdata shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

from jreg_lightning.data.mixture import (
    DataSource,
    WeightedMixture,
    check_sources,
    normalised_weights,
)
from jreg_lightning.data.shard_meta import chunk_tokens, read_index, read_meta, usable_tokens
from jreg_lightning.data.storage import as_location, check_url, is_remote, join
from jreg_lightning.errors import ConfigError


class ResumableTokenLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose restored position applies to one epoch only.

    litdata clears its ``restore`` flag only when the restored iterator is run to
    exhaustion. Lightning stops after the epoch's known number of batches
    without that last ``next()``, so on the following epoch litdata would
    replay the restored position and repeat the epoch's shuffle (seen: a
    resumed run diverged from an uninterrupted one at the first batch of the
    next epoch). A second ``iter()`` after a restore therefore starts a fresh
    epoch, as it does in an uninterrupted run.
    """

    _restored_epoch_started = False

    def __iter__(self):
        if self.restore and self._restored_epoch_started:
            self.restore = False
        self._restored_epoch_started = self.restore
        yield from super().__iter__()


# The most loader workers ``num_workers: auto`` starts per rank: token blocks need no decoding.
MAX_AUTO_WORKERS = 8


def loader_workers(requested: int | Literal["auto"], ranks_per_node: int) -> int:
    """Loader worker processes per rank: ``requested``, or for ``auto`` the cores that fit.

    ``auto`` shares this process's CPU cores among the ranks of the node and keeps
    one core per rank for the training loop: ``cores // ranks - 1``, at most
    ``MAX_AUTO_WORKERS``, at least 0 (load in the main process).
    """
    if requested != "auto":
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_rank = (cores or 1) // max(1, ranks_per_node)
    return max(0, min(MAX_AUTO_WORKERS, per_rank - 1))


# Splits each stage reads (also what cli.py checks before it starts the stage).
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("val",)}


class TokenShardDataModule(L.LightningDataModule):
    """Blocks of ``seq_len + 1`` tokens from shards made by ``litdata.optimize``.

    ``data_dir`` holds ``train/`` and ``val/``, each a litdata dataset written
    with ``TokensLoader``. The datasets are built in the dataloader hooks, never
    in ``__init__``: a ``StreamingDataset`` captures the rank and world size
    when it is constructed, and LightningCLI builds this object before the
    process group exists.

    ``setup`` logs the token accounting: tokens on disk, tokens usable as
    blocks (litdata's ``TokensLoader`` drops each chunk's tail shorter than a
    block) and the tokens one epoch really yields across all ranks. The checks
    against the model are ``jreg_lightning.preflight``'s, made by ``cli.py``
    before a stage starts. Resume: the Trainer saves
    and restores the ``StreamingDataLoader`` position when ``max_steps`` drives
    the run; keep ``seed``, ``shuffle``, ``batch_size`` and the device count fixed.

    Args:
        data_dir: folder with ``train/`` and ``val/`` shard folders.
        seq_len: tokens per training sequence (each block holds one more, the target shift).
        batch_size: sequences per device per step.
        num_workers: loader worker processes per rank, or ``auto``: the node's cores
            shared among its ranks, one left per rank for the training loop
            (``loader_workers``). The order of the batches depends on the count, and a
            resume needs the same count: pin a number to move a run between machines.
        shuffle: shuffle the training chunks and blocks (fixed by ``seed``).
        seed: shuffle seed; keep it fixed across a resumed run.
        cache_dir: local cache of chunks streamed from a URL ``data_dir`` (one subfolder
            per split); None: litdata's default, ``~/.lightning/chunks`` (or
            ``$LITDATA_CACHE_DIR``). Keep it fixed across a resumed run.
        max_cache_size: the most the cache of one split may hold before litdata deletes
            chunks it has served, e.g. ``"100GB"`` (litdata's default).
        storage_options: extra arguments of the object-store client (boto3's ``client``
            for ``s3://``); endpoint and credentials come from the AWS environment.
        sources: a weighted mixture of prepared datasets (``{name, data_dir, weight}``
            each) that replaces ``data_dir``: each training batch comes from one source,
            drawn by weight (``jreg_lightning.data.mixture``); each source's ``val/``
            split is validated on its own and logged under its name.
    """

    def __init__(
        self,
        data_dir: str | Path = "data/demo",
        seq_len: int = 256,
        batch_size: int = 8,
        num_workers: int | Literal["auto"] = 0,
        shuffle: bool = True,
        seed: int = 42,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
        storage_options: dict | None = None,
        sources: list[DataSource] | None = None,
    ) -> None:
        super().__init__()
        self.sources = [s if isinstance(s, DataSource) else DataSource(**s) for s in sources or []]
        # With sources, the first one stands in wherever one folder is read (its meta.json).
        self.data_dir = as_location(self.sources[0].data_dir if self.sources else data_dir)
        for location in [s.data_dir for s in self.sources] or [self.data_dir]:
            if is_remote(location):
                check_url(str(location), "data.data_dir")
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.storage_options = storage_options
        self.seq_len = seq_len
        self.batch_size = batch_size
        if num_workers != "auto" and num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 or auto, got {num_workers}")
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.accounting: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ accounting
    def setup(self, stage: str) -> None:
        """Log the token accounting of this stage's splits (read from their ``index.json``).

        The shards are checked against the model and the batch size by
        ``jreg_lightning.preflight`` before ``cli.py`` starts a stage; a missing
        or broken split folder fails here in one line (``read_index``).
        """
        meta = read_meta(self.data_dir, self.storage_options)
        packed_for = meta.get("seq_len") if meta else None
        if packed_for is not None and packed_for != self.seq_len:
            rank_zero_warn(
                f"data.seq_len={self.seq_len} but the shards in {self.data_dir} were packed for "
                f"seq_len={packed_for}: each chunk drops up to {self.seq_len} tokens (see the "
                "accounting below); re-run prepare with --seq_len to match"
            )
        if self.sources:
            check_sources(self.sources, self.storage_options)
        block = self.seq_len + 1
        for name, folder in self._folders().items():
            label = f"{name}/" if self.sources else ""
            for split in STAGE_SPLITS.get(stage, ("train", "val")):
                per_chunk = chunk_tokens(read_index(join(folder, split), self.storage_options))
                total, usable = sum(per_chunk), usable_tokens(per_chunk, block)
                self.accounting[f"{label}{split}"] = {"tokens": total, "usable_tokens": usable}
                lost = total - usable
                rank_zero_info(
                    f"data: {label}{split}: {total:,} tokens in shards, {usable:,} usable as "
                    f"{usable // block:,} blocks of seq_len+1={block} "
                    f"({lost:,} = {100 * lost / max(total, 1):.2f}% dropped at chunk ends)"
                )

    def _folders(self) -> dict[str, str | Path]:
        """``{source name: folder}``; one unnamed entry without ``sources``."""
        if self.sources:
            return {source.name: as_location(source.data_dir) for source in self.sources}
        return {"": self.data_dir}

    @property
    def source_names(self) -> list[str] | None:
        """The mixture's source names (the order of the validation loaders), or None."""
        return [source.name for source in self.sources] or None

    @property
    def source_weights(self) -> dict[str, float] | None:
        """``{name: normalised weight}`` of the mixture, or None."""
        return normalised_weights(self.sources) if self.sources else None

    def _record_epoch(self, split: str, dataset: StreamingDataset) -> None:
        """Tokens one epoch yields over all ranks (each rank drops its partial last batch)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        batches = len(dataset) // self.batch_size
        tokens = batches * self.batch_size * world * (self.seq_len + 1)
        entry = self.accounting.setdefault(split, {})
        entry.update({"batches_per_epoch": batches, "epoch_tokens": tokens})
        total = entry.get("tokens")
        share = f" = {100 * tokens / total:.1f}% of the tokens written" if total else ""
        rank_zero_info(
            f"data: {split}: one epoch = {batches:,} batches per rank x {world} rank(s) x "
            f"{self.batch_size} x {self.seq_len + 1} = {tokens:,} tokens{share}; "
            f"{self.workers_per_rank()} loader worker(s) per rank"
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Token ids stored as uint16 become int32 (the embedding takes int32 / int64)."""
        if isinstance(batch, torch.Tensor) and batch.dtype == torch.uint16:
            return batch.to(torch.int32)
        return batch

    # ------------------------------------------------------------- loaders
    def _dataset(self, split: str, shuffle: bool, name: str = "") -> StreamingDataset:
        cache = str(Path(self.cache_dir, name, split)) if self.cache_dir else None
        return StreamingDataset(
            input_dir=str(join(self._folders()[name], split)),
            cache_dir=cache,
            max_cache_size=self.max_cache_size,
            storage_options=self.storage_options,
            item_loader=TokensLoader(block_size=self.seq_len + 1),
            shuffle=shuffle,
            drop_last=True,
            seed=self.seed,
        )

    def workers_per_rank(self) -> int:
        """``num_workers`` resolved for this node (``loader_workers``)."""
        ranks = getattr(self.trainer, "num_devices", 1) if self.trainer is not None else 1
        return loader_workers(self.num_workers, ranks)

    def _loader(self, split: str, shuffle: bool, name: str = "") -> StreamingDataLoader:
        return ResumableTokenLoader(
            self._dataset(split, shuffle, name),
            batch_size=self.batch_size,
            num_workers=self.workers_per_rank(),
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )

    def train_dataloader(self) -> StreamingDataLoader | WeightedMixture:
        """Shuffled training blocks, resumable mid-epoch through the Trainer's loop state.

        With ``sources``: a ``WeightedMixture`` of one loader per source (no epochs:
        a source that runs out starts again; ``trainer.max_steps`` ends the run).
        """
        if not self.sources:
            loader = self._loader("train", self.shuffle)
            self._record_epoch("train", loader.dataset)
            return loader
        loaders = {}
        for name in self._folders():
            loaders[name] = self._loader("train", self.shuffle, name)
            self._record_epoch(f"{name}/train", loaders[name].dataset)
        tokens = self.batch_size * (self.seq_len + 1)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        weights = normalised_weights(self.sources)
        return WeightedMixture(loaders, weights, self.seed, tokens, rank)

    def val_dataloader(self) -> StreamingDataLoader | list[StreamingDataLoader]:
        """Validation blocks in a fixed order; with ``sources``, one loader per source."""
        if not self.sources:
            return self._loader("val", False)
        return [self._loader("val", False, name) for name in self._folders()]

    def test_dataloader(self) -> StreamingDataLoader | list[StreamingDataLoader]:
        """The validation split(s), for ``cli.py test``."""
        return self.val_dataloader()
