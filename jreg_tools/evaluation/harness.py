"""lm-evaluation-harness glue: run local task YAMLs on an exported HF folder, offline.

Needs the optional extra ``eval`` (``pip install -e '.[eval]'``). The task
YAMLs are the ones the built-in scorer reads; their ``data_files`` are
relative to the YAML, so each is copied into a temporary include folder with
absolute paths (the harness would resolve them against the working directory)
and with a private ``datasets`` cache, so nothing is written beside the tasks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from jreg_tools.evaluation.tasks import data_files, read_task_config

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _write_resolved_tasks(task_paths: list[Path], include_dir: Path, cache_dir: Path) -> list[str]:
    names = []
    for path in task_paths:
        config = read_task_config(path)
        files = {
            split: [str(f) for f in found] for split, found in data_files(config, path).items()
        }
        config["dataset_kwargs"] = {
            **config.get("dataset_kwargs", {}),
            "data_files": files,
            "cache_dir": str(cache_dir),
        }
        (include_dir / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(str(config["task"]))
    return names


def run_harness(
    model_dir: str | Path,
    task_paths: list[str | Path],
    batch_size: int = 8,
    limit: int | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """Score an HF model folder on local multiple-choice tasks with lm-evaluation-harness.

    Args:
        model_dir: an exported HF folder (``config.json``, weights, tokenizer).
        task_paths: harness task YAMLs of local JSONL tasks.
        batch_size: the harness's batch size.
        limit: score only the first ``limit`` documents of each task.
        device: torch device.

    Returns:
        ``{task: {"acc": ..., "acc_norm": ..., "num_docs": ...}}``.
    """
    # Before the import: datasets and huggingface_hub read these when first imported.
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "backend harness: lm-evaluation-harness is not installed; "
            "pip install -c constraints.txt -e '.[eval]' (or use --backend builtin)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="jreg-harness-") as scratch:
        include_dir, cache_dir = Path(scratch) / "tasks", Path(scratch) / "datasets"
        include_dir.mkdir()
        names = _write_resolved_tasks([Path(p) for p in task_paths], include_dir, cache_dir)
        manager = TaskManager(include_path=str(include_dir), include_defaults=False)
        output = lm_eval.simple_evaluate(
            model="hf",
            model_args={
                "pretrained": str(model_dir),
                "dtype": "float32",
                "trust_remote_code": False,
            },
            tasks=names,
            task_manager=manager,
            device=device,
            batch_size=batch_size,
            limit=limit,
            log_samples=False,
        )
    results = {}
    for name in names:
        scores = output["results"][name]
        results[name] = {
            "acc": float(scores["acc,none"]),
            "acc_norm": float(scores["acc_norm,none"]),
            "num_docs": int(output["n-samples"][name]["effective"]),
        }
    return results
