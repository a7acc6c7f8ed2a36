"""Bad input: one line naming the field and the fix, exit code != 0, nothing on disk changed.

``data.batch_size`` is per device; ``global_batch_size`` (optional) is the
batch per optimizer step over all devices and must divide over them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from jreg_tools.cli import main
from tests.conftest import TINY_LLAMA


class Evil:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Workspace:
    """A copy of the shards, a run folder from an earlier run, and checkpoints."""

    def __init__(self, root: Path, shards: Path) -> None:
        self.root = root
        self.data = root / "data"
        shutil.copytree(shards, self.data)
        self.run = root / "run"
        (self.run / "checkpoints").mkdir(parents=True)
        (self.run / "logs").mkdir()
        (self.run / "logs" / "config.yaml").write_text("from: an earlier run\n")
        self.other_shape = self.run / "checkpoints" / "other-shape.ckpt"
        torch.save(
            {
                "state_dict": {"model.lm_head.weight": torch.zeros(4, 4)},
                "hyper_parameters": {"llama": {**TINY_LLAMA, "hidden_size": 32}},
                "global_step": 3,
            },
            self.other_shape,
        )
        self.marker = root / "pwned"
        self.evil = self.run / "checkpoints" / "evil.ckpt"
        torch.save({"state_dict": {}, "payload": Evil(self.marker)}, self.evil)
        self.inputs = root / "corpus.txt"
        self.inputs.write_text("a tiny corpus\n\nwith two documents\n")
        self.override = root / "override.yaml"
        self.override.write_text(yaml.safe_dump(self.config()))

    def config(self) -> dict:
        return {
            "trainer": {
                "max_steps": 2,
                "enable_progress_bar": False,
                "default_root_dir": str(self.run),
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(self.run), "name": "logs", "version": ""},
                },
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(self.run / "checkpoints"), "save_last": True},
                    }
                ],
            },
            "model": {"llama": TINY_LLAMA},
            "data": {"data_dir": str(self.data), "seq_len": 32, "batch_size": 4},
        }

    def fit(self, *flags: str) -> list[str]:
        return ["fit", "--config", "configs/tiny_jreg.yaml", "--config", str(self.override), *flags]

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """Every file under the workspace: content hash and mtime."""
        return {
            str(path.relative_to(self.root)): (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
            for path in sorted(self.root.rglob("*"))
            if path.is_file()
        }


def corrupt_index(ws: Workspace) -> list[str]:
    (ws.data / "train" / "index.json").write_text('{"chunks": [')
    return ws.fit()


def empty_dataset(ws: Workspace) -> list[str]:
    index = json.loads((ws.data / "val" / "index.json").read_text())
    index["chunks"] = []
    (ws.data / "val" / "index.json").write_text(json.dumps(index))
    return ws.fit()


def vocab_mismatch(ws: Workspace) -> list[str]:
    (ws.data / "meta.json").write_text(json.dumps({"vocab_size": 8192}))
    return ws.fit()


def missing_split(ws: Workspace) -> list[str]:
    shutil.rmtree(ws.data / "val")
    return ws.fit()


# (case id, argv builder, substrings the one error line must contain)
CASES: list[tuple[str, Callable[[Workspace], list[str]], tuple[str, ...]]] = [
    # ---- config
    ("negative-lambda", lambda ws: ws.fit("--model.jreg.lam=-0.5"), ("jreg.lam", ">= 0")),
    (
        "unknown-weight-scheme",
        lambda ws: ws.fit("--model.jreg.weights=cubic"),
        ("model.jreg.weights", "linear"),
    ),
    (
        "explicit-weights-wrong-length",
        lambda ws: ws.fit("--model.jreg.weights=explicit", "--model.jreg.explicit_weights=[1,2]"),
        ("jreg", "4"),
    ),
    (
        "last-k-too-large",
        lambda ws: ws.fit("--model.jreg.weights=last_k", "--model.jreg.last_k=9"),
        ("jreg", "last_k"),
    ),
    (
        "heads-do-not-divide-hidden",
        lambda ws: ws.fit("--model.llama.num_heads=3"),
        ("model.llama.num_heads", "hidden_size"),
    ),
    (
        "kv-heads-do-not-divide-heads",
        lambda ws: ws.fit("--model.llama.num_kv_heads=3"),
        ("model.llama.num_kv_heads", "divisor"),
    ),
    (
        "seq-len-above-max-positions",
        lambda ws: ws.fit("--data.seq_len=128"),
        ("data.seq_len", "max_position_embeddings"),
    ),
    (
        "global-batch-does-not-divide-over-devices",
        lambda ws: ws.fit("--global_batch_size=5", "--trainer.accumulate_grad_batches=2"),
        ("global_batch_size", "multiple of 2"),
    ),
    ("zero-batch-size", lambda ws: ws.fit("--data.batch_size=0"), ("data.batch_size", "positive")),
    ("no-max-steps", lambda ws: ws.fit("--trainer.max_steps=-1"), ("trainer.max_steps", "> 0")),
    ("negative-lr", lambda ws: ws.fit("--model.optim.lr=-1"), ("model.optim.lr", "> 0")),
    (
        "unknown-nonfinite-mode",
        lambda ws: ws.fit("--model.nonfinite=ignore"),
        ("model.nonfinite", "skip"),
    ),
    # ---- data
    (
        "missing-shard-dir",
        lambda ws: ws.fit(f"--data.data_dir={ws.root / 'nowhere'}"),
        ("data.data_dir", "prepare"),
    ),
    ("missing-val-split", missing_split, ("data.data_dir", "prepare")),
    ("vocab-mismatch", vocab_mismatch, ("model.llama.vocab_size", ">= 8192")),
    ("empty-dataset", empty_dataset, ("data.data_dir", "0 block")),
    ("corrupt-index-json", corrupt_index, ("data.data_dir", "index.json")),
    # ---- checkpoint
    (
        "missing-checkpoint",
        lambda ws: ws.fit(f"--ckpt_path={ws.run / 'checkpoints' / 'nope.ckpt'}"),
        ("ckpt_path", "does not exist"),
    ),
    (
        "checkpoint-of-another-shape",
        lambda ws: ws.fit(f"--ckpt_path={ws.other_shape}"),
        ("ckpt_path", "hidden_size=32"),
    ),
    (
        "malicious-checkpoint",
        lambda ws: ws.fit(f"--ckpt_path={ws.evil}"),
        ("ckpt_path", "refusing to load"),
    ),
    (
        "validate-missing-checkpoint",
        lambda ws: ["validate", *ws.fit(f"--ckpt_path={ws.root / 'gone.ckpt'}")[1:]],
        ("ckpt_path", "does not exist"),
    ),
    # ---- machine
    (
        "gpu-config-without-gpu",
        lambda ws: ws.fit("--trainer.accelerator=gpu"),
        ("trainer.accelerator", "--trainer.accelerator cpu"),
    ),
    (
        "negative-loader-workers",
        lambda ws: ws.fit("--data.num_workers=-1"),
        ("data.num_workers", "auto"),
    ),
    # ---- tokenizer (prepare)
    (
        "missing-tokenizer-file",
        lambda ws: [
            "prepare",
            f"--inputs={ws.inputs}",
            f"--tokenizer={ws.root / 'tokenizer.json'}",
            f"--output_dir={ws.root / 'prepared'}",
        ],
        ("tokenizer", "does not exist"),
    ),
    (
        "missing-prepare-input",
        lambda ws: [
            "prepare",
            f"--inputs={ws.root / 'no.txt'}",
            f"--output_dir={ws.root / 'prepared'}",
        ],
        ("inputs", "no.txt"),
    ),
    (
        "prepare-vocab-size-not-a-number",
        lambda ws: ["prepare", f"--inputs={ws.inputs}", "--vocab_size=lots"],
        ("vocab_size", "int"),
    ),
    (
        "prepare-over-existing-shards",
        lambda ws: ["prepare", f"--inputs={ws.inputs}", f"--output_dir={ws.data}"],
        ("output_dir", "--overwrite"),
    ),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(
    build, expected, tmp_path, token_shards, capfd, monkeypatch
):
    monkeypatch.delenv("JREG_TRACEBACK", raising=False)
    ws = Workspace(tmp_path, token_shards)
    argv = build(ws)
    if "--trainer.accelerator=gpu" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is visible: the config that asks for one is not bad input here")
    before = ws.snapshot()
    capfd.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    err = capfd.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    assert ws.snapshot() == before, "a file was created, changed or removed"
    assert not ws.marker.exists()
