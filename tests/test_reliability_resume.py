"""SIGKILL a running fit, resume with ``--ckpt_path last``: same losses, same data order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability_probe import read_records, write_fit_override

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 10
EVERY = 3  # checkpoint every 3 steps: files at steps 3, 6, 9 (+ last.ckpt)


def write_override(
    path: Path, run_dir: Path, data_dir: Path, record_dir: Path, hang_at: int | None, **trainer
) -> Path:
    """Tiny model, checkpoints every ``EVERY`` steps, a ``StepRecorder``."""
    recorder = {
        "class_path": "tests.reliability_probe.StepRecorder",
        "init_args": {"out_dir": str(record_dir), "hang_at_step": hang_at},
    }
    schedule = {"max_steps": MAX_STEPS, "log_every_n_steps": 2, "val_check_interval": 5}
    return write_fit_override(
        path, run_dir, data_dir, [recorder], EVERY, trainer={**schedule, **trainer}
    )


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("JREG_TRACEBACK", None)
    return env


def start_fit(override: Path, *extra: str, log: Path) -> subprocess.Popen:
    """``cli.py fit`` in its own process group (so a kill reaches every rank)."""
    command = [sys.executable, "cli.py", "fit", "--config", "configs/tiny_jreg.yaml"]
    command += ["--config", str(override), *extra]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=cli_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert code == 0, log.read_text()[-3000:]


def kill_at_hang(process: subprocess.Popen, record_dir: Path, ranks: int, log: Path) -> None:
    """Wait until every rank hangs at the chosen step, then SIGKILL the whole group."""
    deadline = time.monotonic() + 240
    while not all((record_dir / f"hang{r}").exists() for r in range(ranks)):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def run_kill_and_resume(tmp_path: Path, data_dir: Path, ranks: int, **trainer) -> None:
    # Kill after a random step past the first checkpoint; print the seed to replay a failure.
    seed = random.SystemRandom().randrange(2**32)
    kill_step = random.Random(seed).randint(EVERY + 1, MAX_STEPS - 1)
    print(f"kill at step {kill_step} (seed {seed})")

    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = start_fit(
        write_override(
            tmp_path / "ref.yaml", ref_dir, data_dir, ref_dir / "records", None, **trainer
        ),
        log=tmp_path / "ref.log",
    )
    killed = start_fit(
        write_override(
            tmp_path / "kill.yaml", run_dir, data_dir, run_dir / "before", kill_step, **trainer
        ),
        log=tmp_path / "kill.log",
    )
    kill_at_hang(killed, run_dir / "before", ranks, tmp_path / "kill.log")
    resume_override = write_override(
        tmp_path / "resume.yaml", run_dir, data_dir, run_dir / "after", None, **trainer
    )
    resumed = start_fit(resume_override, "--ckpt_path", "last", log=tmp_path / "resume.log")
    wait_for(reference, tmp_path / "ref.log")
    wait_for(resumed, tmp_path / "resume.log")

    # The hang was before the kill step's own checkpoint, so the newest is the one before it.
    last_saved = (kill_step - 1) // EVERY * EVERY
    for rank in range(ranks):
        expected = read_records(ref_dir / "records", rank)
        before = read_records(run_dir / "before", rank)
        after = read_records(run_dir / "after", rank)
        assert [r[0] for r in expected] == list(range(1, MAX_STEPS + 1))
        assert before == expected[:kill_step], f"rank {rank}: the run diverged before the kill"
        assert after, f"rank {rank}: nothing ran after the resume"
        assert after[0][0] == last_saved + 1, f"rank {rank}: resumed at the wrong step"
        # Every step after the resume: the same loss bit for bit, and the same batch.
        assert after == expected[last_saved:], f"rank {rank}: resumed run differs"
        # The data the final model saw: each batch once, in the uninterrupted order.
        assert before[:last_saved] + after == expected


@pytest.mark.slow
def test_sigkill_and_resume_single_process(tmp_path, token_shards):
    run_kill_and_resume(tmp_path, token_shards, ranks=1)


@pytest.mark.slow
def test_sigkill_and_resume_ddp_two_ranks(tmp_path, token_shards):
    run_kill_and_resume(
        tmp_path, token_shards, ranks=2, accelerator="cpu", devices=2, strategy="ddp"
    )
