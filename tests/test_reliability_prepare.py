"""``prepare`` SIGKILLed mid-write, then re-run: complete output, nothing of the first try."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litdata import StreamingDataset, TokensLoader

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 16


def write_corpus(path: Path, documents: int = 600) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)] + ["the", "a", "of", "jump", "layer", "block"]
    lines = (
        json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))})
        for _ in range(documents)
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare_command(corpus: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "cli.py",
        "prepare",
        f"--inputs={corpus}",
        f"--output_dir={output}",
        "--vocab_size=400",
        f"--seq_len={SEQ_LEN}",
        "--chunk_blocks=8",
        "--val_documents=20",
        "--num_workers=1",
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]


def split_files(output: Path) -> dict[str, object]:
    """Hash of every chunk file and the chunk list of each ``index.json``.

    (``index.json`` also records the folder it was written to, which differs.)
    """
    files: dict[str, object] = {}
    for split in ("train", "val"):
        for path in sorted((output / split).iterdir()):
            key = str(path.relative_to(output))
            if path.name == "index.json":
                files[key] = json.loads(path.read_text())["chunks"]
            else:
                files[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.mark.slow
def test_prepare_killed_mid_write_then_rerun_is_complete(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    reference_out, output = tmp_path / "reference", tmp_path / "prepared"
    partial = tmp_path / ".prepared.partial"

    reference = start(prepare_command(corpus, reference_out), tmp_path / "reference.log")
    first = start(prepare_command(corpus, output), tmp_path / "first.log")
    # SIGKILL the first attempt (and its litdata workers) once it has written a chunk.
    deadline = time.monotonic() + 240
    while not list(partial.glob("*/chunk-*.bin")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "prepare never wrote a chunk"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert not output.exists(), "a killed prepare must not leave output at the final path"

    finish(start(prepare_command(corpus, output), tmp_path / "second.log"), tmp_path / "second.log")
    finish(reference, tmp_path / "reference.log")

    assert not partial.exists()
    meta = json.loads((output / "meta.json").read_text())
    for split in ("train", "val"):
        index = json.loads((output / split / "index.json").read_text())
        listed = {chunk["filename"] for chunk in index["chunks"]}
        on_disk = {p.name for p in (output / split).glob("chunk-*.bin")}
        assert listed == on_disk, f"{split}: chunk files differ from index.json"
        for chunk in index["chunks"]:
            assert (output / split / chunk["filename"]).stat().st_size == chunk["chunk_bytes"]
        dataset = StreamingDataset(
            str(output / split), item_loader=TokensLoader(block_size=SEQ_LEN + 1)
        )
        blocks = [dataset[i] for i in range(len(dataset))]
        assert len(blocks) * (SEQ_LEN + 1) == meta["splits"][split]["usable_tokens"]
    # Byte for byte what an uninterrupted run writes.
    assert split_files(output) == split_files(reference_out)
