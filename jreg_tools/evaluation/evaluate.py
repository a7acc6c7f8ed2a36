"""The ``evaluate`` command: zero-shot multiple-choice tasks, built-in scorer or the harness."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

from jreg_lightning.errors import ConfigError
from jreg_tools.evaluation.models import EvalModel, load_eval_model, require_tokenizer
from jreg_tools.evaluation.scorer import score_task
from jreg_tools.evaluation.tasks import load_task, read_task_config

Backend = Literal["builtin", "harness"]


def evaluate_tasks(
    model: EvalModel,
    tasks: list[str],
    backend: Backend = "builtin",
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, dict[str, float]]:
    """Score a loaded model on task YAMLs; ``{task: {"acc", "acc_norm", "num_docs"}}``.

    The harness loads HF folders only: a checkpoint is exported to a temporary
    folder first (with the model's tokenizer).
    """
    tokenizer = require_tokenizer(model, "evaluate")
    if backend == "builtin":
        results = {}
        for path in tasks:
            scored = score_task(
                model.model, tokenizer, load_task(path), model.max_length, batch_size, limit
            )
            results[scored.task] = {
                "acc": scored.acc,
                "acc_norm": scored.acc_norm,
                "num_docs": scored.num_docs,
            }
        return results
    if backend != "harness":
        raise ConfigError(f"backend: {backend!r} is not one of builtin, harness")
    from jreg_tools.evaluation.harness import run_harness

    device = str(model.device)
    if model.is_hf_folder:
        return run_harness(model.path, tasks, batch_size, limit, device)
    with tempfile.TemporaryDirectory(prefix="jreg-export-") as scratch:
        model.model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        return run_harness(scratch, tasks, batch_size, limit, device)


def evaluate(
    model: str,
    tasks: list[str] | str,
    backend: Backend = "builtin",
    tokenizer: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    device: str = "cpu",
    output: str | None = None,
) -> dict:
    """Zero-shot accuracy (acc, acc_norm) of a model on local multiple-choice tasks.

    Tasks are lm-evaluation-harness task YAMLs over local JSONL files (see
    ``tests/data/tiny_mc.yaml``); nothing is downloaded.

    Args:
        model: an exported HF folder, a Lightning ``.ckpt`` or an FSDP2 checkpoint folder.
        tasks: task YAML files (``--tasks a.yaml`` or ``--tasks [a.yaml,b.yaml]``).
        backend: ``builtin`` (this package's scorer) or ``harness``
            (lm-evaluation-harness, the optional extra ``eval``).
        tokenizer: tokenizer for a checkpoint (an HF folder brings its own).
        batch_size: (context, choice) pairs per forward pass.
        limit: score only the first ``limit`` documents of each task.
        device: torch device.
        output: JSON file to write the scores to.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ConfigError(
            "tasks: pass at least one task YAML, e.g. --tasks tests/data/tiny_mc.yaml"
        )
    for path in tasks:  # fail on a bad task file before loading the model
        read_task_config(path)
    loaded = load_eval_model(model, tokenizer, device=device)
    results = evaluate_tasks(loaded, tasks, backend, batch_size, limit)
    print(f"{loaded.name} ({backend})")
    for name, scores in results.items():
        print(
            f"  {name}: acc = {scores['acc']:.4f}   acc_norm = {scores['acc_norm']:.4f}   "
            f"docs = {scores['num_docs']}"
        )
    report = {"model": str(loaded.path), "backend": backend, "tasks": results}
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
    return report
