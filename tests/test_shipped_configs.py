"""Every shipped fit config takes optimizer steps, saves and resumes, as shipped.

Each ``configs/*_baseline.yaml`` / ``*_jreg.yaml`` runs with only the device (CPU),
the model's depth and width, the batch and the number of steps reduced
(``tests/shipped_fits.py``): its precision, strategy, compile, activation
checkpointing, optimizer, schedule, gradient clipping and callbacks are the
shipped ones, and the test checks that they were. The FSDP2 configs run again
on 2 CPU ranks, and so does every strategy overlay that can run on a CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.shipped_fits import FIRST_STEPS, reduction

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIT_CONFIGS = sorted(
    path.name for pattern in ("*_baseline.yaml", "*_jreg.yaml") for path in CONFIGS.glob(pattern)
)
FSDP2_CONFIGS = [name for name in FIT_CONFIGS if name.startswith("llama_")]
# Strategy overlays, each run on 2 CPU ranks after the config it is meant for.
CPU_OVERLAYS = {
    "ddp_cpu.yaml": "tiny_jreg.yaml",
    "fsdp_cpu.yaml": "tiny_jreg.yaml",
    "ddp.yaml": "llama_300m_jreg.yaml",
}
# The FSDP2 overlay every llama_* config includes: it runs with each of them.
INCLUDED_OVERLAYS = {"fsdp.yaml"}
# Overlays no CPU can run, and why (docs/scale_out.md, "GPU-only options").
GPU_ONLY_OVERLAYS = {
    "fsdp1_gpu.yaml": "Lightning's FSDPStrategy (FSDP1) refuses the CPU accelerator",
}
TWO_RANK_RUNS = {
    **{f"{name[:-5]}": [name] for name in FSDP2_CONFIGS},
    **{
        f"{base[:-5]}+{overlay[:-5]}": [base, f"strategy/{overlay}"]
        for overlay, base in CPU_OVERLAYS.items()
    },
}
# Keys the reduction changes or that name this run's folders.
REDUCED_PREFIXES = ("model.llama.", "data.data_dir", "trainer.default_root_dir")
PATH_KEYS = ("save_dir", "dirpath", "ckpt_path")


def _run_plan(root: Path, data_dir: Path, runs: dict[str, list[str]], devices: int) -> Path:
    plan = [
        {
            "configs": [str(CONFIGS / config) for config in configs],
            "run_dir": str(root / name),
            "data_dir": str(data_dir),
            "devices": devices,
        }
        for name, configs in runs.items()
    ]
    plan_file = root / "plan.json"
    plan_file.write_text(json.dumps(plan))
    launcher = [sys.executable]
    if devices > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    result = subprocess.run(
        [*launcher, str(REPO / "tests" / "shipped_fits.py"), str(plan_file)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def single_process_runs(token_shards, tmp_path_factory):
    """Every fit config, one CPU process: fit, save, resume (one subprocess for all)."""
    runs = {name[:-5]: [name] for name in FIT_CONFIGS}
    return _run_plan(tmp_path_factory.mktemp("shipped"), token_shards, runs, devices=1)


@pytest.fixture(scope="module")
def two_rank_runs(token_shards, tmp_path_factory):
    """The FSDP2 configs and the CPU-capable strategy overlays on 2 gloo ranks."""
    return _run_plan(tmp_path_factory.mktemp("shipped2"), token_shards, TWO_RANK_RUNS, devices=2)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in ("__path__", "config"):
                yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), tree


def _shipped_settings(configs: list[str]) -> dict:
    from tests.test_configs import _parse

    args = [item for config in configs for item in ("--config", CONFIGS / config)]
    return dict(_flatten(_parse(*args).as_dict()))


def _assert_ran_as_shipped(run_dir: Path, configs: list[str], devices: int) -> None:
    """The config the fit saved equals the shipped one, but for the reduction and paths."""
    (saved_file,) = (run_dir / "logs" / "version_0").glob("config.yaml")
    saved = dict(_flatten(yaml.safe_load(saved_file.read_text())))
    shipped = _shipped_settings(configs)
    reduced = set(reduction(run_dir, run_dir, devices))
    for key, value in shipped.items():
        if key in reduced or key.startswith(REDUCED_PREFIXES) or key.endswith(PATH_KEYS):
            continue
        ran = saved.get(key)
        # The saved YAML writes some values as text (a timedelta as "0:30:00").
        assert ran == value or str(ran) == str(value), f"{key}: ran with {ran!r}, ships {value!r}"


def _train_rows(run_dir: Path) -> list[list[dict]]:
    """Each fit's (logger version's) rows that hold a training loss."""
    return [
        [row for row in csv.DictReader(path.open()) if row.get("train/loss")]
        for path in sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    ]


def _assert_took_steps_saved_and_resumed(run_dir: Path, ranks: int) -> None:
    for rank in range(ranks):
        outcome = json.loads((run_dir / f"outcome_rank{rank}.json").read_text())
        assert outcome["ok"], outcome.get("error")
        assert outcome["first_checkpoint_step"] == FIRST_STEPS
        assert outcome["resumed_checkpoint_step"] == FIRST_STEPS + 1
    fit, resumed = _train_rows(run_dir)
    assert (len(fit), len(resumed)) == (FIRST_STEPS, 1)
    for row in fit + resumed:
        assert math.isfinite(float(row["train/loss"]))
        # The gradient norm before clipping, logged beside the loss at every log step.
        assert math.isfinite(float(row["train/grad_norm"])) and float(row["train/grad_norm"]) > 0
        assert row["epoch"] == "0"


@pytest.mark.slow
@pytest.mark.parametrize("config", FIT_CONFIGS)
def test_shipped_config_takes_steps_saves_and_resumes(single_process_runs, config):
    run_dir = single_process_runs / config[:-5]
    _assert_took_steps_saved_and_resumed(run_dir, ranks=1)
    _assert_ran_as_shipped(run_dir, [config], devices=1)


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(TWO_RANK_RUNS))
def test_shipped_config_on_two_cpu_ranks(two_rank_runs, run):
    run_dir = two_rank_runs / run
    _assert_took_steps_saved_and_resumed(run_dir, ranks=2)
    _assert_ran_as_shipped(run_dir, TWO_RANK_RUNS[run], devices=2)
    if not run.endswith("ddp") and not run.endswith("ddp_cpu"):
        # FSDP2: a folder of per-rank shards (save_distributed_checkpoint: true).
        assert sorted(p.name for p in (run_dir / "checkpoints" / "last.ckpt").glob("*.distcp"))


def test_every_strategy_overlay_runs_on_cpu_or_says_why_not():
    overlays = {path.name for path in (CONFIGS / "strategy").glob("*.yaml")}
    assert overlays == set(CPU_OVERLAYS) | set(GPU_ONLY_OVERLAYS) | INCLUDED_OVERLAYS
    for config in FSDP2_CONFIGS:
        assert "config: strategy/fsdp.yaml" in (CONFIGS / config).read_text() or (
            "config: llama_" in (CONFIGS / config).read_text()
        )
    scale_out = (REPO / "docs" / "scale_out.md").read_text()
    for overlay in GPU_ONLY_OVERLAYS:
        assert overlay in scale_out
