"""2-process CPU fits through ``cli.py``, FSDP2 and DDP: learn, agree, checkpoint, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jreg_lightning.checkpoints import is_distributed_checkpoint, load_full_state_dict
from jreg_lightning.module import JregLightningModule
from tests.cli_run import (
    checkpoint_callback,
    logged_metric,
    rank_recorder,
    run_cli,
    tiny_override,
)
from tests.conftest import TINY_LLAMA
from tests.shards import write_token_shards


@pytest.fixture(scope="module")
def repeated_shards(tmp_path_factory) -> Path:
    """One chunk of 20 blocks per rank: an epoch is 5 steps, so steps 5+ revisit data."""
    return write_token_shards(
        tmp_path_factory.mktemp("repeated"), train_documents=4, val_documents=4
    )


def _fit(
    run_dir: Path,
    data_dir: Path,
    strategy: str,
    max_steps: int,
    ckpt_path=None,
    command: str = "fit",
    model_override: dict | None = None,
) -> None:
    """``cli.py fit`` (or ``validate``) on the tiny shape with ``configs/strategy/<strategy>``."""
    checkpoints = checkpoint_callback(
        run_dir / "checkpoints", save_last=True, every_n_train_steps=4
    )
    recorder = rank_recorder(run_dir / f"ranks_{command}_{max_steps}")
    override = tiny_override(
        run_dir, data_dir, max_steps, val_check_interval=4, callbacks=[checkpoints, recorder]
    )
    optim = run_dir / "optim.yaml"
    model = {"optim": {"lr": 0.003, "warmup_steps": 1}, **(model_override or {})}
    optim.write_text(yaml.safe_dump({"model": model}))
    args = [command, "--config", "configs/tiny_jreg.yaml"]
    args += ["--config", f"configs/strategy/{strategy}.yaml"]
    args += ["--config", str(override), "--config", str(optim)]
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    result = run_cli(*args, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def _checkpoint_step(path: Path) -> int:
    meta = path / "meta.pt" if path.is_dir() else path
    return torch.load(meta, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp_cpu", "ddp_cpu"])
def test_two_process_fit_validates_checkpoints_and_resumes(strategy, repeated_shards, tmp_path):
    run_dir = tmp_path / strategy
    _fit(run_dir, repeated_shards, strategy, max_steps=8)

    ce = logged_metric(run_dir / "logs" / "version_0" / "metrics.csv", "train/ce")
    assert sorted(ce) == list(range(8))
    # Steps 5-7 revisit the blocks of steps 0-2 (second epoch).
    assert sum(ce[s] for s in (5, 6, 7)) < sum(ce[s] for s in (0, 1, 2)) - 1.0, ce

    # Every rank logged the same per-layer profile (one reduction of sums and counts).
    ranks = [json.loads((run_dir / "ranks_fit_8" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert "val/psi/layer_04" in ranks[0]["val4"] and "val/psi/layer_04" in ranks[0]["val8"]
    assert "train/psi/layer_01" in ranks[0]["train8"]

    last = run_dir / "checkpoints" / "last.ckpt"
    assert is_distributed_checkpoint(last) == (strategy == "fsdp_cpu")
    assert _checkpoint_step(last) == 8
    weights = load_full_state_dict(last)
    expected = JregLightningModule(llama=dict(TINY_LLAMA))
    expected.configure_model()
    shapes = {key: value.shape for key, value in expected.state_dict().items()}
    assert {key: value.shape for key, value in weights.items()} == shapes

    if strategy == "fsdp_cpu":  # (single-file checkpoints: the lead's end-to-end test)
        # validate from the sharded folder alone: the weights come back exactly.
        _fit(run_dir, repeated_shards, strategy, max_steps=8, ckpt_path=last, command="validate")
        logs = run_dir / "logs"
        fit_val = logged_metric(logs / "version_0" / "metrics.csv", "val/loss")[7]
        (validated,) = logged_metric(logs / "version_1" / "metrics.csv", "val/loss").values()
        assert validated == pytest.approx(fit_val, rel=1e-6)

    _fit(run_dir, repeated_shards, strategy, max_steps=10, ckpt_path=last)
    newest = max((run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumed = logged_metric(newest / "metrics.csv", "train/ce")
    assert sorted(resumed) == [8, 9]
    assert _checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 10


@pytest.mark.slow
def test_two_process_ddp_fit_with_compiled_loss(repeated_shards, tmp_path):
    """DDP, ``compile: true`` (auto scope: the whole loss): trains, ranks agree, plain keys."""
    run_dir = tmp_path / "ddp_compiled"
    compiled = {"parallel": {"compile": True}}
    _fit(run_dir, repeated_shards, "ddp_cpu", max_steps=4, model_override=compiled)
    ce = logged_metric(run_dir / "logs" / "version_0" / "metrics.csv", "train/ce")
    assert sorted(ce) == [0, 1, 2, 3] and ce[3] < ce[0], ce
    ranks = [json.loads((run_dir / "ranks_fit_4" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert "train/psi/layer_04" in ranks[0]["train4"]
    weights = load_full_state_dict(run_dir / "checkpoints" / "last.ckpt")
    assert not any("_orig_mod" in key for key in weights)
