"""The benches still run (tiny shapes, a few steps); their timings are not checked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = ["--hidden", "64", "--intermediate", "128", "--vocab", "512", "--seq", "16", "--batch", "2"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_jreg_overhead_prints_a_row_per_depth(capsys):
    _load("jreg_overhead").main(["--layers", "2", "3", "--steps", "2", "--warmup", "1", *TINY])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["2", "3"]
    # Both variants hold the same parameters and optimizer state: the peaks are close.
    peak_ratio = float(rows[-1].split("|")[10])
    assert 0.9 < peak_ratio < 1.5


def test_ratio_interval_brackets_the_median_pair_ratio():
    bench = _load("jreg_overhead")
    assert bench.ratio_interval([2.0] * 5, [1.0] * 5) == (2.0, 2.0)
    low, high = bench.ratio_interval([1.0, 1.1, 0.9, 1.2, 1.0, 0.95], [1.0] * 6)
    assert 0.9 <= low <= 1.0 <= high <= 1.2


@pytest.mark.slow
def test_loop_overhead_prints_the_ratio(capsys):
    args = ["--layers", "2", "--rounds", "2", "--steps-per-round", "3", "--log-every", "2"]
    _load("loop_overhead").main([*args, "--no-progress-bar", *TINY])
    out = capsys.readouterr().out
    assert "step-time ratio Trainer / hand loop:" in out
    assert "| hand-written loop | 4 |" in out and "| Lightning Trainer | 4 |" in out


def test_litgpt_config_has_our_shape(tmp_path):
    bench = _load("vs_litgpt")
    args = bench.parse_args(["--layers", "3", "--hidden", "64", "--heads", "4", "--seq", "16"])
    config = bench.litgpt_config(args, tmp_path / "data", tmp_path / "out")
    model = config["model_config"]
    assert (model["n_layer"], model["n_embd"], model["block_size"]) == (3, 64, 16)
    assert config["train"]["tie_embeddings"] is True
    override = bench.ours_override(args, tmp_path / "data", tmp_path / "out", compile_loss=True)
    assert override["model"]["llama"]["num_layers"] == 3
    assert override["model"]["parallel"] == {"compile": True, "compile_scope": "loss"}


def test_step_times_skip_the_first_interval(tmp_path):
    bench = _load("vs_litgpt")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("iter,time\n5,10.0\n10,11.0\n15,13.0\n20,14.5\n")
    assert bench.step_times(metrics, "time", "iter") == pytest.approx([0.4, 0.3])


def test_big_corpus_bench_prepares_a_tiny_synthetic_corpus(tmp_path, capsys):
    bench = _load("data_throughput")
    info = bench.write_corpus(tmp_path / "corpus", 0.05)
    again = bench.write_corpus(tmp_path / "again", 0.05)
    assert info["documents"] == again["documents"] > 5 and info["bytes"] >= 0.05 * 2**20
    assert [Path(f).read_bytes() for f in info["files"]] == [
        Path(f).read_bytes() for f in again["files"]
    ]
    settings = {
        "inputs": str(tmp_path / "corpus" / "*.jsonl.zst"),
        "output_dir": str(tmp_path / "shards"),
        "vocab_size": 300,
        "bpe_sample_bytes": 10_000,
        "seq_len": 32,
        "num_workers": 1,
    }
    bench.main(["--prepare-once", json.dumps(settings)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] > 0 and result["seconds"] > 0
    assert result["rss_main_mib"] > 0 and result["rss_worker_mib"] > 0
    # The BPE sample is bounded by bpe_sample_bytes (every n-th document, whole documents).
    assert 0 < result["bpe_sample"]["characters"] <= 10_000
