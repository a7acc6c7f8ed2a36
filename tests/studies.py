"""A tiny study (a 4-block model, three runs) written in tmp, for the study and demo tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_study(root: Path) -> Path:
    """A study of a 4-block model on a small docstring corpus, written under ``root``."""
    base = yaml.safe_load((REPO / "configs/study/base_cpu.yaml").read_text())
    base["model"]["llama"].update(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_layers=4,
        num_heads=2,
        num_kv_heads=2,
        max_position_embeddings=32,
    )
    base["data"].update(seq_len=32, batch_size=2)
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "title": "tiny study",
        "base": str(root / "base.yaml"),
        "output_dir": str(root / "runs"),
        "report_dir": str(root / "docs"),
        "parallel": 2,
        "data": {
            "corpus": "docstrings",
            "corpus_file": str(root / "corpus.jsonl"),
            "data_dir": str(root / "shards"),
            "vocab_size": 300,
            "val_fraction": 0.1,
            "max_documents": 60,
        },
        "baselines": ["baseline_s1"],
        "best": "linear_lam1",
        "runs": {
            "baseline_s1": {"seed": 1, "lam": 0.0},
            "linear_lam1": {"lam": 1.0, "weights": "linear"},
            "final_lam1": {"lam": 1.0, "weights": "final"},
        },
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
