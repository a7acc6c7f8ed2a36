"""The ``compare`` command: several models (baseline, JREG, ...) on the same tasks and data."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from jreg_lightning.errors import ConfigError
from jreg_tools.evaluation.evaluate import Backend, evaluate_tasks
from jreg_tools.evaluation.models import load_eval_model
from jreg_tools.evaluation.perplexity import measure_perplexity, scored_data


def comparison_rows(results: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """Table rows ``(metric, [value per model])`` from ``{model name: result}``."""
    names = list(results)

    def row(label: str, values: list) -> tuple[str, list[str]]:
        cells = []
        for value in values:
            if value is None:
                cells.append("-")
            elif isinstance(value, int):
                cells.append(f"{value:,}")
            else:
                cells.append(f"{value:.4f}")
        return label, cells

    rows = []
    if any("perplexity" in results[n] for n in names):
        ppl = [results[n].get("perplexity", {}) for n in names]
        rows.append(row("loss", [p.get("loss") for p in ppl]))
        rows.append(row("ppl", [p.get("ppl") for p in ppl]))
        rows.append(row("J", [p.get("jump_strength") for p in ppl]))
        rows.append(row("J_late", [p.get("jump_strength_late") for p in ppl]))
        rows.append(row("jump layer", [p.get("jump_layer") for p in ppl]))
        rows.append(row("tokens", [p.get("tokens") for p in ppl]))
    task_names = []
    for name in names:
        for task in results[name].get("tasks", {}):
            if task not in task_names:
                task_names.append(task)
    for task in task_names:
        for metric in ("acc", "acc_norm"):
            scores = [results[n].get("tasks", {}).get(task, {}).get(metric) for n in names]
            rows.append(row(f"{task} {metric}", scores))
    return rows


def format_comparison(results: dict[str, dict]) -> str:
    """One side-by-side table: a column per model, a row per metric."""
    rows = comparison_rows(results)
    header = ["metric", *results]
    widths = [max(len(header[0]), *(len(label) for label, _ in rows))]
    for index, name in enumerate(results):
        widths.append(max(len(name), *(len(cells[index]) for _, cells in rows)))
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for label, cells in rows:
        parts = [label.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])]
        lines.append("  ".join(parts))
    return "\n".join(lines)


def compare(
    models: list[str],
    names: list[str] | None = None,
    tasks: list[str] | str | None = None,
    data_dir: str | None = None,
    text: str | None = None,
    tokenizer: str | None = None,
    backend: Backend = "builtin",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    limit: int | None = None,
    split: str = "val",
    device: str = "cpu",
    output: str | None = None,
) -> dict:
    """Evaluate two or more models on the same tasks and data; print one side-by-side table.

    Rows: validation loss, perplexity, J, J_late and the jump layer on ``data_dir`` or ``text``
    (final state after the final norm), then acc and acc_norm of each task.
    Models are loaded one at a time.

    Args:
        models: exported HF folders and/or checkpoints, e.g. the baseline and the JREG run.
        names: column labels, one per model (default: folder or file names).
        tasks: multiple-choice task YAMLs (see ``cli.py evaluate``).
        data_dir: prepared shards for perplexity and the profile.
        text: a UTF-8 text file instead of ``data_dir``.
        tokenizer: tokenizer for checkpoints (HF folders bring their own).
        backend: ``builtin`` scorer or lm-evaluation-harness.
        seq_len: tokens per perplexity block (default: each model's max_position_embeddings).
        batch_size: sequences per forward pass.
        max_batches: perplexity over at most this many batches.
        limit: score only the first ``limit`` documents of each task.
        split: split of a prepared data folder.
        device: torch device.
        output: JSON file to write all results to.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    if len(models) < 2:
        raise ConfigError("models: pass two or more, e.g. --models [runs/base/hf,runs/jreg/hf]")
    if names is not None and len(names) != len(models):
        raise ConfigError(f"names: got {len(names)} names for {len(models)} models; give one each")
    data = scored_data(data_dir, text)
    if not tasks and data is None:
        raise ConfigError(
            "compare needs --tasks and/or --data_dir (or --text): there is nothing to measure"
        )
    results: dict[str, dict] = {}
    for index, path in enumerate(models):
        loaded = load_eval_model(path, tokenizer, names[index] if names else None, device)
        label = loaded.name if loaded.name not in results else f"{loaded.name}#{index}"
        entry: dict = {"path": str(loaded.path)}
        if data is not None:
            entry["perplexity"] = measure_perplexity(
                loaded, data, seq_len, batch_size, max_batches, split
            )
        if tasks:
            entry["tasks"] = evaluate_tasks(loaded, tasks, backend, batch_size, limit)
        results[label] = entry
        del loaded
        gc.collect()
    print(format_comparison(results))
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
    return results
