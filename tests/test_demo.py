"""The demo, end to end at a reduced size, and the stdlib corpus it is built from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jreg_lightning.data.demo_corpus import write_demo_corpus

REPO = Path(__file__).resolve().parents[1]


def test_demo_corpus_is_english_prose_from_the_standard_library(tmp_path):
    stats = write_demo_corpus(tmp_path / "corpus.jsonl", max_documents=30)
    records = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert stats["documents"] == len(records) == 30
    assert stats["characters"] == sum(len(r["text"]) for r in records)
    assert all(r["source"].endswith(".py") and r["text"].strip() for r in records)
    words = " ".join(r["text"] for r in records).split()
    assert sum(w.lower() in {"the", "a", "of", "to", "is"} for w in words) > 0.05 * len(words)
    assert not (tmp_path / "corpus.jsonl.partial").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_the_profile(tmp_path, capsys, monkeypatch):
    from jreg_lightning.demo import demo

    monkeypatch.chdir(REPO)
    report = demo(
        data_dir=str(tmp_path / "data"),
        corpus=str(tmp_path / "corpus.jsonl"),
        run_dir=str(tmp_path / "run"),
        max_steps=3,
        max_documents=120,
        num_workers=1,
    )
    out = capsys.readouterr().out
    assert "J = " in out and "val loss = " in out and "layer profile plot:" in out
    assert len(report["profile"]) == 8 and report["loss"] > 0
    assert Path(report["plot"]).is_file() and Path(report["plot"]).stat().st_size > 0
    assert (Path(report["log_dir"]) / "metrics.csv").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("*step=3*.ckpt"))
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["seq_len"] == 128 and meta["vocab_size"] <= 8192

    # A second demo reuses the shards instead of rebuilding them.
    demo(
        data_dir=str(tmp_path / "data"),
        corpus=str(tmp_path / "missing.jsonl"),
        run_dir=str(tmp_path / "run2"),
        max_steps=1,
    )
    assert "reusing the shards" in capsys.readouterr().out
