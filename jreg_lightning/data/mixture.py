"""Several prepared datasets sampled by weight (``data.sources``), resumable exactly.

Mixing is per batch: each rank's batch comes whole from one source, drawn with the
source's weight; the ranks draw independently, so a global batch over many devices
mixes the sources. The draw of batch ``i`` is a pure function of ``(seed, rank, i)``, and each
source keeps its own resumable loader (its own shuffle, epochs and workers), so a run
restored from a checkpoint (the batch count and every source loader's position) draws
and reads exactly what an uninterrupted run would, also after a small source has gone
round several times. A source that runs out starts its next epoch at once.

litdata's ``CombinedStreamingDataset`` (weights need ``iterate_over_all=False``) was
tried first and fails the test of this module's purpose: its epoch ends as soon as any
source runs out, and the next epoch starts every source over (measured with the test's
sources: an epoch of 5 batches, when the small source's 24 blocks were used up), so a
small source never goes round while a large one keeps its place, and the large one is
reshuffled from its start every few batches. Resuming it after a source has gone round
more than once also fails upstream (litData #694). ``tests/test_mixture.py`` checks the
behaviour built here instead.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np

from jreg_lightning.data.shard_meta import read_meta
from jreg_lightning.data.storage import join, read_text
from jreg_lightning.errors import ConfigError

# The mixture's nominal length in batches: one endless Lightning epoch (the sources have
# their own epochs; trainer.max_steps ends the run). A length, unlike none, also keeps
# Lightning from fetching a batch ahead, which would put the saved position one batch on.
ENDLESS = 2**40
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
# What every source must share with the first one (recorded by prepare in meta.json).
SHARED_FIELDS = {"seq_len": "--seq_len", "vocab_size": "--tokenizer", "eos_id": "--tokenizer"}


@dataclass
class DataSource:
    """One prepared dataset of a mixture.

    Attributes:
        name: names its metrics (``val/<name>/loss``, ``data/share/<name>``).
        data_dir: a ``cli.py prepare`` output, a folder or a URL.
        weight: relative sampling weight (normalised over the sources).
    """

    name: str
    data_dir: str
    weight: float = 1.0


def check_sources(sources: list[DataSource], storage_options: dict | None = None) -> list[dict]:
    """Names, weights and the prepared data of each source; returns their ``meta.json``.

    Every source must be prepared with the same tokenizer (its ``tokenizer.json``),
    vocabulary, EOS and ``seq_len`` as the first; a mismatch names both sources.
    """
    if not sources:
        raise ConfigError("data.sources is empty; list at least one {name, data_dir, weight}")
    names = [source.name for source in sources]
    for source in sources:
        if not NAME_PATTERN.match(source.name):
            raise ConfigError(
                f"data.sources: name {source.name!r} is not letters, digits, '_', '-', '.'; "
                "it names the source's metrics"
            )
        if not (math.isfinite(source.weight) and source.weight > 0):
            raise ConfigError(
                f"data.sources.{source.name}.weight is {source.weight}; give a positive number"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"data.sources: the name {duplicates[0]} is used twice; rename one")
    metas = []
    for source in sources:
        meta = read_meta(source.data_dir, storage_options)
        if meta is None:
            raise ConfigError(
                f"data.sources.{source.name}: {source.data_dir} has no meta.json; give each "
                "source a folder written by `cli.py prepare`"
            )
        meta = {**meta, "tokenizer_sha1": _tokenizer_digest(source, meta, storage_options)}
        metas.append(meta)
    first, first_meta = sources[0], metas[0]
    for source, meta in zip(sources[1:], metas[1:], strict=True):
        for field, flag in {**SHARED_FIELDS, "tokenizer_sha1": "--tokenizer"}.items():
            if meta.get(field) != first_meta.get(field):
                raise ConfigError(
                    f"data.sources: {source.name} ({source.data_dir}) and {first.name} "
                    f"({first.data_dir}) differ in {field.replace('_sha1', '')} "
                    f"({meta.get(field)} vs {first_meta.get(field)}); prepare both with the "
                    f"same {flag}"
                )
    return metas


def _tokenizer_digest(source: DataSource, meta: dict, storage_options: dict | None) -> str | None:
    recorded = meta.get("tokenizer")
    if not recorded:
        return None
    text = read_text(
        join(source.data_dir, recorded), f"data.sources.{source.name}", storage_options
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12] if text is not None else None


def normalised_weights(sources: list[DataSource]) -> dict[str, float]:
    """``{name: weight / sum of weights}`` in the sources' order."""
    total = sum(source.weight for source in sources)
    return {source.name: source.weight / total for source in sources}


def source_of_batch(
    seed: int, index: int, names: list[str], probabilities: np.ndarray, rank: int = 0
) -> str:
    """The source batch ``index`` of ``rank`` comes from: a pure function of its arguments."""
    draw = np.random.default_rng([seed, rank, index]).choice(len(names), p=probabilities)
    return names[int(draw)]


class WeightedMixture:
    """Batches from several loaders, one source per batch, drawn by weight; resumable.

    Lightning saves ``state_dict()`` with the loop state and calls
    ``load_state_dict()`` before iterating again on a resume.

    Args:
        loaders: ``{name: loader}``, each a resumable litdata loader of one source.
        weights: ``{name: share}`` summing to 1.
        seed: the seed of the draw.
        tokens_per_batch: tokens in one batch (for the realized shares).
        rank: this process's global rank (each rank draws its own sequence).
    """

    def __init__(
        self,
        loaders: dict[str, Any],
        weights: dict[str, float],
        seed: int,
        tokens_per_batch: int,
        rank: int = 0,
    ) -> None:
        self.loaders = loaders
        self.rank = rank
        self.names = list(loaders)
        self.probabilities = np.array([weights[name] for name in self.names], dtype=np.float64)
        self.seed = seed
        self.tokens_per_batch = tokens_per_batch
        self.batches = 0
        self.batches_per_source = dict.fromkeys(self.names, 0)
        self.epochs = dict.fromkeys(self.names, 0)
        self._iterators: dict[str, Iterator] = {}
        self._started: set[str] = set()

    def __len__(self) -> int:
        return ENDLESS

    def __iter__(self) -> Iterator:
        self._iterators = {}
        while True:
            name = source_of_batch(
                self.seed, self.batches, self.names, self.probabilities, self.rank
            )
            batch = self._next_batch(name)
            self.batches += 1
            self.batches_per_source[name] += 1
            yield batch

    def _next_batch(self, name: str):
        iterator = self._iterators.get(name)
        if iterator is None:
            iterator = self._iterators[name] = iter(self.loaders[name])
            self._started.add(name)
        try:
            return next(iterator)
        except StopIteration:
            self.epochs[name] += 1
            iterator = self._iterators[name] = iter(self.loaders[name])
            return next(iterator)

    def token_shares(self) -> dict[str, float]:
        """The realized share of the training tokens of each source so far."""
        total = max(1, self.batches)
        return {name: count / total for name, count in self.batches_per_source.items()}

    def state_dict(self) -> dict:
        """The batch count, each source's counts and epochs, and its loader's position."""
        return {
            "batches": self.batches,
            "batches_per_source": dict(self.batches_per_source),
            "epochs": dict(self.epochs),
            "loaders": {name: self.loaders[name].state_dict() for name in sorted(self._started)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was saved (a checkpoint of the same sources)."""
        saved = set(state["batches_per_source"])
        if saved != set(self.names):
            raise ConfigError(
                f"data.sources: the checkpoint mixed {sorted(saved)}, this run names "
                f"{sorted(self.names)}; resume with the same sources"
            )
        self.batches = int(state["batches"])
        self.batches_per_source = {k: int(v) for k, v in state["batches_per_source"].items()}
        self.epochs = {k: int(v) for k, v in state["epochs"].items()}
        for name, loader_state in state["loaders"].items():
            self.loaders[name].load_state_dict(loader_state)
            self._started.add(name)


class SourceShares(L.Callback):
    """Logs the realized share of each source's batches so far (``data/share/<name>``).

    ``cli.py`` adds it to every run; without ``data.sources`` it does nothing. The
    loggers write it at their log steps.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Log the shares of the batches drawn so far."""
        mixture = trainer.train_dataloader
        if not isinstance(mixture, WeightedMixture):
            return
        shares = {f"data/share/{name}": v for name, v in mixture.token_shares().items()}
        pl_module.log_dict(shares, on_step=True, on_epoch=False)
