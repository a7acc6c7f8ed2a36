"""Fit, save and resume shipped configs, reduced only in device, size and steps, in one process.

``python tests/shipped_fits.py PLAN.json`` (or under ``torchrun --nproc_per_node 2``)
runs each entry of the plan through ``cli.py``'s ``main`` twice: a fit of
``FIRST_STEPS`` optimizer steps that validates and saves ``last.ckpt``, then
``--ckpt_path last`` with one step more. Everything else comes from the shipped
files as they are: precision, strategy, compile, activation checkpointing, the
optimizer and its schedule, gradient clipping, callbacks. One process serves all
entries so that the imports are paid once; dynamo is reset between entries, so
each entry compiles its own blocks. Each entry's outcome (or its error) goes to
``<run_dir>/outcome_rank{R}.json`` for the test to check.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import yaml

FIRST_STEPS = 2

# The reduction: a 2-block, 64-wide Llama with GQA, sequences of 32, 2 per device.
REDUCED_LLAMA = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_position_embeddings": 64,
}


def reduction(run_dir: Path, data_dir: Path, devices: int) -> dict:
    """The dotted overrides that shrink a shipped fit config to a CPU smoke run."""
    overrides = {
        "trainer.accelerator": "cpu",
        "trainer.devices": devices,
        "trainer.num_nodes": 1,
        "trainer.max_steps": FIRST_STEPS,
        "trainer.log_every_n_steps": 1,
        # Validation at the last step is where ModelCheckpoint(save_last) writes last.ckpt.
        "trainer.val_check_interval": FIRST_STEPS,
        "trainer.limit_val_batches": 1,
        "trainer.enable_progress_bar": False,
        "trainer.default_root_dir": str(run_dir),
        "data.data_dir": str(data_dir),
        "data.seq_len": 32,
        "data.batch_size": 2,
    }
    overrides.update({f"model.llama.{key}": value for key, value in REDUCED_LLAMA.items()})
    return overrides


def _fit_and_resume(entry: dict) -> dict:
    from jreg_tools.cli import main

    run_dir = Path(entry["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = run_dir / "reduce.yaml"
    overlay.write_text(
        yaml.safe_dump(reduction(run_dir, Path(entry["data_dir"]), entry["devices"]))
    )
    args = ["fit"]
    for config in entry["configs"]:
        args += ["--config", config]
    args += ["--config", str(overlay)]
    torch._dynamo.reset()
    main(args)
    first = _checkpoint_step(run_dir)
    torch._dynamo.reset()
    main([*args, "--trainer.max_steps", str(FIRST_STEPS + 1), "--ckpt_path", "last"])
    return {"first_checkpoint_step": first, "resumed_checkpoint_step": _checkpoint_step(run_dir)}


def _checkpoint_step(run_dir: Path) -> int:
    """``global_step`` of ``last.ckpt`` (a file, or a distributed checkpoint's ``meta.pt``)."""
    from jreg_lightning.checkpoints import read_checkpoint_meta

    return int(read_checkpoint_meta(run_dir / "checkpoints" / "last.ckpt")["global_step"])


def run_plan(plan: list[dict]) -> None:
    """Fit and resume each entry; write its outcome or its error beside its run."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for entry in plan:
        try:
            outcome = {"ok": True, **_fit_and_resume(entry)}
        except BaseException as error:  # SystemExit of a one-line error too
            outcome = {"ok": False, "error": f"{error!r}\n{traceback.format_exc()[-4000:]}"}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else rank
        path = Path(entry["run_dir"]) / f"outcome_rank{rank}.json"
        path.write_text(json.dumps(outcome))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    run_plan(json.loads(Path(sys.argv[1]).read_text()))
