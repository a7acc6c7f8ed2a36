"""The study file: which runs to train from one shared fit config, and where they go.

A study YAML (``configs/study/cpu.yaml``) names a base fit config, the data it
needs, and the runs as small overrides of that config::

    base: configs/study/base_cpu.yaml
    output_dir: runs/study/cpu
    report_dir: docs/results
    parallel: 2              # runs at a time
    threads_per_run: 1       # torch threads of each run
    data: {corpus: stdlib_source, corpus_file: ..., data_dir: ..., val_fraction: 0.05}
    baselines: [baseline_s1, baseline_s2]
    best: auto               # the JREG run the report sets against the baseline (or a name)
    runs:
      baseline_s1: {seed: 1, lam: 0.0}
      linear_lam10: {lam: 10.0, weights: linear}

An optional ``logger: configs/logger/mlflow.yaml`` (or ``wandb.yaml``,
``tensorboard.yaml``) sends every run to that tracker: one experiment (W&B
project) named after the study's folder, one tracker run per study run, tagged
with ``lam``, ``weights`` and ``seed``.

Every key of a run besides ``seed`` and the JREG keys (``lam``, ``weights``,
``last_k``, ``final_state``) is a dotted fit-config key (``model.optim.lr``);
a top-level ``overrides`` mapping of dotted keys applies to every run (the
demo uses it to shorten the study's runs).

Runs that differ only in ``seed`` (``linear_lam30``, ``linear_lam30_s2``) are
seeds of one setting: the report pools them as mean ± spread, as it pools the
``baselines`` (``jreg_tools.study.seeds``). No key says so; give a seed
of a setting exactly the settings of its first run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jreg_lightning.errors import ConfigError, InputNotFoundError

JREG_KEYS = ("lam", "weights", "last_k", "explicit_weights", "final_state")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study.

    Attributes:
        name: folder name under the study's ``output_dir``.
        seed: ``seed_everything`` of the run.
        jreg: overrides of ``model.jreg`` (``lam``, ``weights``, ...).
        overrides: other dotted fit-config keys and their values.
    """

    name: str
    seed: int
    jreg: dict
    overrides: dict

    @property
    def is_baseline(self) -> bool:
        return float(self.jreg.get("lam", 0.0)) == 0.0


@dataclass(frozen=True)
class DataSpec:
    """How to build the study's shards when they are missing (``prepare`` arguments)."""

    data_dir: str
    corpus: str = "stdlib_source"
    corpus_file: str = "data/study_corpus/stdlib_source.jsonl"
    vocab_size: int = 8192
    val_fraction: float = 0.05
    max_documents: int | None = None
    num_workers: int | None = 2  # the shards depend on it (each worker mixes its share)


@dataclass(frozen=True)
class StudySpec:
    """A whole study: base config, data, runs, and how they are scheduled."""

    path: Path
    base: Path
    output_dir: Path
    report_dir: Path
    data: DataSpec
    runs: list[RunSpec]
    baselines: list[str]
    best: str | None
    parallel: int = 2
    threads_per_run: int = 1
    title: str = "JREG study"
    notes: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    readme: Path | None = None
    logger: Path | None = None

    def run(self, name: str) -> RunSpec:
        """The run called ``name``."""
        for run in self.runs:
            if run.name == name:
                return run
        raise ConfigError(f"study: no run named {name!r}; known: {[r.name for r in self.runs]}")


def _require(settings: dict, key: str, path: Path):
    if key not in settings:
        raise ConfigError(f"study: {path} has no {key!r}; add it (see configs/study/cpu.yaml)")
    return settings[key]


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study YAML; one-line errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config: study file {path} not found; pass --config a study YAML")
    settings = yaml.safe_load(path.read_text()) or {}
    base = Path(_require(settings, "base", path))
    if not base.is_file():
        raise InputNotFoundError(f"study: base config {base} (named in {path}) does not exist")
    runs_in = _require(settings, "runs", path)
    if not isinstance(runs_in, dict) or not runs_in:
        raise ConfigError(f"study: 'runs' in {path} must map run names to their settings")
    default_seed = int(settings.get("seed", 1))
    runs = []
    for name, values in runs_in.items():
        values = dict(values or {})
        seed = int(values.pop("seed", default_seed))
        jreg = {key: values.pop(key) for key in JREG_KEYS if key in values}
        if "lam" not in jreg:
            raise ConfigError(f"study: run {name!r} in {path} has no 'lam'; set lam: 0.0 or more")
        runs.append(RunSpec(str(name), seed, jreg, values))
    names = [run.name for run in runs]
    baselines = list(settings.get("baselines") or [r.name for r in runs if r.is_baseline])
    best = settings.get("best")
    best = None if best in (None, "auto") else str(best)
    for name in [*baselines, best]:
        if name is not None and name not in names:
            raise ConfigError(f"study: {name!r} in {path} is not one of the runs {names}")
    if not baselines:
        raise ConfigError(f"study: {path} has no baseline run (lam: 0.0); add one")
    parallel = int(settings.get("parallel", 2))
    threads = int(settings.get("threads_per_run", 1))
    if parallel < 1 or threads < 1:
        raise ConfigError(f"study: parallel and threads_per_run in {path} must be at least 1")
    return StudySpec(
        path=path,
        base=base,
        output_dir=Path(_require(settings, "output_dir", path)),
        report_dir=Path(settings.get("report_dir", "docs/results")),
        data=DataSpec(**_require(settings, "data", path)),
        runs=runs,
        baselines=baselines,
        best=best,
        parallel=parallel,
        threads_per_run=threads,
        title=str(settings.get("title", "JREG study")),
        notes=[str(note) for note in settings.get("notes") or []],
        overrides=dict(settings.get("overrides") or {}),
        readme=Path(settings["readme"]) if settings.get("readme") else None,
        logger=_logger_overlay(settings.get("logger"), path),
    )


def _logger_overlay(value, path: Path) -> Path | None:
    """The study's logger overlay, checked to exist and to hold ``trainer.logger``."""
    if not value:
        return None
    overlay = Path(value)
    if not overlay.is_file():
        raise InputNotFoundError(
            f"study: logger {overlay} (named in {path}) does not exist; "
            "name one of configs/logger/*.yaml"
        )
    if not (yaml.safe_load(overlay.read_text()) or {}).get("trainer", {}).get("logger"):
        raise ConfigError(
            f"study: logger {overlay} in {path} has no trainer.logger; "
            "use one of configs/logger/*.yaml"
        )
    return overlay
