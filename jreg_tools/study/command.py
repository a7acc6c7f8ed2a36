"""``python cli.py study --config configs/study/cpu.yaml``: train what is missing, then report."""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

import yaml

from jreg_tools.study.report import write_report
from jreg_tools.study.runner import read_result, train_study
from jreg_tools.study.spec import StudySpec, load_study

# The quick plumbing check: a few steps, two validations, two batches each.
QUICK_OVERRIDES = {
    "trainer.max_steps": 8,
    "trainer.val_check_interval": 4,
    "trainer.limit_val_batches": 2,
}


def ensure_data(spec: StudySpec) -> None:
    """Build the study's corpus and shards when ``data.data_dir`` holds none."""
    from jreg_lightning.data.shard_meta import read_meta
    from jreg_tools.data.demo_corpus import write_demo_corpus
    from jreg_tools.data.prepare import PrepareOptions, prepare

    if read_meta(spec.data.data_dir) is not None:
        return
    corpus = Path(spec.data.corpus_file)
    if not corpus.is_file():
        print(f"study: building the {spec.data.corpus} corpus -> {corpus}")
        write_demo_corpus(corpus, max_documents=spec.data.max_documents, kind=spec.data.corpus)
    base = yaml.safe_load(spec.base.read_text())
    prepare(
        PrepareOptions(
            inputs=[str(corpus)],
            output_dir=spec.data.data_dir,
            vocab_size=spec.data.vocab_size,
            seq_len=base["data"]["seq_len"],
            val_fraction=spec.data.val_fraction,
            num_workers=spec.data.num_workers,
            overwrite=True,
        )
    )


def quick_spec(spec: StudySpec) -> StudySpec:
    """Two runs (a baseline and the best or first JREG run) of a few steps, in their own folders."""
    jreg = spec.best or next(run.name for run in spec.runs if not run.is_baseline)
    names = [spec.baselines[0], jreg]
    output = spec.output_dir.parent / f"{spec.output_dir.name}_quick"
    return dataclasses.replace(
        spec,
        runs=[spec.run(name) for name in names],
        baselines=names[:1],
        best=jreg,
        output_dir=output,
        report_dir=output / "report",
        readme=None,
    )


def study(
    config_file: str = "configs/study/cpu.yaml",
    runs: list[str] | None = None,
    report_only: bool = False,
    quick: bool = False,
) -> list[str]:
    """Train a study's runs (skipping finished ones, resuming killed ones) and write its report.

    Args:
        config_file: the study YAML (see ``jreg_tools.study.spec``); on the
            command line ``--config``.
        runs: train only these runs (the report still uses every finished run).
        report_only: write the report from the finished runs, train nothing.
        quick: a plumbing check: a baseline and one JREG run of a few steps, in
            ``<output_dir>_quick``, with its report there (not in ``report_dir``; the
            README is left alone).

    Returns:
        The paths of the report's files.
    """
    started = time.perf_counter()
    spec = load_study(config_file)
    command = f"python cli.py study --config {shlex.quote(str(spec.path))}"
    if quick:
        spec = quick_spec(spec)
        command += " --quick true"
    if not report_only:
        ensure_data(spec)
        train_study(spec, runs, QUICK_OVERRIDES if quick else None)
    results = {}
    for run in spec.runs:
        result = read_result(spec, run)
        if result is not None:
            results[run.name] = result
    missing = [run.name for run in spec.runs if run.name not in results]
    if missing:
        print(f"study: not finished yet, left out of the report: {', '.join(missing)}")
    paths = write_report(spec, results, command)
    report = next(path for path in paths if path.name == "results.md")
    # One line, not one per archived file: the archive alone is a few files per run.
    print(
        f"study: wrote {report} and {len(paths) - 1} more files (pictures, summary.json, "
        f"archived run files) in {report.parent / 'results'}"
    )
    print(
        f"study: {len(results)} of {len(spec.runs)} runs in the report; "
        f"{time.perf_counter() - started:.0f} s"
    )
    return [str(p) for p in paths]
