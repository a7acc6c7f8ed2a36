"""Every YAML under configs/ parses through the CLI's parser, so no config can rot."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.optim import OptimConfig
from jreg_lightning.regularizer import JregConfig, JumpRegularizer
from jreg_tools.cli import JregToolsCLI as JregCLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Study files (``configs/study/cpu.yaml``) list runs of a base fit config; they are
# checked by ``test_study_files_load``, their base configs like any fit config.
STUDY_FILES = sorted(
    path for path in CONFIGS.rglob("*.yaml") if "base" in (yaml.safe_load(path.read_text()) or {})
)
# base.yaml is parsed through every size config that includes it.
ALL_CONFIGS = sorted(set(CONFIGS.rglob("*.yaml")) - set(STUDY_FILES) - {CONFIGS / "base.yaml"})
# Files in these folders are the value of one key (``llama: model/llama_1b.yaml``).
VALUE_FOLDERS = {"model": "model.llama", "jreg": "model.jreg"}
# Files in these folders are overlays, passed after a full config (several --config).
FRAGMENT_FOLDERS = {"strategy", "logger", "eval"}
BASE_FOR_FRAGMENTS = CONFIGS / "tiny_jreg.yaml"
# Keys that name the run (its directory) and so differ within a baseline/JREG pair.
RUN_PATH_KEYS = (
    "trainer.default_root_dir",
    "trainer.logger.init_args.save_dir",
    "trainer.callbacks.0.init_args.dirpath",
)


class ParseOnlyCLI(JregCLI):
    """The project's CLI parser, stopping before anything is instantiated."""

    def instantiate_classes(self) -> None:
        pass


def _parse(*args: str | Path):
    args = [str(arg) for arg in args]
    with mock.patch.object(sys, "argv", ["cli.py"]):
        return ParseOnlyCLI(args=args, run=False).config


def _folder(path: Path) -> str:
    return path.relative_to(CONFIGS).parts[0] if path.parent != CONFIGS else ""


def _parse_as_used(path: Path):
    """Parse ``path`` the way users pass it: alone, as an overlay, or as a key's value."""
    folder = _folder(path)
    if folder in VALUE_FOLDERS:
        return _parse("--config", BASE_FOR_FRAGMENTS, f"--{VALUE_FOLDERS[folder]}", path)
    if folder in FRAGMENT_FOLDERS:
        return _parse("--config", BASE_FOR_FRAGMENTS, "--config", path)
    return _parse("--config", path)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in ("__path__", "config"):  # where a value was read from
                yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), tree


def _settings(path: Path) -> dict:
    """The parsed config of ``path`` as flat ``{"trainer.max_steps": 100, ...}``."""
    return dict(_flatten(_parse("--config", path).as_dict()))


def test_study_files_load():
    from jreg_tools.study.spec import load_study

    assert STUDY_FILES, "configs/study/ ships at least the CPU study"
    for path in STUDY_FILES:
        spec = load_study(path)
        assert spec.base in ALL_CONFIGS or spec.base.resolve() in ALL_CONFIGS
        for run in spec.runs:
            JregConfig(**{**_fields(_parse("--config", spec.base).model.jreg), **run.jreg})


def test_there_are_configs():
    names = {str(path.relative_to(CONFIGS)) for path in ALL_CONFIGS}
    assert {"tiny_jreg.yaml", "tiny_baseline.yaml", "llama_1b_jreg.yaml"} <= names
    assert {"model/llama_1b.yaml", "jreg/off.yaml", "jreg/linear.yaml"} <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_builds_its_settings(path):
    config = _parse_as_used(path)
    model = config.model
    # The typed settings validate themselves when built.
    llama = LlamaModelConfig(**_fields(model.llama))
    jreg = JregConfig(**_fields(model.jreg))
    OptimConfig(**_fields(model.optim))
    JumpRegularizer(jreg, llama.num_layers)
    assert config.data.seq_len <= llama.max_position_embeddings, (
        f"{path.name}: data.seq_len exceeds model.llama.max_position_embeddings"
    )
    assert config.trainer.max_steps and config.trainer.max_steps > 0, (
        f"{path.name}: pretraining is driven by trainer.max_steps"
    )
    if _folder(path) == "" and config.trainer.callbacks:  # the shipped training configs
        paths = [callback.class_path for callback in config.trainer.callbacks]
        assert "jreg_lightning.throughput.TokenThroughputMonitor" in paths


def _run_paths(config) -> tuple[str, list[str], list[str]]:
    """``default_root_dir``, every logger's ``save_dir``, every checkpoint ``dirpath``."""
    trainer = config.trainer
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    callbacks = trainer.callbacks or []
    return (
        trainer.default_root_dir,
        [logger.init_args.save_dir for logger in loggers],
        [
            callback.init_args.dirpath
            for callback in callbacks
            if callback.class_path.endswith("ModelCheckpoint")
        ],
    )


@pytest.mark.parametrize(
    "path",
    # Study base configs are excluded: the study runner writes each run's paths.
    [path for path in ALL_CONFIGS if _folder(path) not in {*VALUE_FOLDERS, "study"}],
    ids=lambda p: str(p.relative_to(CONFIGS)),
)
def test_run_paths_derive_from_default_root_dir(path):
    """One key names the run: logs in it, checkpoints in ``<run>/checkpoints``."""
    run, save_dirs, dirpaths = _run_paths(_parse_as_used(path))
    assert run and run.startswith("runs/"), run
    assert save_dirs and all(save_dir == run for save_dir in save_dirs), save_dirs
    assert dirpaths == [f"{run}/checkpoints"], dirpaths


def test_run_paths_follow_a_changed_default_root_dir(tmp_path):
    """One flag moves the whole run, with any logger overlay; ``{run}`` is the run directory."""
    config = _parse(
        "--config",
        CONFIGS / "llama_1b_jreg.yaml",
        "--config",
        CONFIGS / "logger" / "tensorboard.yaml",
        "--trainer.default_root_dir",
        tmp_path / "mine",
    )
    run, save_dirs, dirpaths = _run_paths(config)
    assert run == str(tmp_path / "mine")
    assert save_dirs == [run, run] and dirpaths == [f"{run}/checkpoints"]

    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": "{run}/csv", "name": "logs"},
                    },
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": str(tmp_path / "elsewhere")},
                        }
                    ],
                }
            }
        )
    )
    _, save_dirs, dirpaths = _run_paths(
        _parse("--config", CONFIGS / "tiny_jreg.yaml", "--config", explicit)
    )
    assert save_dirs == ["runs/tiny_jreg/csv"]
    assert dirpaths == [str(tmp_path / "elsewhere")]  # a path written out in full is kept


def _fields(namespace) -> dict:
    return {key: value for key, value in vars(namespace).items() if key != "__path__"}


def _pairs():
    for jreg in sorted(CONFIGS.rglob("*_jreg.yaml")):
        baseline = jreg.with_name(jreg.name.replace("_jreg.yaml", "_baseline.yaml"))
        yield pytest.param(jreg, baseline, id=jreg.stem.removesuffix("_jreg"))


@pytest.mark.parametrize(("jreg_path", "baseline_path"), list(_pairs()))
def test_pair_differs_only_in_jreg_settings(jreg_path, baseline_path):
    assert baseline_path.exists(), f"{jreg_path.name} has no baseline partner"
    jreg, baseline = _settings(jreg_path), _settings(baseline_path)
    differing = {key for key in jreg.keys() | baseline.keys() if jreg.get(key) != baseline.get(key)}
    assert differing, "the pair is identical"
    assert all(key.startswith("model.jreg.") or key in RUN_PATH_KEYS for key in differing), sorted(
        differing
    )
    assert baseline["model.jreg.lam"] == 0.0 and jreg["model.jreg.lam"] > 0
    # Each run writes into its own directory, named after its file.
    for key in RUN_PATH_KEYS:
        if key in jreg:
            assert f"runs/{jreg_path.stem}" in jreg[key] and baseline[key] != jreg[key], key


GPU_SIZES = sorted(path.stem for path in (CONFIGS / "model").glob("llama_*.yaml"))


@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("kind", ["jreg", "baseline"])
def test_gpu_size_config_is_its_shape_plus_fsdp2(size, kind):
    """The shape is named once (configs/model/), FSDP2 comes from strategy/fsdp.yaml."""
    run = _settings(CONFIGS / f"{size}_{kind}.yaml")
    shape = dict(
        _flatten(
            _parse(
                "--config", BASE_FOR_FRAGMENTS, "--model.llama", CONFIGS / "model" / f"{size}.yaml"
            ).as_dict()
        )
    )
    assert {k: v for k, v in run.items() if k.startswith("model.llama.")} == {
        k: v for k, v in shape.items() if k.startswith("model.llama.")
    }
    assert run["trainer.strategy.class_path"] == "jreg_lightning.strategy.FSDP2Strategy"
    assert run["trainer.strategy.init_args.data_parallel_size"] == "world_size"
    assert run["trainer.strategy.init_args.tensor_parallel_size"] == 1
    assert (run["trainer.accelerator"], run["trainer.devices"]) == ("gpu", "auto")
    assert run["trainer.precision"] == "bf16-mixed"
    assert run["model.parallel.compile"] and run["model.parallel.activation_checkpointing"]
    assert run["trainer.default_root_dir"] == f"runs/{size}_{kind}"
