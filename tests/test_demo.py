"""The demo, end to end at a reduced size, and the stdlib corpora it is built from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jreg_tools.data.demo_corpus import write_demo_corpus
from tests.studies import tiny_study

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


def test_study_corpus_is_the_standard_library_source(tmp_path):
    stats = write_demo_corpus(tmp_path / "src.jsonl", max_documents=10, kind="stdlib_source")
    records = [json.loads(line) for line in (tmp_path / "src.jsonl").read_text().splitlines()]
    assert stats["documents"] == 10 and all(r["source"].endswith(".py") for r in records)
    assert any("def " in r["text"] or "import " in r["text"] for r in records)
    with pytest.raises(ValueError, match="corpus: 'nope' is not one of"):
        write_demo_corpus(tmp_path / "x.jsonl", kind="nope")


def test_shipped_demo_file_is_a_narrower_shorter_study_model():
    """The demo keeps the study's base config, data, depth, vocab, batch and seq_len; it
    may change only the width, the lr and the run's length and validation (its own setting,
    where the jump forms in minutes: docs/study_log.md, 2026-12-04)."""
    from jreg_tools.study.runner import run_config
    from jreg_tools.study.spec import load_study

    demo, study = (
        load_study(REPO / "configs/study/demo.yaml"),
        load_study(REPO / "configs/study/cpu.yaml"),
    )
    assert demo.base == study.base and demo.data == study.data
    assert [run.is_baseline for run in demo.runs] == [True, False]
    assert demo.runs[1].jreg == {"lam": 30.0, "weights": "linear"}
    assert set(demo.overrides) <= {
        "model.llama.hidden_size",
        "model.llama.intermediate_size",
        "model.optim.lr",
        "trainer.max_steps",
        "trainer.val_check_interval",
        "trainer.limit_val_batches",
        "trainer.callbacks.0.init_args.save_top_k",
    }
    config, full = run_config(demo, demo.runs[0]), run_config(study, study.runs[0])
    assert config["trainer"]["max_steps"] < full["trainer"]["max_steps"]
    assert config["model"]["llama"]["hidden_size"] <= full["model"]["llama"]["hidden_size"]
    for key in ("num_layers", "vocab_size", "num_heads"):
        assert config["model"]["llama"][key] == full["model"]["llama"][key]
    assert config["data"] == full["data"]
    assert config["trainer"]["callbacks"][0]["class_path"].endswith("ModelCheckpoint")
    assert config["trainer"]["callbacks"][0]["init_args"]["save_top_k"] == 0


@pytest.mark.slow
def test_demo_trains_both_runs_and_prints_them_side_by_side(tmp_path, capsys, monkeypatch):
    from jreg_tools.demo import demo

    monkeypatch.chdir(REPO)
    config = tiny_study(tmp_path)
    spec = yaml.safe_load(config.read_text())
    spec["overrides"] = {
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 2,
    }
    del spec["runs"]["final_lam1"]
    config.write_text(yaml.safe_dump(spec))
    report = demo(config_file=str(config))
    out = capsys.readouterr().out
    assert "baseline" in out and "JREG lam 1 linear" in out
    for label in ("J ", "J_late", "argmax", "val loss"):
        assert label in out
    assert "x as much as the middle ones" in out and "one seed each" in out
    assert "mean Psi_2..Psi_{L-1} (middle blocks): baseline " in out
    assert "study: baseline_s1: training (log: " in out  # whole lines, one per status
    assert "study: baseline_s1: done in " in out and "study: linear_lam1: done in " in out
    assert set(report["runs"]) == {"baseline_s1", "linear_lam1"}
    assert Path(report["plot"]).is_file() and Path(report["plot"]).stat().st_size > 0
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["seq_len"] == 32 and meta["shuffle_seed"] == 42


def _final(j: float, j_late: float, loss: float, argmax: int = 12) -> dict:
    """A 12-block final validation with only the fields the sentence reads."""
    return {
        "loss": loss,
        "ppl": 50.0,
        "jump_strength": j,
        "jump_strength_late": j_late,
        "jump_layer": argmax,
        "profile": [0.4] + [0.01] * 11,
    }


def test_demo_verdict_is_one_sentence_from_the_numbers():
    from jreg_tools.study.verdict import one_sentence

    sentence = one_sentence(_final(2.6, 2.7, 3.95), _final(0.5, 0.52, 3.93))
    assert sentence.startswith(
        "The baseline's last block turns 2.60x as much as the middle ones (a jump); "
        "JREG holds it at 0.50x, validation loss 3.950 vs 3.930"
    )
    # The jump at block L-1 is the one reported, read through J_late.
    sentence = one_sentence(_final(1.8, 3.39, 4.0, argmax=11), _final(0.4, 1.1, 4.1))
    assert sentence.startswith(
        "The baseline's block L-1 (block 11 of 12) turns 3.39x as much as the middle ones "
        "(a jump); JREG holds it at 1.10x"
    )
    sentence = one_sentence(_final(0.38, 0.4, 6.17), _final(0.45, 0.5, 6.03))
    assert "turns 0.38x as much as the middle ones (no jump yet: a jump is above 2x)" in sentence
    assert "JREG brings it to 0.45x" in sentence


def test_demo_prints_the_middle_blocks_mean_psi_beside_the_study_baselines():
    from jreg_tools.demo import middle_line

    line = middle_line({"baseline": _final(2.6, 2.7, 3.95), "JREG": _final(0.5, 0.5, 3.9)})
    assert "baseline 0.0100, JREG 0.0100" in line
    assert "the study's baselines at step 600: 0.0078-0.0104" in line
