"""Paper-scale configs have their sizes and shard over the world size; launch scripts
produce commands the CLI parses."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from jreg_lightning.errors import ConfigError
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.strategy import FSDP2Strategy, data_parallel_size
from jreg_tools.cli import JregToolsCLI as JregCLI

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# name: (blocks, lowest and highest total parameter count)
PAPER_SIZES = {
    "llama_300m": (12, 0.27e9, 0.33e9),
    "llama_600m": (24, 0.54e9, 0.66e9),
    "llama_1200m": (40, 1.1e9, 1.3e9),
    "llama_1b": (22, 1.0e9, 1.2e9),
}


class ParseOnlyCLI(JregCLI):
    """The project's CLI parser, stopping before anything is instantiated."""

    def instantiate_classes(self) -> None:
        pass


def _parse(args: list[str]):
    with mock.patch.object(sys, "argv", ["cli.py"]):
        return ParseOnlyCLI(args=args, run=False).config


@pytest.mark.parametrize("size", sorted(PAPER_SIZES))
@pytest.mark.parametrize("kind", ["jreg", "baseline"])
def test_paper_scale_config_builds_on_meta_with_its_parameter_count(size, kind):
    layers, low, high = PAPER_SIZES[size]
    llama = _parse(["--config", f"configs/{size}_{kind}.yaml"]).model.llama
    config = LlamaModelConfig(**{k: v for k, v in vars(llama).items() if k != "__path__"})
    with torch.device("meta"):
        model = build_llama(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == config.num_parameters()
    assert low <= count <= high, f"{size}: {count / 1e9:.3f}B parameters"
    assert config.num_layers == len(model.model.layers) == layers
    # Llama's proportions: head_dim 64 or 128, GQA, SwiGLU ~8/3 d in multiples of 256.
    assert config.head_dim in (64, 128)
    assert config.num_kv_heads < config.num_heads
    assert config.intermediate_size % 256 == 0
    assert 0 <= config.intermediate_size - 8 * config.hidden_size / 3 < 256


@pytest.mark.parametrize(
    "strategy", ["fsdp.yaml", "fsdp1_gpu.yaml", "ddp.yaml", "fsdp_cpu.yaml", "ddp_cpu.yaml"]
)
def test_strategy_composes_with_the_largest_config(strategy):
    config = _parse(
        ["--config", "configs/llama_1200m_jreg.yaml", "--config", f"configs/strategy/{strategy}"]
    )
    assert config.model.llama.num_layers == 40
    init_args = getattr(config.trainer.strategy, "init_args", None)
    if strategy.startswith("fsdp") and strategy != "fsdp1_gpu.yaml":
        # FSDP2 shards over every process, however many the launch starts.
        assert config.trainer.strategy.class_path == "jreg_lightning.strategy.FSDP2Strategy"
        assert (init_args.data_parallel_size, init_args.tensor_parallel_size) == ("world_size", 1)
    else:
        assert init_args is None or "data_parallel_size" not in init_args
    if strategy in ("ddp.yaml", "fsdp1_gpu.yaml"):
        # The GPU opt-in overlays replace FSDP2 whole, its per-block compile included.
        assert not config.model.parallel.compile


@pytest.mark.parametrize(("nodes", "devices"), [(1, 8), (4, 8), (2, 1)])
def test_fsdp2_strategy_shards_over_the_world_size(nodes, devices):
    strategy = FSDP2Strategy()
    strategy.num_nodes = nodes
    strategy.parallel_devices = [torch.device("cpu")] * devices
    with mock.patch.object(ModelParallelStrategy, "setup_environment") as parent:
        strategy.setup_environment()
    parent.assert_called_once()
    # What ModelParallelStrategy then builds its (data_parallel, tensor_parallel) mesh from.
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (nodes * devices, 1)


def test_fsdp2_strategy_refuses_a_tensor_parallel_size_that_does_not_divide():
    assert data_parallel_size(8, 2) == 4
    with pytest.raises(ConfigError, match="tensor_parallel_size=3"):
        data_parallel_size(8, 3)


def _dry_run(script: str, **env: str) -> list[str]:
    """The command a launch script would run, as argv (JREG_DRY_RUN=1)."""
    result = subprocess.run(
        ["bash", f"scripts/{script}", "configs/llama_1b_jreg.yaml", "--trainer.max_steps", "5"],
        cwd=REPO,
        env={**os.environ, "JREG_DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return shlex.split(result.stdout)


@pytest.mark.parametrize(
    ("script", "env", "nodes", "gpus"),
    [
        ("torchrun_fit.sh", {"NNODES": "2", "GPUS_PER_NODE": "4"}, 2, 4),
        ("slurm_fit.sbatch", {"SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS_PER_NODE": "8(x3)"}, 3, 8),
    ],
)
def test_launch_scripts_run_a_config_the_cli_parses(script, env, nodes, gpus):
    command = _dry_run(script, **env)
    cli_args = command[command.index("cli.py") + 2 :]  # after "cli.py fit"
    config = _parse(cli_args)
    # A string on the command line ("4"), which Lightning reads as a device count.
    assert (config.trainer.num_nodes, int(config.trainer.devices)) == (nodes, gpus)
    # No size to edit: FSDP2Strategy takes the world size when the processes start.
    assert config.trainer.strategy.init_args.data_parallel_size == "world_size"
    assert "--trainer.strategy.init_args.data_parallel_size" not in command
    assert config.trainer.max_steps == 5
    if script == "torchrun_fit.sh":
        assert command[command.index("--nproc_per_node") + 1] == str(gpus)
