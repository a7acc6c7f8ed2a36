"""The study's report, written only from its runs: ``results.md``, ``summary.json``, pictures.

Every number in the report comes from a run's ``result.json`` (the final
validation of its last checkpoint over the whole validation split) or its
logged validations (``metrics.csv``); the verdict sentences are rules applied
to those numbers (``study.verdict``), so rerunning the study rewrites the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jreg_lightning.data.shard_meta import read_meta
from jreg_lightning.errors import ConfigError, JregError
from jreg_lightning.profile_plot import plot_layer_profiles
from jreg_tools.analysis.plots import (
    plot_early_exit_losses,
    plot_jump_over_steps,
    plot_tradeoff,
)
from jreg_tools.analysis.run_logs import read_logged_series
from jreg_tools.study.runner import run_dir, unrecorded_attempts
from jreg_tools.study.seeds import group_of, known, pooled, seed_stats
from jreg_tools.study.spec import StudySpec
from jreg_tools.study.verdict import (
    JUMP_THRESHOLD,
    METRICS,
    choose_best,
    judge,
    relative_change,
    run_metrics,
    setting_stats,
    spread_text,
    verdict,
)

SERIES_KEYS = ("steps", "jump_strength", "loss")


def _still_learning(series: dict) -> bool:
    """Validation loss fell between the last two logged validations."""
    losses = [v for v in series.get("loss", []) if not math.isnan(v)]
    return len(losses) >= 2 and losses[-1] < losses[-2]


def _format(value: float, key: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if key == "argmax":
        return f"{value:.0f}" if isinstance(value, int) else f"{value:.1f}"
    if key in ("psi_L", "psi_L1", "psi_middle", "spread_std"):
        return f"{value:.5f}"
    if key in ("loss", "early_exit_middle"):
        return f"{value:.4f}"
    return f"{value:.2f}"


def _setup(spec: StudySpec, results: dict[str, dict]) -> dict:
    import yaml

    base = yaml.safe_load(spec.base.read_text())
    meta = read_meta(spec.data.data_dir) or {}
    any_result = next(iter(results.values()))
    llama = base["model"]["llama"]
    return {
        "model": {
            key: llama.get(key)
            for key in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "vocab_size")
        },
        "optim": base["model"].get("optim", {}),
        "seq_len": base["data"]["seq_len"],
        "batch_size": base["data"]["batch_size"],
        "steps": any_result["steps"],
        "steps_by_run": {name: r["steps"] for name, r in results.items()},
        "val_batches": base["trainer"].get("limit_val_batches"),
        "tokens_per_run": any_result["tokens"],
        "corpus": corpus_name(spec, meta),
        "train_tokens": meta.get("splits", {}).get("train", {}).get("tokens"),
        "val_tokens": meta.get("splits", {}).get("val", {}).get("tokens"),
        "seeds": sorted({r["seed"] for r in results.values()}),
        "fit_seconds": {name: r["fit_seconds"] for name, r in results.items()},
        "fit_attempts_unrecorded": {
            name: unrecorded_attempts(run_dir(spec, spec.run(name))) for name in results
        },
        "parallel": spec.parallel,
        "threads_per_run": spec.threads_per_run,
        "accelerator": base.get("trainer", {}).get("accelerator"),
    }


def corpus_name(spec: StudySpec, meta: dict) -> str:
    """The file(s) the study's shards were prepared from, as their ``meta.json`` records.

    The study file's ``corpus_file`` when the shards record no inputs: ``data.corpus``
    only names the kind of corpus built when that file is missing.
    """
    inputs = meta.get("inputs") or [spec.data.corpus_file]
    return ", ".join(Path(path).name for path in inputs)


def fit_times(setup: dict) -> str:
    """``name N min`` per run; ``>= N`` where a killed fit could not record its time."""
    unrecorded = setup.get("fit_attempts_unrecorded", {})
    times = [
        f"{name} {'>= ' if unrecorded.get(name) else ''}{seconds / 60:.0f} min"
        for name, seconds in setup["fit_seconds"].items()
    ]
    note = (
        " (>=: a fit killed mid-run, e.g. with its session, could not record its time)"
        if any(unrecorded.values())
        else ""
    )
    return ", ".join(times) + note


@dataclass(frozen=True)
class StudyNumbers:
    """What the finished runs measured, before seeds are pooled or anything is judged.

    Attributes:
        order: the finished runs, in the study file's order.
        baselines: the finished baseline runs.
        metrics: run -> ``run_metrics`` of its final validation.
        series: run -> its logged validations (``steps``, ``jump_strength``, ``loss``).
        learning: run -> whether its validation loss still fell at the last validation.
    """

    order: list[str]
    baselines: list[str]
    metrics: dict[str, dict]
    series: dict[str, dict]
    learning: dict[str, bool]


@dataclass(frozen=True)
class PooledSeeds:
    """The seeds pooled: the baselines' ``seed_stats``, each JREG setting's, and each run's
    difference to the baselines' mean (``J_relative``, ``loss``, ``early_exit_middle``)."""

    stats: dict
    settings: dict[str, dict]
    deltas: dict[str, dict]


def write_report(spec: StudySpec, results: dict[str, dict], command: str) -> list[Path]:
    """Write ``results.md``, ``results/summary.json`` and ``results/*.png`` into ``report_dir``.

    ``report_dir`` is e.g. ``docs``: the markdown is ``docs/results.md`` and the
    pictures and summary go to ``docs/results/``. The steps: collect the runs'
    numbers, pool the seeds, decide (the run set against the baselines, the
    verdict), draw the pictures, then write the summary, archive and markdown.
    """
    numbers = collect_numbers(spec, results)
    seeds = pool_seeds(spec, numbers)
    best = choose_best(spec, numbers.metrics, seeds.stats)
    lines = verdict(spec, numbers.metrics, seeds.stats, numbers.learning, best)
    pictures = Path(spec.report_dir) / "results"
    pictures.mkdir(parents=True, exist_ok=True)
    written = draw_pictures(spec, results, numbers, seeds, best, pictures)
    summary = build_summary(spec, results, numbers, seeds, best, lines, command)
    summary_path = pictures / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=_nan_safe) + "\n")
    written.append(summary_path)
    written.extend(archive_runs(spec, numbers.order, pictures / "runs"))
    markdown = pictures.parent / "results.md"
    markdown.write_text(render_markdown(spec, summary, numbers, seeds, pictures))
    written.append(markdown)
    if spec.readme is not None:
        text = readme_summary(spec, summary, numbers.metrics, seeds.stats)
        written.append(update_readme(spec.readme, text))
    return written


def collect_numbers(spec: StudySpec, results: dict[str, dict]) -> StudyNumbers:
    """Each finished run's final metrics and logged validations; an error without a baseline."""
    baselines = [name for name in spec.baselines if name in results]
    if not baselines:
        raise JregError(
            f"study: no baseline run has finished ({spec.baselines}); train them first "
            f"(python cli.py study --config {spec.path})"
        )
    order = [run.name for run in spec.runs if run.name in results]
    series = {}
    for name in order:
        try:
            series[name] = read_logged_series(run_dir(spec, spec.run(name)), "val")
        except (FileNotFoundError, ValueError):  # no logs kept: the final validation still counts
            series[name] = {key: [] for key in SERIES_KEYS}
    return StudyNumbers(
        order=order,
        baselines=baselines,
        metrics={name: run_metrics(results[name]["final"]) for name in order},
        series=series,
        learning={name: _still_learning(series[name]) for name in order},
    )


def pool_seeds(spec: StudySpec, numbers: StudyNumbers) -> PooledSeeds:
    """The baselines' and each setting's mean ± spread, and each run against the baselines."""
    metrics = numbers.metrics
    stats = seed_stats(metrics, numbers.baselines, METRICS)
    deltas = {
        name: {
            "J_relative": relative_change(metrics[name]["J"], stats["J"]["mean"]),
            "loss": metrics[name]["loss"] - stats["loss"]["mean"],
            "early_exit_middle": metrics[name]["early_exit_middle"]
            - stats["early_exit_middle"]["mean"],
        }
        for name in numbers.order
    }
    return PooledSeeds(stats, setting_stats(spec, metrics), deltas)


def draw_pictures(
    spec: StudySpec,
    results: dict[str, dict],
    numbers: StudyNumbers,
    seeds: PooledSeeds,
    best: str | None,
    pictures: Path,
) -> list[Path]:
    """The profiles and early exits of the baselines and ``best``, J over steps of every run
    (the baselines first in the legend), and the loss/J trade-off."""
    metrics, series, finished = numbers.metrics, numbers.series, numbers.baselines
    shown = [*finished, *([best] if best else [])]
    profiles = {
        f"{name} (J={metrics[name]['J']:.2f})": results[name]["final"]["profile"] for name in shown
    }
    written = [
        plot_layer_profiles(profiles, pictures / "profile_baseline_vs_best.png", "Psi per block")
    ]
    steps = {
        name: (series[name]["steps"], series[name]["jump_strength"])
        for name in [*finished, *(n for n in numbers.order if n not in finished)]
        if series[name]["steps"]
    }
    if steps:
        groups = {run: name for name, s in seeds.settings.items() for run in s["runs"]}
        path = pictures / "j_vs_step.png"
        written.append(plot_jump_over_steps(steps, path, emphasis=finished, groups=groups))
    early = {
        name: results[name]["final"]["early_exit_loss"]
        for name in shown
        if results[name]["final"].get("early_exit_loss")
    }
    if early:
        written.append(plot_early_exit_losses(early, pictures / "early_exit.png"))
    trade = {name: (metrics[name]["loss"], metrics[name]["J"]) for name in numbers.order}
    written.append(plot_tradeoff(trade, pictures / "tradeoff.png"))
    return written


def build_summary(
    spec: StudySpec,
    results: dict[str, dict],
    numbers: StudyNumbers,
    seeds: PooledSeeds,
    best: str | None,
    lines: list[str],
    command: str,
) -> dict:
    """``summary.json``: the setup, each run's numbers and series, the pooled seeds, the verdict."""
    return {
        "title": spec.title,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "setup": _setup(spec, {name: results[name] for name in numbers.order}),
        "baselines": numbers.baselines,
        "best": best,
        "baseline_stats": seeds.stats,
        "seed_groups": {
            name: {"runs": s["runs"], "stats": s["stats"], **judge(seeds.stats, s)}
            for name, s in seeds.settings.items()
            if pooled(s["runs"])
        },
        "runs": {
            name: {
                "jreg": results[name]["jreg"],
                "seed": results[name]["seed"],
                "metrics": numbers.metrics[name],
                "difference_to_baseline": seeds.deltas[name],
                "still_learning": numbers.learning[name],
                "val_series": {k: numbers.series[name].get(k, []) for k in SERIES_KEYS},
            }
            for name in numbers.order
        },
        "verdict": lines,
    }


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_summary(spec: StudySpec, summary: dict, metrics: dict, stats: dict) -> str:
    """Three lines and a picture for the README, from the same numbers as the report."""
    setup = summary["setup"]
    model = setup["model"]
    base_j, base_loss = stats["J"], stats["loss"]
    report = f"{spec.report_dir.as_posix()}/results.md"
    lines = [
        f"{_study_kind(setup.get('accelerator'))} ({model['num_layers']} blocks, "
        f"d={model['hidden_size']}, "
        f"{setup['tokens_per_run']:,} tokens a run, {len(summary['baselines'])} baseline seeds; "
        f"[{report}]({report})): baseline J = {base_j['mean']:.2f} "
        f"± {spread_text(base_j['spread'], '.2f')} (a jump is J > {JUMP_THRESHOLD:g}), "
        f"validation loss {base_loss['mean']:.3f} ± {spread_text(base_loss['spread'], '.3f')}.",
    ]
    best = summary.get("best")
    if best:
        groups = summary.get("seed_groups", {})
        group = group_of({name: g["runs"] for name, g in groups.items()}, best)
        if group is not None:  # the chosen setting has several seeds: their mean ± spread
            own = groups[group]["stats"]
            who = f"`{group}` ({len(groups[group]['runs'])} seeds)"
            j = f"{own['J']['mean']:.2f} ± {own['J']['spread']:.2f}"
            loss = f"{own['loss']['mean']:.3f} ± {own['loss']['spread']:.3f}"
            values = {key: own[key]["mean"] for key in ("J", "psi_L", "loss")}
        else:
            m = metrics[best]
            who, j, loss = f"`{best}`", f"{m['J']:.2f}", f"{m['loss']:.3f}"
            values = {key: m[key] for key in ("J", "psi_L", "loss")}
        lines.append(
            f"{'Best JREG run' if spec.best is None else 'Chosen JREG run'} "
            f"{who}: J {j} ({relative_change(values['J'], base_j['mean']):+.0%}), "
            f"Psi_L {values['psi_L']:.5f} against {stats['psi_L']['mean']:.5f}, validation loss "
            f"{loss} ({values['loss'] - base_loss['mean']:+.3f})."
        )
    lines.append(summary["verdict"][0])
    figure = (
        f"![baseline vs JREG]({spec.report_dir.as_posix()}/results/profile_baseline_vs_best.png)"
    )
    return "\n".join([*(f"{line}  " for line in lines), "", figure])


def _study_kind(accelerator: str | None) -> str:
    """``CPU study`` / ``GPU study`` from ``trainer.accelerator``; ``Study`` when unnamed."""
    name = DEVICES.get(str(accelerator))
    return f"{name} study" if name else "Study"


def update_readme(readme: Path, text: str) -> Path:
    """Replace what stands between the README's results markers with ``text``."""
    content = readme.read_text()
    if README_START not in content or README_END not in content:
        raise ConfigError(
            f"study: {readme} has no {README_START} / {README_END} markers; add them where "
            "the results summary belongs, or drop 'readme' from the study file"
        )
    head, rest = content.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{text}\n{README_END}{tail}")
    return readme


ARCHIVED_FILES = ("result.json", "attempts.json", "run_config.yaml", "validation_profile.csv")


def archive_runs(spec: StudySpec, names: list[str], out_dir: Path) -> list[Path]:
    """Copy each finished run's small files (result, attempts, config, logged metrics) beside
    the report, so that the numbers outlive the run folders (which hold the checkpoints)."""
    import shutil

    copied = []
    for name in names:
        source = run_dir(spec, spec.run(name))
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        files = [source / f for f in ARCHIVED_FILES if (source / f).is_file()]
        for metrics in sorted(source.glob("logs/version_*/metrics.csv")):
            files.append(metrics)
        for file in files:
            suffix = f"_{file.parent.name}" if file.name == "metrics.csv" else ""
            destination = target / f"{file.stem}{suffix}{file.suffix}"
            shutil.copyfile(file, destination)
            copied.append(destination)
    return copied


def _unfinished_line(spec: StudySpec, finished: list[str]) -> list[str]:
    """A line naming the study's runs that had no result yet, or nothing."""
    missing = [run.name for run in spec.runs if run.name not in finished]
    if not missing:
        return []
    names = ", ".join(f"`{name}`" for name in missing)
    return [
        f"Not finished when this was written, so not in it: {names} (rerunning the command "
        "resumes them from their last checkpoints and rewrites this report).",
        "",
    ]


def _count(tokens: int | None) -> str:
    """A token count, or ``?`` when the shards' ``meta.json`` is not on this machine."""
    return "?" if tokens is None else f"{tokens:,}"


def _pooled_row(label: str, stats: dict, judged: dict | None) -> str:
    """A table row of ``mean ± spread`` per metric; the baselines' row (``judged`` None) gives
    their relative J spread as ΔJ, a setting's row its ΔJ and Δloss with the seed noise."""
    cells = [label, "", "", ""]
    cells += [
        f"{_format(stats[key]['mean'], key)} ± "
        + (_format(stats[key]["spread"], key) if known(stats[key]["spread"]) else "unknown")
        for key in METRICS
    ]
    if judged is None:
        j_mean = stats["J"]["mean"]
        relative = stats["J"]["spread"] / j_mean if j_mean else math.nan
        cells += [f"±{spread_text(relative, '.0%')}", ""]
    else:
        cells += [
            f"{judged['J_relative']:+.0%} ± {spread_text(judged['J_noise'], '.0%')}",
            f"{judged['loss']:+.4f} ± {spread_text(judged['loss_noise'], '.4f')}",
        ]
    return "| " + " | ".join(cells) + " |"


def _nan_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def render_markdown(
    spec: StudySpec, summary: dict, numbers: StudyNumbers, seeds: PooledSeeds, pictures: Path
) -> str:
    """``results.md``: title, verdict, the study file's notes, setup, the runs table, pictures."""
    setup = summary["setup"]
    out = [
        f"# {spec.title}",
        "",
        f"Generated by `{summary['command']}` on {summary['generated']} from the runs in "
        f"`{spec.output_dir}`; every number below is read from those runs.",
        "",
        *_unfinished_line(spec, numbers.order),
        *_section("Verdict", summary["verdict"]),
        *(_section("Reading", spec.notes) if spec.notes else []),
        *_section(
            "Setup",
            [
                model_line(setup["model"]),
                data_line(setup),
                training_line(setup),
                schedule_line(setup),
                validation_line(setup),
            ],
        ),
        reproduce_line(summary["command"]),
        "",
        "## Runs",
        "",
        *_runs_table(summary, numbers, seeds),
        "",
        COLUMNS_NOTE,
        "",
        "## Pictures",
        "",
        *[f"![{alt}]({pictures.name}/{file})" for alt, file in PICTURES],
        "",
        f"Machine-readable: [`{pictures.name}/summary.json`]({pictures.name}/summary.json).",
        "",
    ]
    return "\n".join(out)


def _section(title: str, items: list[str]) -> list[str]:
    """A ``## title`` heading over a bullet list, with the blank line after it."""
    return [f"## {title}", "", *[f"- {item}" for item in items], ""]


def model_line(model: dict) -> str:
    """The model's size, from the base config."""
    return (
        f"Model: Llama, {model['num_layers']} blocks, hidden {model['hidden_size']}, "
        f"FFN {model['intermediate_size']}, {model['num_heads']} heads, "
        f"vocab {model['vocab_size']}."
    )


def data_line(setup: dict) -> str:
    """The corpus the shards record, its token counts, and the batch shape."""
    return (
        f"Data: `{setup['corpus']}` ({_count(setup['train_tokens'])} training / "
        f"{_count(setup['val_tokens'])} validation tokens), seq_len {setup['seq_len']}, "
        f"batch {setup['batch_size']}."
    )


def training_line(setup: dict) -> str:
    """Steps and tokens per run (a range where the runs differ), optimizer, schedule, seeds."""
    optim = setup["optim"]
    steps = sorted(set(setup.get("steps_by_run", {}).values())) or [setup["steps"]]
    if len(steps) == 1:
        length = f"{steps[0]} steps = {setup['tokens_per_run']:,} tokens per run"
    else:  # one number would be false for some runs
        length = f"{steps[0]} to {steps[-1]} steps per run (summary.json: setup.steps_by_run)"
    return (
        f"Training: {length}; AdamW lr {optim.get('lr')} "
        f"({optim.get('schedule', 'cosine')} after {optim.get('warmup_steps')} warmup steps); "
        f"seeds {setup['seeds']}."
    )


def schedule_line(setup: dict) -> str:
    """How the runs shared the machine, and each run's fit wall time."""
    return (
        f"Runs went {setup['parallel']} at a time, {setup['threads_per_run']} thread(s) each, "
        f"on {_device(setup.get('accelerator'))}; fit wall time per run: {fit_times(setup)}."
    )


# trainer.accelerator -> the device in words (the machine's core count is not recorded).
DEVICES = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "mps": "MPS", "tpu": "TPU"}


def _device(accelerator: str | None) -> str:
    """``the CPU`` / ``the GPU`` from the base config's ``trainer.accelerator``."""
    name = DEVICES.get(str(accelerator))
    return f"the {name}" if name else f"accelerator {accelerator}"


def validation_line(setup: dict) -> str:
    """Which validation the table's numbers come from: how many batches, and the final state."""
    batches = setup["val_batches"]
    if batches is None:  # limit_val_batches unset: Lightning validates on the whole split
        which = "the whole validation split (the same for every run"
    else:
        tokens = batches * setup["batch_size"] * setup["seq_len"]
        which = (
            f"the first {batches} validation batches ({tokens:,} tokens, the same batches for "
            "every run"
        )
    return (
        f"Numbers are the final validation of each run's last checkpoint on {which}; "
        "post-norm final state unless the run says pre_norm); J vs step comes from the "
        "validations logged during training, on the same batches."
    )


def reproduce_line(command: str) -> str:
    """The command that rewrites this report, and what it does with finished runs."""
    return (
        f"Reproduce: `{command}` (finished runs are skipped; a killed run resumes "
        "from its last checkpoint)."
    )


COLUMNS = (
    "run | lam | weights | final state | val loss | ppl | J | J_late | argmax | Psi_L "
    "| Psi_L-1 | mean Psi mid | early exit @ mid | std | max/mean | ΔJ | Δloss"
)
COLUMNS_NOTE = (
    "Columns: J = Psi_L / mean(Psi_2..Psi_{L-1}); J_late = max(Psi_{L-1}, Psi_L) / "
    "mean(Psi_2..Psi_{L-2}); argmax = the block with the largest Psi after block 1; "
    "Psi_L-1 = the turn of the block before the last; mean Psi mid = "
    "mean(Psi_2..Psi_{L-1}); early exit @ mid = logit-lens loss after block L/2; "
    "std and max/mean of Psi_2..Psi_L; ΔJ and Δloss against the mean of the baseline seeds. "
    "Rows of several seeds: mean ± spread (half the range; unknown for one seed); runs "
    "are seeds of one setting when only their seed differs. Their ΔJ ± and Δloss ± are "
    "the seed noise: the baselines' spread plus the setting's."
)
PICTURES = (
    ("profiles", "profile_baseline_vs_best.png"),
    ("J vs step", "j_vs_step.png"),
    ("early exit", "early_exit.png"),
    ("trade-off", "tradeoff.png"),
)


def _runs_table(summary: dict, numbers: StudyNumbers, seeds: PooledSeeds) -> list[str]:
    """One row per run, then the baselines' pooled row and one per setting of several seeds."""
    rows = [f"| {COLUMNS} |", "|" + " --- |" * len(COLUMNS.split(" | "))]
    for name in numbers.order:
        jreg = summary["runs"][name]["jreg"]
        lam = float(jreg.get("lam", 0))
        delta = seeds.deltas[name]
        cells = [
            f"`{name}`",
            f"{lam:g}",
            str(jreg.get("weights", "")) if lam else "-",
            str(jreg.get("final_state", "post_norm")),
            *[_format(numbers.metrics[name][key], key) for key in METRICS],
            f"{delta['J_relative']:+.0%}",
            f"{delta['loss']:+.4f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(_pooled_row(f"baselines, {len(summary['baselines'])} seed(s)", seeds.stats, None))
    for name, group in summary["seed_groups"].items():
        rows.append(_pooled_row(f"`{name}`, {len(group['runs'])} seeds", group["stats"], group))
    return rows
