"""``cli.py demo``: corpus -> tokenizer -> shards -> a tiny JREG run on CPU -> the jump table.

1. Build a small English corpus from the standard library's docstrings and
   ``pydoc_data`` topics (``data/demo_corpus/corpus.jsonl``).
2. ``prepare`` it: train a byte-level BPE (vocab 8192, as in
   ``configs/tiny_jreg.yaml``) and write shards into ``data/demo``.
   Both steps are skipped when their output already exists.
3. Train ``configs/tiny_jreg.yaml`` with ``cli.py fit``.
4. Print the per-layer Psi table, J and the validation loss of the last
   validation, and where the logs, checkpoints and the profile plot are.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import yaml

from jreg_lightning.data.shard_meta import read_meta


def _overrides(settings: dict, run_dir: Path | None, data_dir: Path, max_steps: int | None) -> dict:
    """Config overrides: another data folder, run folder and/or fewer steps.

    ``trainer.logger`` and ``trainer.callbacks`` can only be replaced whole, so
    the config's own entries are copied with their folders moved to ``run_dir``.
    """
    trainer: dict = {}
    callbacks = copy.deepcopy(settings["trainer"].get("callbacks") or [])
    for callback in callbacks:
        if callback["class_path"].endswith("ModelCheckpoint"):
            args = callback.setdefault("init_args", {})
            if run_dir is not None:
                args["dirpath"] = str(run_dir / "checkpoints")
            if max_steps is not None:
                args["every_n_train_steps"] = max_steps
    if run_dir is not None:
        trainer["default_root_dir"] = str(run_dir)
        logger = copy.deepcopy(settings["trainer"].get("logger"))
        if isinstance(logger, dict):
            logger.setdefault("init_args", {})["save_dir"] = str(run_dir)
            trainer["logger"] = logger
    if max_steps is not None:
        trainer["max_steps"] = max_steps
        trainer["val_check_interval"] = max_steps
    if run_dir is not None or max_steps is not None:
        trainer["callbacks"] = callbacks
    return {"trainer": trainer, "data": {"data_dir": str(data_dir)}}


def demo(
    config: str = "configs/tiny_jreg.yaml",
    data_dir: str = "data/demo",
    corpus: str = "data/demo_corpus/corpus.jsonl",
    run_dir: str | None = None,
    max_steps: int | None = None,
    max_documents: int | None = None,
    num_workers: int | None = None,
) -> dict:
    """Train the tiny JREG model on a corpus built from Python's own documentation.

    Args:
        config: the training config (``configs/tiny_jreg.yaml``; its vocab must match the shards).
        data_dir: shards folder; reused if it already holds a ``meta.json``.
        corpus: the JSONL corpus file; rebuilt only if missing.
        run_dir: run folder for logs, checkpoints and the plot (default: the config's).
        max_steps: fewer training steps than the config's (for a quick look or a test).
        max_documents: a smaller corpus (only when it is built).
        num_workers: tokenizer processes for ``prepare`` (default: all cores).

    Returns:
        The last validation report (loss, ppl, profile, J, ...) plus the paths written.
    """
    from jreg_lightning.analysis.plots import plot_layer_profiles
    from jreg_lightning.analysis.validation_report import format_profile_table
    from jreg_lightning.cli import JregCLI
    from jreg_lightning.data.demo_corpus import write_demo_corpus
    from jreg_lightning.data.prepare import prepare

    started = time.perf_counter()
    config_path = Path(config)
    if not config_path.is_file():
        raise FileNotFoundError(
            f"config: {config_path} not found; run the demo from the repository root "
            "or pass --config with the path of tiny_jreg.yaml"
        )
    settings = yaml.safe_load(config_path.read_text())
    data = Path(data_dir)
    corpus_path = Path(corpus)
    if read_meta(data) is None:
        if not corpus_path.is_file():
            print(f"demo: building the corpus from this Python's documentation -> {corpus_path}")
            stats = write_demo_corpus(corpus_path, max_documents=max_documents)
            print(f"demo: {stats['documents']} documents, {stats['characters']:,} characters")
        prepare(
            inputs=[str(corpus_path)],
            output_dir=str(data),
            vocab_size=settings["model"]["llama"]["vocab_size"],
            seq_len=settings["data"]["seq_len"],
            val_fraction=0.05,
            num_workers=num_workers,
            overwrite=True,
        )
    else:
        print(f"demo: reusing the shards in {data} (delete the folder to rebuild them)")

    run = Path(run_dir) if run_dir else Path(settings["trainer"]["default_root_dir"])
    run.mkdir(parents=True, exist_ok=True)
    overrides = _overrides(settings, Path(run_dir) if run_dir else None, data, max_steps)
    override_file = run / "demo_overrides.yaml"
    override_file.write_text(yaml.safe_dump(overrides, sort_keys=False))
    print(f"demo: training {config_path} (overrides: {override_file})")
    cli = JregCLI(args=["fit", "--config", str(config_path), "--config", str(override_file)])

    report = cli.model.last_validation
    if report is None:
        raise RuntimeError(
            "demo: the run ended without a validation; check trainer.val_check_interval"
        )
    name = config_path.stem
    plot = plot_layer_profiles(
        {name: report["profile"]},
        run.absolute() / "layer_profile.png",
        title=f"{name}: Psi per block",
    )
    checkpoints = [
        cb.dirpath for cb in cli.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)
    ]
    log_dir = Path(cli.trainer.log_dir or run).absolute()
    print()
    print(format_profile_table(report))
    print(f"logs (CSV metrics):  {log_dir}")
    print(f"checkpoints:         {', '.join(map(str, checkpoints)) or 'none'}")
    print(f"layer profile plot:  {plot}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return {**report, "log_dir": str(log_dir), "plot": str(plot)}
