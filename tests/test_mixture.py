"""A weighted mixture of prepared datasets (``data.sources``): draws, resume, validation.

Two sources prepared with one tokenizer: ``big`` and ``small`` (about two batches an
epoch, so it goes round several times in a short run). The draws follow the weights;
a run resumed from a checkpoint taken after ``small`` went round twice sees the same
batches and losses as an uninterrupted run; each source's val split is logged under
its name and the total is their weighted mean.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from jreg_lightning.data.mixture import DataSource, check_sources, source_of_batch
from jreg_lightning.errors import ConfigError
from jreg_tools.data.batch_log import read_batch_log
from tests.cli_run import checkpoint_callback
from tests.conftest import TINY_LLAMA
from tests.corpora import prepare_small, write_corpus

REPO = Path(__file__).resolve().parents[1]
STOP, STEPS = 12, 24


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixture")
    write_corpus(root / "big.jsonl", documents=80, words=(15, 45), seed=1)
    write_corpus(root / "small.jsonl", documents=20, words=(15, 30), seed=2)
    prepare_small(root / "big.jsonl", root / "big", num_workers=1)
    tokenizer = str(root / "big" / "tokenizer.json")
    prepare_small(root / "small.jsonl", root / "small", num_workers=1, tokenizer=tokenizer)
    prepare_small(root / "small.jsonl", root / "short", num_workers=1, tokenizer=tokenizer,
                  seq_len=16)  # fmt: skip
    prepare_small(root / "small.jsonl", root / "own_bpe", num_workers=1)
    return {name: root / name for name in ("big", "small", "short", "own_bpe")}


def _sources(folders: dict[str, Path], **weights: float) -> list[DataSource]:
    return [DataSource(name, str(folders[name]), weight) for name, weight in weights.items()]


def test_sources_prepared_alike_pass_and_a_mismatch_names_both(sources):
    check_sources(_sources(sources, big=1.0, small=1.0))
    with pytest.raises(ConfigError, match=r"short .* and big .* differ in seq_len"):
        check_sources(_sources(sources, big=1.0, short=1.0))
    with pytest.raises(ConfigError, match=r"own_bpe .* and big .* differ in (tokenizer|vocab)"):
        check_sources(_sources(sources, big=1.0, own_bpe=1.0))
    with pytest.raises(ConfigError, match="data.sources.small.weight"):
        check_sources(_sources(sources, big=1.0, small=0.0))
    with pytest.raises(ConfigError, match="used twice"):
        check_sources(
            [DataSource("a", str(sources["big"])), DataSource("a", str(sources["small"]))]
        )


def test_draws_follow_the_weights_and_depend_only_on_seed_and_index():
    names, weights = ["web", "code", "books"], np.array([0.6, 0.3, 0.1])
    draws = [source_of_batch(7, i, names, weights) for i in range(20_000)]
    for name, weight in zip(names, weights, strict=True):
        assert draws.count(name) / len(draws) == pytest.approx(weight, abs=0.01)
    assert draws[1234] == source_of_batch(7, 1234, names, weights)
    assert draws[:50] != [source_of_batch(8, i, names, weights) for i in range(50)]


def _config(path: Path, run: Path, sources: dict[str, Path], weights: dict, steps: int) -> Path:
    callbacks = [
        {"class_path": "jreg_tools.data.batch_log.BatchLog",
         "init_args": {"folder": str(run / "batches")}},
        checkpoint_callback(run / "checkpoints", every_n_train_steps=STOP, save_top_k=-1),
    ]  # fmt: skip
    config = {
        "trainer": {
            "max_steps": steps,
            "val_check_interval": STOP,
            "limit_val_batches": 2,
            "log_every_n_steps": 1,
            "default_root_dir": str(run),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "logs"},
            },
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "model": {"llama": {**TINY_LLAMA, "vocab_size": 300}, "optim": {"warmup_steps": 2}},
        "data": {
            "sources": [
                {"name": name, "data_dir": str(sources[name]), "weight": weight}
                for name, weight in weights.items()
            ],
            "seq_len": 32,
            "batch_size": 8,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _find(tree, key):
    """The first dict value under ``key`` anywhere in a nested checkpoint dict."""
    if isinstance(tree, dict):
        if key in tree and isinstance(tree[key], dict):
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list | tuple):
        for value in tree:
            found = _find(value, key)
            if found is not None:
                return found
    return None


@pytest.mark.slow
def test_resume_after_the_small_source_went_round_is_exact(sources, tmp_path):
    import torch

    from jreg_tools.cli import main

    weights = {"big": 1.0, "small": 3.0}
    base = ["fit", "--config", str(REPO / "configs" / "tiny_jreg.yaml"), "--config"]
    main([*base, str(_config(tmp_path / "a.yaml", tmp_path / "a", sources, weights, STEPS))])
    (checkpoint,) = (tmp_path / "a" / "checkpoints").glob(f"*step={STOP}.ckpt")
    epochs = _find(torch.load(checkpoint, weights_only=False), "epochs")
    assert epochs["small"] >= 2, f"the small source should have gone round twice: {epochs}"
    resumed = _config(tmp_path / "c.yaml", tmp_path / "c", sources, weights, STEPS)
    main([*base, str(resumed), "--ckpt_path", str(checkpoint)])

    expected = read_batch_log(tmp_path / "a" / "batches")[STOP:]
    after = read_batch_log(tmp_path / "c" / "batches")
    assert [r["step"] for r in after] == list(range(STOP + 1, STEPS + 1))
    assert [r["rows"] for r in after] == [r["rows"] for r in expected]
    assert [r["loss"] for r in after] == pytest.approx([r["loss"] for r in expected], rel=1e-5)

    # Each source's validation under its name; the total is the weighted mean.
    rows = list(csv.DictReader(next((tmp_path / "a" / "logs").rglob("metrics.csv")).open()))
    val = [row for row in rows if row.get("val/loss")]
    assert val, "validation ran"
    for row in val:
        big, small = float(row["val/big/loss"]), float(row["val/small/loss"])
        assert float(row["val/loss"]) == pytest.approx(0.25 * big + 0.75 * small, rel=1e-5)
        assert math.isfinite(float(row["val/small/psi/layer_01"]))
    # The analysis readers read each source's series by name.
    from jreg_tools.analysis.run_logs import read_logged_series

    small_series = read_logged_series(tmp_path / "a", "val/small")
    assert small_series["steps"] and small_series["loss"][0] == float(val[0]["val/small/loss"])
    shares = [row for row in rows if row.get("data/share/big")]
    last = shares[-1]
    assert float(last["data/share/big"]) + float(last["data/share/small"]) == pytest.approx(1.0)
    # The logged share is the realized one: the draws of the steps so far, near the weight.
    steps = int(last["step"]) + 1
    draws = [source_of_batch(42, i, ["big", "small"], np.array([0.25, 0.75])) for i in range(steps)]
    assert float(last["data/share/small"]) == pytest.approx(draws.count("small") / steps)
    assert abs(draws.count("small") / steps - 0.75) < 0.25


def test_the_validate_table_shows_every_source():
    from jreg_lightning.profile_report import format_profile_table

    one = {"loss": 3.0, "ppl": 20.1, "profile": [0.5, 0.01, 0.02, 0.03], "jump_strength": 2.0,
           "jump_strength_late": 2.5, "jump_layer": 4}  # fmt: skip
    report = {**one, "final_state": "post_norm", "sources": {"web": one, "code": one}}
    table = format_profile_table(report)
    assert "per source" in table
    assert sum(line.startswith(("web ", "code ")) for line in table.splitlines()) == 2


@pytest.mark.slow
def test_a_mixture_trains_and_validates_on_two_ddp_ranks(sources, tmp_path):
    from tests.cli_run import run_cli

    config = _config(tmp_path / "a.yaml", tmp_path / "a", sources, {"big": 1.0, "small": 1.0}, 4)
    done = run_cli(
        "fit",
        "--config", "configs/tiny_jreg.yaml", "--config", str(config),
        "--config", "configs/strategy/ddp_cpu.yaml", "--trainer.val_check_interval=4",
        "--data.batch_size=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(next((tmp_path / "a" / "logs").rglob("metrics.csv")).open()))
    (val,) = [row for row in rows if row.get("val/loss")]
    big, small = float(val["val/big/loss"]), float(val["val/small/loss"])
    assert float(val["val/loss"]) == pytest.approx((big + small) / 2, rel=1e-5)
