"""``cli.py demo``: a baseline and a JREG model trained side by side on CPU, profiles compared.

1. Build the study's corpus from the standard library's own source (every
   Python install carries it) and ``prepare`` it: a byte-level BPE of 8192
   tokens and shards for seq_len 256, in ``data/study_stdlib_mixed`` (reused later).
2. Train the runs of ``configs/study/demo.yaml``, a baseline and JREG, two at a
   time with one thread each, through the study runner (resumable: rerunning
   the demo skips what is finished). By default the runs are narrowed and shortened by the
   file's ``overrides``; ``--full true`` trains the study's full setting.
3. Print both layer profiles side by side with J, J_late, the argmax block and
   the validation loss, write one overlay picture, and say in one sentence how
   much the baseline's last block turns against the middle ones and JREG's.
"""

from __future__ import annotations

import dataclasses
import time

from jreg_lightning.console import quiet_console
from jreg_lightning.profile_plot import plot_layer_profiles
from jreg_tools.analysis.validation_report import format_side_by_side
from jreg_tools.study.command import ensure_data
from jreg_tools.study.runner import read_result, train_study
from jreg_tools.study.spec import load_study
from jreg_tools.study.verdict import one_sentence, run_metrics

# The mean Psi_2..Psi_{L-1} of the CPU study's three baselines at step 600
# (docs/results.md): the middle blocks of a model that is learning. A run whose middle
# blocks idle (far below this) shows a large J that means nothing.
STUDY_MIDDLE_PSI = (0.0078, 0.0104)


def demo(config_file: str = "configs/study/demo.yaml", full: bool = False) -> dict:
    """Train a baseline and a JREG model on CPU and compare their layer profiles.

    Args:
        config_file: the demo's study file (``--config``): base fit config, data and the
            two runs; its ``overrides`` shorten the runs.
        full: train the study's full setting instead (the base config: d=256, 600 steps,
            about 5 times the demo's compute), in ``<output_dir>_full``.

    Returns:
        ``{"runs": {name: final validation}, "plot": path}``.
    """
    quiet_console()
    started = time.perf_counter()
    spec = load_study(config_file)
    if full:
        spec = dataclasses.replace(
            spec, overrides={}, output_dir=spec.output_dir.with_name(f"{spec.output_dir.name}_full")
        )
    ensure_data(spec)
    train_study(spec)
    finals = {run.name: read_result(spec, run)["final"] for run in spec.runs}
    labels = {run.name: _label(run.name, run.jreg) for run in spec.runs}
    plot = plot_layer_profiles(
        {
            f"{labels[name]}: J={final['jump_strength']:.2f}": final["profile"]
            for name, final in finals.items()
        },
        spec.output_dir.absolute() / "profiles.png",
        title="Psi per block, baseline vs JREG",
    )
    print()
    print(format_side_by_side({labels[name]: final for name, final in finals.items()}))
    print(middle_line({labels[name]: final for name, final in finals.items()}))
    print(f"runs (logs, checkpoints):  {spec.output_dir.absolute()}")
    print(f"profile overlay:           {plot}")
    baseline = next(run.name for run in spec.runs if run.is_baseline)
    jreg = next((run.name for run in spec.runs if not run.is_baseline), None)
    if jreg is not None:
        print(one_sentence(finals[baseline], finals[jreg]))
    if not full:
        print("the study's full setting:  python cli.py demo --full true (see docs/results.md)")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return {"runs": finals, "plot": str(plot)}


def middle_line(finals: dict[str, dict]) -> str:
    """The runs' mean Psi of the middle blocks beside the study baselines' range."""
    cells = ", ".join(
        f"{label} {run_metrics(final)['psi_middle']:.4f}" for label, final in finals.items()
    )
    low, high = STUDY_MIDDLE_PSI
    return (
        f"mean Psi_2..Psi_{{L-1}} (middle blocks): {cells} "
        f"(the study's baselines at step 600: {low:.4f}-{high:.4f}; "
        "near 0 would mean idle middle blocks, and J would mean nothing)"
    )


def _label(name: str, jreg: dict) -> str:
    lam = float(jreg.get("lam", 0.0))
    if lam == 0.0:
        return "baseline"
    return f"JREG lam {lam:g} {jreg.get('weights', '')}".strip()
