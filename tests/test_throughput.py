"""TokenThroughputMonitor: FLOPs from a meta copy, tokens/s in the logger and progress bar."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from jreg_lightning.model_config import LlamaModelConfig
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import OptimConfig
from jreg_lightning.regularizer import JregConfig
from jreg_lightning.throughput import (
    PROGRESS_BAR_KEY,
    TokenThroughputMonitor,
    batch_tokens,
    step_flops,
)
from tests.conftest import TINY_LLAMA

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def _matmul_flops(config: LlamaModelConfig, batch: int, seq: int) -> int:
    """nanoGPT's count of one training step: 6 N T + 12 L T^2 d per sequence."""
    d, kv = config.hidden_size, config.num_kv_heads * config.head_dim
    block = 2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size
    matmul_params = config.num_layers * block + config.vocab_size * d
    return 6 * matmul_params * batch * seq + 12 * config.num_layers * batch * seq * seq * d


def test_step_flops_match_the_closed_form():
    config = LlamaModelConfig(**TINY_LLAMA)
    expected = _matmul_flops(config, batch=3, seq=16)
    assert step_flops(config, 3, 16) == expected
    assert step_flops(config, 3, 16, training=False) * 3 == expected


def test_batch_tokens_counts_predicted_positions():
    assert batch_tokens(torch.zeros(4, 33, dtype=torch.long)) == 4 * 32


def test_window_size_below_two_is_refused():
    with pytest.raises(ValueError, match="window_size"):
        TokenThroughputMonitor(window_size=1)


def _fit(tmp_path: Path, monitor: TokenThroughputMonitor) -> tuple[L.Trainer, list[dict]]:
    torch.manual_seed(0)
    module = JregLightningModule(
        llama=LlamaModelConfig(**TINY_LLAMA),
        jreg=JregConfig(lam=0.5, weights="uniform"),
        optim=OptimConfig(warmup_steps=1),
    )
    data = torch.randint(0, TINY_LLAMA["vocab_size"], (12, 17))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=1,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return trainer, rows


def test_fit_logs_tokens_per_second_and_flops(tmp_path):
    trainer, rows = _fit(tmp_path, TokenThroughputMonitor(window_size=2, peak_flops=1e12))
    config = LlamaModelConfig(**TINY_LLAMA)
    tokens = [
        float(r["train/device/tokens_per_sec"])
        for r in rows
        if r.get("train/device/tokens_per_sec")
    ]
    flops = [
        float(r["train/device/flops_per_sec"]) for r in rows if r.get("train/device/flops_per_sec")
    ]
    mfu = [float(r["train/device/mfu"]) for r in rows if r.get("train/device/mfu")]
    assert len(tokens) == 5  # a window of 2 log steps is full from the 2nd of 6 steps on
    assert all(value > 0 for value in tokens)
    # FLOPs/s and tokens/s come from the same clock: their ratio is the FLOPs per token.
    per_token = _matmul_flops(config, batch=2, seq=16) / (2 * 16)
    assert flops[-1] / tokens[-1] == pytest.approx(per_token, rel=1e-6)
    assert mfu[-1] == pytest.approx(flops[-1] / 1e12)
    assert trainer.progress_bar_metrics[PROGRESS_BAR_KEY] > 0


def test_no_mfu_on_cpu_without_a_peak(tmp_path):
    _, rows = _fit(tmp_path, TokenThroughputMonitor(window_size=2))
    assert any(r.get("train/device/tokens_per_sec") for r in rows)
    assert not any(r.get("train/device/mfu") for r in rows)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_training_config_reports_throughput(path):
    config = yaml.safe_load(path.read_text())
    trainer = (config or {}).get("trainer")
    if not trainer or "callbacks" not in trainer:
        pytest.skip("not a training config with callbacks (a strategy or other partial config)")
    paths = [callback.get("class_path") for callback in trainer["callbacks"]]
    assert "jreg_lightning.throughput.TokenThroughputMonitor" in paths
