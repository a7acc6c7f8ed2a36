"""Two torchrun "nodes" on localhost through ``scripts/torchrun_fit.sh``: fit, agree, resume.

Each node is one torchrun agent with one CPU process (``--nnodes 2
--nproc-per-node 1``, static rendezvous on 127.0.0.1), so the run crosses the
node boundary exactly as a two-node GPU job does: FSDP2 over a world of 2, one
rank per node, checkpoints in a folder both nodes write to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric.plugins.environments.lightning import find_free_network_port

from tests.cli_run import (
    REPO,
    checkpoint_callback,
    logged_metric,
    rank_recorder,
    tiny_override,
)

LAUNCHER = REPO / "scripts" / "torchrun_fit.sh"
NODES = 2


def _launch_two_nodes(run_dir: Path, data_dir: Path, max_steps: int, resume: bool) -> None:
    """Start both nodes' ``torchrun_fit.sh`` at once and wait for both to finish."""
    checkpoints = checkpoint_callback(
        run_dir / "checkpoints", save_last=True, every_n_train_steps=2
    )
    recorder = rank_recorder(run_dir / f"ranks_{max_steps}", match=["/"])
    override = tiny_override(
        run_dir, data_dir, max_steps, val_check_interval=2, callbacks=[checkpoints, recorder]
    )
    optim = run_dir / "optim.yaml"
    optim.write_text(yaml.safe_dump({"model": {"optim": {"lr": 0.003, "warmup_steps": 1}}}))
    args = ["configs/tiny_jreg.yaml", "--config", str(override), "--config", str(optim)]
    if resume:
        args += ["--ckpt_path", "last"]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "STRATEGY": "configs/strategy/fsdp_cpu.yaml",
        "GPUS_PER_NODE": "1",
        "NNODES": str(NODES),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(find_free_network_port()),
        "PYTHONUNBUFFERED": "1",
    }
    nodes, logs = [], []
    for node_rank in range(NODES):
        log = run_dir / f"node{node_rank}_{max_steps}.log"
        logs.append(log)
        nodes.append(
            subprocess.Popen(
                ["bash", str(LAUNCHER), *args],
                env={**env, "NODE_RANK": str(node_rank)},
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: torchrun and its worker
            )
        )
    try:
        codes = [node.wait(timeout=420) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    if codes != [0] * NODES:
        tails = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)
        pytest.fail(f"torchrun_fit.sh exit codes {codes}\n{tails}")


def _rank_values(run_dir: Path, max_steps: int, stage: str) -> list[dict]:
    """Per rank: ``{"val2": {"val/loss": ...}, ...}``, the entries of one stage."""
    out = []
    for rank in range(NODES):
        steps = json.loads((run_dir / f"ranks_{max_steps}" / f"rank{rank}.json").read_text())
        out.append({key: values for key, values in steps.items() if key.startswith(stage)})
    return out


def _checkpoint_step(path: Path) -> int:
    return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_two_torchrun_nodes_train_agree_and_resume(token_shards, tmp_path):
    run_dir = tmp_path / "run"
    _launch_two_nodes(run_dir, token_shards, max_steps=4, resume=False)
    logs = run_dir / "logs"
    ce = logged_metric(logs / "version_0" / "metrics.csv", "train/ce")
    assert sorted(ce) == [0, 1, 2, 3]
    val = logged_metric(logs / "version_0" / "metrics.csv", "val/loss")
    assert len(val) == 2, val
    # Both nodes' ranks logged the same validation metrics (sanity check included),
    # and rank 0's CSV has them.
    ranks = _rank_values(run_dir, 4, "val")
    assert sorted(ranks[0]) == ["val0", "val2", "val4"]
    assert ranks[0] == ranks[1]
    assert "val/psi/layer_04" in ranks[0]["val4"] and "val/jump_strength" in ranks[0]["val4"]
    assert [ranks[1][key]["val/loss"] for key in ("val2", "val4")] == pytest.approx(
        [val[step] for step in sorted(val)], rel=1e-6
    )
    assert _checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 4

    # A second launch of both nodes with --ckpt_path last continues at step 4.
    _launch_two_nodes(run_dir, token_shards, max_steps=6, resume=True)
    resumed = logged_metric(logs / "version_1" / "metrics.csv", "train/ce")
    assert sorted(resumed) == [4, 5]
    ranks = _rank_values(run_dir, 6, "val")
    assert "val6" in ranks[0] and ranks[0] == ranks[1]
    assert _checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 6
