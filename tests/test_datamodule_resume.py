"""Exact resume and rank-disjoint data, checked batch by batch against an uninterrupted run.

Two runs of the same config: A runs ``steps`` steps uninterrupted and saves a
checkpoint at step ``STOP`` (what an interrupted run leaves behind); C resumes
that checkpoint in a fresh process state and runs to ``steps``. C must see the
same sequences and losses as A from step ``STOP + 1`` on, across an epoch
boundary (an epoch is shorter than ``steps``). The 2-rank variant runs
``cli.py fit`` with DDP on CPU (gloo) and also checks that the ranks' batches in
the first epoch are disjoint and cover it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from jreg_tools.data.batch_log import read_batch_log, sequence_fingerprints
from tests.cli_run import checkpoint_callback
from tests.conftest import TINY_LLAMA
from tests.corpora import prepare_small, write_corpus

REPO = Path(__file__).resolve().parents[1]
STOP = 5


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """About 100 blocks of 33 tokens: an epoch of batch 8 is ~12 steps (~6 per rank on 2)."""
    root = tmp_path_factory.mktemp("resume")
    write_corpus(root / "docs.jsonl", documents=60, words=(15, 45))
    prepare_small(root / "docs.jsonl", root / "out", chunk_blocks=10)
    return root / "out"


def _override(path: Path, run: Path, data_dir: Path, steps: int, **trainer) -> Path:
    callbacks = [
        {
            "class_path": "jreg_tools.data.batch_log.BatchLog",
            "init_args": {"folder": str(run / "batches")},
        },
        checkpoint_callback(run / "checkpoints", every_n_train_steps=STOP, save_top_k=-1),
    ]
    config = {
        "trainer": {
            "max_steps": steps,
            "limit_val_batches": 0,
            "default_root_dir": str(run),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
            **trainer,
        },
        "model": {"llama": TINY_LLAMA, "optim": {"warmup_steps": 2}},
        "data": {"data_dir": str(data_dir), "seq_len": 32, "batch_size": 8},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _checkpoint(run: Path) -> Path:
    (found,) = (run / "checkpoints").glob(f"*step={STOP}.ckpt")
    return found


def _assert_same_from_resume(uninterrupted: list[dict], resumed: list[dict], steps: int):
    assert [r["step"] for r in uninterrupted] == list(range(1, steps + 1))
    assert [r["step"] for r in resumed] == list(range(STOP + 1, steps + 1))
    expected = uninterrupted[STOP:]
    assert [r["rows"] for r in resumed] == [r["rows"] for r in expected]
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in expected]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in expected], rel=1e-5)


@pytest.mark.slow
def test_single_process_resume_continues_with_the_same_batches(small_shards, tmp_path):
    from jreg_tools.cli import main

    steps = 20
    base = ["fit", "--config", str(REPO / "configs" / "tiny_jreg.yaml"), "--config"]
    main([*base, str(_override(tmp_path / "a.yaml", tmp_path / "a", small_shards, steps))])
    c = _override(tmp_path / "c.yaml", tmp_path / "c", small_shards, steps)
    main([*base, str(c), "--ckpt_path", str(_checkpoint(tmp_path / "a"))])

    uninterrupted = read_batch_log(tmp_path / "a" / "batches")
    assert max(r["epoch"] for r in uninterrupted) >= 1, "the run should cross an epoch boundary"
    _assert_same_from_resume(uninterrupted, read_batch_log(tmp_path / "c" / "batches"), steps)


def _all_blocks(split_dir: Path) -> list[str]:
    from litdata import StreamingDataset, TokensLoader

    dataset = StreamingDataset(
        str(split_dir), item_loader=TokensLoader(block_size=33), shuffle=False, drop_last=False
    )
    return [sequence_fingerprints(dataset[i][None])[0] for i in range(len(dataset))]


def _fit_ddp(override: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "cli.py", "fit", "--config", "configs/tiny_jreg.yaml"]
    result = subprocess.run(
        [*command, "--config", str(override), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_ddp_resume_and_disjoint_ranks(small_shards, tmp_path):
    steps = 10
    ddp = {"strategy": "ddp", "devices": 2, "accelerator": "cpu"}
    _fit_ddp(_override(tmp_path / "a.yaml", tmp_path / "a", small_shards, steps, **ddp))
    c = _override(tmp_path / "c.yaml", tmp_path / "c", small_shards, steps, **ddp)
    _fit_ddp(c, "--ckpt_path", str(_checkpoint(tmp_path / "a")))

    for rank in (0, 1):
        _assert_same_from_resume(
            read_batch_log(tmp_path / "a" / "batches", rank),
            read_batch_log(tmp_path / "c" / "batches", rank),
            steps,
        )

    # The first epoch: the ranks' sequences are disjoint and together cover the split,
    # except what drop_last leaves over (less than one batch per rank).
    blocks = _all_blocks(small_shards / "train")
    assert len(set(blocks)) == len(blocks)
    seen = []
    for rank in (0, 1):
        records = read_batch_log(tmp_path / "a" / "batches", rank)
        assert max(r["epoch"] for r in records) >= 1, "the run should cross an epoch boundary"
        seen.append([row for r in records if r["epoch"] == 0 for row in r["rows"]])
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) <= set(blocks)
    assert len(seen[0]) == len(seen[1])
    assert len(blocks) - len(seen[0]) - len(seen[1]) < 2 * 8


class ProgressBarRecorder(L.Callback):
    """Appends ``[epoch, batch_idx + 1, the bar's total]`` of each step to ``path`` (JSON lines)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.progress_bar_callback.total_train_batches
        with self.path.open("a") as handle:
            handle.write(json.dumps([trainer.current_epoch, batch_idx + 1, total]) + "\n")


def _extend_config(path: Path, run: Path, data_dir: Path, steps: int) -> Path:
    """A run that saves ``last.ckpt`` only when it ends, with its progress bar on."""
    config = yaml.safe_load(_override(path, run, data_dir, steps).read_text())
    config["trainer"]["enable_progress_bar"] = True
    # A constant learning rate: a longer max_steps then changes nothing before the resume.
    config["model"]["optim"]["schedule"] = "constant"
    config["trainer"]["callbacks"] = [
        config["trainer"]["callbacks"][0],  # BatchLog
        checkpoint_callback(run / "checkpoints", save_last=True, every_n_train_steps=1000),
        {
            "class_path": "tests.test_datamodule_resume.ProgressBarRecorder",
            "init_args": {"path": str(run / "bar.jsonl")},
        },
    ]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_extending_a_finished_run_continues_its_epoch_like_an_uninterrupted_run(
    small_shards, tmp_path
):
    from jreg_tools.cli import main

    steps, first = 20, 7
    base = ["fit", "--config", str(REPO / "configs" / "tiny_jreg.yaml"), "--config"]
    main([*base, str(_extend_config(tmp_path / "a.yaml", tmp_path / "a", small_shards, steps))])
    b = _extend_config(tmp_path / "b.yaml", tmp_path / "b", small_shards, first)
    main([*base, str(b)])
    main([*base, str(b), "--trainer.max_steps", str(steps), "--ckpt_path", "last"])

    uninterrupted = read_batch_log(tmp_path / "a" / "batches")
    extended = read_batch_log(tmp_path / "b" / "batches")
    assert max(r["epoch"] for r in uninterrupted) >= 1, "the run should cross an epoch boundary"
    assert [r["step"] for r in extended] == list(range(1, steps + 1))
    # The same batches under the same epoch numbers (the epoch that max_steps cut short
    # goes on; it is not counted as finished), and the same losses.
    assert [(r["epoch"], r["rows"]) for r in extended] == [
        (r["epoch"], r["rows"]) for r in uninterrupted
    ]
    assert [r["loss"] for r in extended] == pytest.approx([r["loss"] for r in uninterrupted])
    # The progress bar of the extended run counts within the epoch to where it ends.
    bar = [json.loads(line) for line in (tmp_path / "b" / "bar.jsonl").read_text().splitlines()]
    resumed = bar[first:]
    assert resumed[0][1] == first + 1
    for _epoch, position, total in resumed:
        assert position <= total
    ends = [row for row in resumed if row[1] == row[2]]
    assert ends, "each bar reaches its total"
    assert resumed[-1][1] == resumed[-1][2]
