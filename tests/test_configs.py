"""Every YAML under configs/ parses through the CLI's parser, so no config can rot."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from jreg_lightning.cli import JregCLI
from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.optim import OptimConfig
from jreg_lightning.regularizer import JregConfig, JumpRegularizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
# A file without a model section (a strategy, a logger, ...) is a fragment: it is
# parsed composed with a full config, as users pass it (several --config).
BASE_FOR_FRAGMENTS = CONFIGS / "tiny_jreg.yaml"


class ParseOnlyCLI(JregCLI):
    """The project's CLI parser, stopping before anything is instantiated."""

    def instantiate_classes(self) -> None:
        pass


def _parse(*config_files: Path):
    args = [arg for path in config_files for arg in ("--config", str(path))]
    with mock.patch.object(sys, "argv", ["cli.py"]):
        return ParseOnlyCLI(args=args, run=False).config


def _is_full_config(path: Path) -> bool:
    """A full config names the model's shape; fragments (strategies, ...) do not."""
    return "llama" in ((yaml.safe_load(path.read_text()) or {}).get("model") or {})


def test_there_are_configs():
    names = {path.name for path in ALL_CONFIGS}
    assert {"tiny_jreg.yaml", "tiny_baseline.yaml", "llama_1b_jreg.yaml"} <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_builds_its_settings(path):
    files = [path] if _is_full_config(path) else [BASE_FOR_FRAGMENTS, path]
    config = _parse(*files)
    model = config.model
    # The typed settings validate themselves when built.
    llama = LlamaModelConfig(**vars(model.llama))
    jreg = JregConfig(**vars(model.jreg))
    OptimConfig(**vars(model.optim))
    JumpRegularizer(jreg, llama.num_layers)
    assert config.data.seq_len <= llama.max_position_embeddings, (
        f"{path.name}: data.seq_len exceeds model.llama.max_position_embeddings"
    )
    assert config.trainer.max_steps and config.trainer.max_steps > 0, (
        f"{path.name}: pretraining is driven by trainer.max_steps"
    )


def _pairs():
    for jreg in sorted(CONFIGS.rglob("*_jreg.yaml")):
        baseline = jreg.with_name(jreg.name.replace("_jreg.yaml", "_baseline.yaml"))
        yield pytest.param(jreg, baseline, id=jreg.stem.removesuffix("_jreg"))


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), tree


@pytest.mark.parametrize(("jreg_path", "baseline_path"), list(_pairs()))
def test_pair_differs_only_in_jreg_settings(jreg_path, baseline_path):
    assert baseline_path.exists(), f"{jreg_path.name} has no baseline partner"
    jreg_name, baseline_name = jreg_path.stem, baseline_path.stem
    jreg = dict(_flatten(yaml.safe_load(jreg_path.read_text())))
    # The run directory is named after the file; map it before comparing.
    baseline = {
        key: value.replace(baseline_name, jreg_name) if isinstance(value, str) else value
        for key, value in _flatten(yaml.safe_load(baseline_path.read_text()))
    }
    differing = {key for key in jreg.keys() | baseline.keys() if jreg.get(key) != baseline.get(key)}
    assert differing, "the pair is identical"
    assert all(key.startswith("model.jreg.") for key in differing), sorted(differing)
    assert baseline["model.jreg.lam"] == 0.0 and jreg["model.jreg.lam"] > 0
