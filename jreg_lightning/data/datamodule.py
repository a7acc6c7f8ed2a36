"""A LightningDataModule that streams pre-tokenized litdata shards."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader


class TokenShardDataModule(L.LightningDataModule):
    """Blocks of ``seq_len + 1`` tokens from shards made by ``litdata.optimize``.

    ``data_dir`` holds ``train/`` and ``val/``, each a litdata dataset written
    with ``TokensLoader``. The datasets are built in the dataloader hooks, never
    in ``__init__``: a ``StreamingDataset`` captures the rank and world size
    when it is constructed, and LightningCLI builds this object before the
    process group exists.

    Args:
        data_dir: folder with ``train/`` and ``val/`` shard folders.
        seq_len: tokens per training sequence (each block holds one more, the target shift).
        batch_size: sequences per device per step.
        num_workers: dataloader worker processes.
        shuffle: shuffle the training chunks and blocks (fixed by ``seed``).
        seed: shuffle seed; keep it fixed across a resumed run.
    """

    def __init__(
        self,
        data_dir: str | Path = "data/demo",
        seq_len: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed

    def _dataset(self, split: str, shuffle: bool) -> StreamingDataset:
        return StreamingDataset(
            input_dir=str(self.data_dir / split),
            item_loader=TokensLoader(block_size=self.seq_len + 1),
            shuffle=shuffle,
            drop_last=True,
            seed=self.seed,
        )

    def _loader(self, split: str, shuffle: bool) -> StreamingDataLoader:
        return StreamingDataLoader(
            self._dataset(split, shuffle),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=True,
            drop_last=True,
        )

    def train_dataloader(self) -> StreamingDataLoader:
        """Shuffled training blocks, resumable mid-epoch through the Trainer's loop state."""
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> StreamingDataLoader:
        """Validation blocks in a fixed order."""
        return self._loader("val", False)

    def test_dataloader(self) -> StreamingDataLoader:
        """The validation split, for ``cli.py test``."""
        return self._loader("val", False)
