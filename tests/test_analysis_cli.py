"""End to end: fit logs to CSV + TensorBoard, validate writes its table, analyze reads the run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jreg_tools.cli import main
from tests.cli_run import checkpoint_callback
from tests.conftest import TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]


def _override(run_dir: Path, data_dir: Path) -> Path:
    logger = yaml.safe_load((REPO / "configs/logger/tensorboard.yaml").read_text())
    loggers = logger["trainer"]["logger"]
    for entry in loggers:
        entry["init_args"]["save_dir"] = str(run_dir)
    config = {
        "trainer": {
            "max_steps": 2,
            "log_every_n_steps": 1,
            "val_check_interval": 2,
            "limit_val_batches": 2,
            "default_root_dir": str(run_dir),
            "logger": loggers,
            "callbacks": [checkpoint_callback(run_dir / "checkpoints", save_last=True)],
        },
        "model": {"llama": dict(TINY_LLAMA)},
        "data": {"data_dir": str(data_dir), "seq_len": 32, "batch_size": 2},
    }
    path = run_dir / "override.yaml"
    run_dir.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_validate_analyze_a_run(tmp_path, token_shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    override = _override(run, token_shards)
    base = ["--config", str(REPO / "configs/tiny_jreg.yaml"), "--config", str(override)]
    main(["fit", *base])

    # TensorBoard got the per-layer profile of the training log steps.
    events = sorted((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    layers = TINY_LLAMA["num_layers"]
    assert {f"train/psi/layer_{i:02d}" for i in range(1, layers + 1)} <= set(tags)

    main(["validate", *base, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    [report_json] = sorted(run.rglob("validation_profile.json"))
    report = json.loads(report_json.read_text())
    assert len(report["profile"]) == layers and len(report["early_exit_loss"]) == layers
    # The last block's early exit is the model's own loss.
    assert report["early_exit_loss"][-1] == pytest.approx(report["loss"], rel=1e-5)
    with (report_json.parent / "validation_profile.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["layer"]) for r in rows] == list(range(1, layers + 1))
    assert float(rows[1]["psi"]) == pytest.approx(report["profile"][1])

    main(
        [
            "analyze",
            "--models",
            f"[{run / 'logs'}]",
            "--stage",
            "train",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    series = json.loads((tmp_path / "out" / "analysis.json").read_text())["series"]["logs"]
    assert series["steps"] == [0, 1]
    assert (tmp_path / "out" / "heatmap_logs.png").is_file()


@pytest.mark.slow
def test_two_process_fsdp_validate_writes_the_table_once(tmp_path, token_shards):
    run = tmp_path / "run"
    override = _override(run, token_shards)
    base = ["--config", str(REPO / "configs/tiny_jreg.yaml"), "--config", str(override)]
    main(["fit", *base, "--trainer.max_steps", "1", "--trainer.val_check_interval", "1"])
    command = [sys.executable, str(REPO / "cli.py"), "validate", *base[:2]]
    command += ["--config", str(REPO / "configs/strategy/fsdp_cpu.yaml"), *base[2:]]
    command += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Early-exit losses are reduced over both ranks; only rank 0 writes.
    [report_json] = sorted(run.rglob("validation_profile.json"))
    report = json.loads(report_json.read_text())
    assert len(report["early_exit_loss"]) == TINY_LLAMA["num_layers"]
    assert report["early_exit_loss"][-1] == pytest.approx(report["loss"], rel=1e-5)
