"""The study's report, written only from its runs: ``results.md``, ``summary.json``, pictures.

Every number in the report comes from a run's ``result.json`` (the final
validation of its last checkpoint over the whole validation split) or its
logged validations (``metrics.csv``); the verdict sentences are rules applied
to those numbers, so rerunning the study rewrites the report.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path

from jreg_lightning.analysis.plots import (
    plot_early_exit_losses,
    plot_jump_over_steps,
    plot_layer_profiles,
    plot_tradeoff,
)
from jreg_lightning.analysis.run_logs import read_logged_series
from jreg_lightning.data.shard_meta import read_meta
from jreg_lightning.errors import ConfigError, JregError
from jreg_lightning.study.runner import run_dir, unrecorded_attempts
from jreg_lightning.study.spec import StudySpec

SERIES_KEYS = ("steps", "jump_strength", "loss")
# A baseline "has the jump" when J exceeds this on every seed.
JUMP_THRESHOLD = 2.0
METRICS = (
    "loss",
    "ppl",
    "J",
    "J_late",
    "argmax",
    "psi_L",
    "psi_L1",
    "psi_middle",
    "early_exit_middle",
    "spread_std",
    "spread_max_over_mean",
)


def run_metrics(final: dict) -> dict[str, float]:
    """The report's numbers of one final validation (see ``validation_report``)."""
    profile = [float(v) for v in final["profile"]]
    body = profile[1:]
    middle = profile[1:-1]
    mean_body = sum(body) / len(body)
    early = final.get("early_exit_loss")
    middle_block = len(profile) // 2
    return {
        "loss": float(final["loss"]),
        "ppl": float(final["ppl"]),
        "J": float(final["jump_strength"]),
        "J_late": float(final["jump_strength_late"]),
        "argmax": int(final["jump_layer"]),
        "psi_L": profile[-1],
        "psi_L1": profile[-2],
        "psi_middle": sum(middle) / len(middle),
        "early_exit_middle": float(early[middle_block - 1]) if early else math.nan,
        "spread_std": statistics.pstdev(body),
        "spread_max_over_mean": max(body) / mean_body if mean_body > 0 else math.nan,
    }


def _baseline_stats(metrics: dict[str, dict], names: list[str]) -> dict[str, dict]:
    """Mean and half-range (the seed spread) of each metric over the baseline seeds."""
    stats = {}
    for key in METRICS:
        values = [metrics[name][key] for name in names]
        stats[key] = {
            "mean": sum(values) / len(values),
            "spread": (max(values) - min(values)) / 2,
            "values": values,
        }
    return stats


def _relative(value: float, reference: float) -> float:
    return (value - reference) / reference if reference else math.nan


def _still_learning(series: dict) -> bool:
    """Validation loss fell between the last two logged validations."""
    losses = [v for v in series.get("loss", []) if not math.isnan(v)]
    return len(losses) >= 2 and losses[-1] < losses[-2]


def _clear_and_cheap(spec: StudySpec, metrics: dict, stats: dict) -> list[tuple[float, str]]:
    """``(relative J change, run)`` of the JREG runs that lower J beyond the baselines' seed
    spread at a validation-loss cost within it."""
    base_j = stats["J"]
    j_spread = base_j["spread"] / base_j["mean"] if base_j["mean"] else math.nan
    found = []
    for run in spec.runs:
        if run.is_baseline or run.name not in metrics:
            continue
        change = _relative(metrics[run.name]["J"], base_j["mean"])
        loss_delta = metrics[run.name]["loss"] - stats["loss"]["mean"]
        if change < 0 and abs(change) > j_spread and loss_delta <= stats["loss"]["spread"]:
            found.append((change, run.name))
    return sorted(found)


def choose_best(spec: StudySpec, metrics: dict, stats: dict) -> str | None:
    """The JREG run the report sets against the baseline.

    The study file's ``best`` if it names a finished run; else (``best: auto``) the
    largest clear reduction of J at no loss cost beyond the seed spread; else the
    JREG run with the lowest J.
    """
    if spec.best in metrics:
        return spec.best
    found = _clear_and_cheap(spec, metrics, stats)
    if found:
        return found[0][1]
    jreg = [run.name for run in spec.runs if not run.is_baseline and run.name in metrics]
    return min(jreg, key=lambda name: metrics[name]["J"]) if jreg else None


def verdict(
    spec: StudySpec, metrics: dict[str, dict], stats: dict, learning: dict, best: str | None
) -> list[str]:
    """Plain sentences, each from a rule over the numbers (no number typed by hand)."""
    lines = []
    base_j = stats["J"]
    seeds_with_jump = sum(metrics[name]["J"] > JUMP_THRESHOLD for name in spec.baselines)
    if seeds_with_jump == len(spec.baselines):
        shows = "shows the jump"
    elif seeds_with_jump:
        shows = f"shows the jump on {seeds_with_jump} of {len(spec.baselines)} seeds"
    else:
        shows = "does not show the jump"
    learning_all = all(learning.get(name, False) for name in spec.baselines)
    j_values = ", ".join(f"{v:.2f}" for v in base_j["values"])
    lines.append(
        f"The baseline {shows}: J = {j_values} on "
        f"{len(spec.baselines)} seed(s) (threshold {JUMP_THRESHOLD:g}), and its validation loss "
        f"{'was still falling' if learning_all else 'had stopped falling'} at the last validation."
    )
    loss_spread = stats["loss"]["spread"]
    j_spread = base_j["spread"] / base_j["mean"] if base_j["mean"] else math.nan
    for run in spec.runs:
        if run.is_baseline or run.name not in metrics:
            continue
        m = metrics[run.name]
        change = _relative(m["J"], base_j["mean"])
        loss_delta = m["loss"] - stats["loss"]["mean"]
        clear = abs(change) > j_spread
        cheap = loss_delta <= loss_spread
        pre_norm = run.jreg.get("final_state") == "pre_norm"
        lines.append(
            f"`{run.name}`: J {change:+.0%} against the baseline mean (seed spread "
            f"±{j_spread:.0%}: {'a clear change' if clear else 'within the seed noise'}), "
            f"validation loss {loss_delta:+.4f} (seed spread ±{loss_spread:.4f}: "
            f"{'no cost beyond the noise' if cheap else 'a cost beyond the noise'})"
            + (
                "; its Psi_L and J are measured on the pre-norm final state, the baselines' "
                "on the post-norm one, so they compare only roughly."
                if pre_norm
                else "."
            )
        )
    within = _clear_and_cheap(spec, metrics, stats)
    if within:
        change, name = within[0]
        lines.append(
            f"Largest clear reduction of J at no loss cost beyond the seed spread: `{name}` "
            f"({change:+.0%})."
        )
    else:
        lines.append(
            "No JREG run lowered J beyond the seed spread at a loss cost within the seed spread."
        )
    for run in spec.runs:
        if run.jreg.get("weights") == "final" and run.name in metrics:
            lines.append(_final_scheme_sentence(run.name, metrics[run.name], stats))
    if best is not None:
        m = metrics[best]
        delta = m["early_exit_middle"] - stats["early_exit_middle"]["mean"]
        spread = stats["early_exit_middle"]["spread"]
        lines.append(
            f"Early exit at the middle block, `{best}` against the baseline: "
            f"{delta:+.3f} nats (seed spread ±{spread:.3f}); "
            + (
                "the middle layers carry more of the prediction."
                if delta < -spread
                else "no clear sign that the middle layers contribute more."
                if delta <= spread
                else "the middle layers carry less of the prediction."
            )
        )
    return lines


def _compared(value: float, stat: dict) -> str:
    """``more than`` / ``less than`` / ``as much as`` the baselines, beyond their seed spread."""
    if value - stat["mean"] > stat["spread"]:
        return "more than"
    if stat["mean"] - value > stat["spread"]:
        return "less than"
    return "as much as"


def _final_scheme_sentence(name: str, m: dict, stats: dict) -> str:
    """Did penalising the final block only move the jump one block earlier?

    Block L-1's own turn (Psi_{L-1}) against the baselines', and whether it now
    jumps: J_late = max(Psi_{L-1}, Psi_L) / mean(Psi_2..Psi_{L-2}) reads block L-1
    once Psi_L is pressed below it, and the same threshold that says the
    baselines' last block jumps (J > 2) says whether block L-1 does.
    """
    psi, late = stats["psi_L1"], stats["J_late"]
    jumps_at_l1 = m["psi_L1"] > m["psi_L"] and m["J_late"] > JUMP_THRESHOLD
    sharpness = {"more than": "more sharply than", "less than": "less sharply than"}.get(
        _compared(m["J_late"], late), "as sharply as"
    )
    head = (
        f"`{name}` (final block only): J {_relative(m['J'], stats['J']['mean']):+.0%}; "
        f"block L-1 turns {_compared(m['psi_L1'], psi)} in the baselines (Psi_L-1 "
        f"{m['psi_L1']:.5f} against {psi['mean']:.5f} ± {psi['spread']:.5f}; the baselines' "
        f"last block {stats['psi_L']['mean']:.5f}), J_late {m['J_late']:.2f} (baselines "
        f"{late['mean']:.2f} ± {late['spread']:.2f}), argmax block {m['argmax']}: "
    )
    if jumps_at_l1:
        return head + (
            f"block L-1 now jumps (J_late above {JUMP_THRESHOLD:g} with the last block held "
            f"below it), {sharpness} the baselines' last block: the jump moved one block earlier."
        )
    return head + (
        f"block L-1 does not jump (J_late at most {JUMP_THRESHOLD:g}, or the last block still "
        "turns more): the jump did not move one block earlier."
    )


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
        "val_batches": base["trainer"].get("limit_val_batches"),
        "tokens_per_run": any_result["tokens"],
        "corpus": spec.data.corpus,
        "train_tokens": meta.get("splits", {}).get("train", {}).get("tokens"),
        "val_tokens": meta.get("splits", {}).get("val", {}).get("tokens"),
        "seeds": sorted({r["seed"] for r in results.values()}),
        "fit_seconds": {name: r["fit_seconds"] for name, r in results.items()},
        "fit_attempts_unrecorded": {
            name: unrecorded_attempts(run_dir(spec, spec.run(name))) for name in results
        },
        "parallel": spec.parallel,
        "threads_per_run": spec.threads_per_run,
    }


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


def write_report(spec: StudySpec, results: dict[str, dict], command: str) -> list[Path]:
    """Write ``results.md``, ``results/summary.json`` and ``results/*.png`` into ``report_dir``.

    ``report_dir`` is e.g. ``docs``: the markdown is ``docs/results.md`` and the
    pictures and summary go to ``docs/results/``.
    """
    finished = [name for name in spec.baselines if name in results]
    if not finished:
        raise JregError(
            f"study: no baseline run has finished ({spec.baselines}); train them first "
            f"(python cli.py study --config {spec.path})"
        )
    order = [run.name for run in spec.runs if run.name in results]
    metrics = {name: run_metrics(results[name]["final"]) for name in order}
    stats = _baseline_stats(metrics, finished)
    series = {}
    for name in order:
        try:
            series[name] = read_logged_series(run_dir(spec, spec.run(name)), "val")
        except (FileNotFoundError, ValueError):
            series[name] = {"steps": [], "jump_strength": [], "loss": []}
    learning = {name: _still_learning(series[name]) for name in order}
    best = choose_best(spec, metrics, stats)
    lines = verdict(spec, {n: metrics[n] for n in order}, stats, learning, best)
    report_dir = Path(spec.report_dir)
    pictures = report_dir / "results"
    pictures.mkdir(parents=True, exist_ok=True)
    written = []

    profiles = {
        f"{name} (J={metrics[name]['J']:.2f})": results[name]["final"]["profile"]
        for name in [*finished, *([best] if best else [])]
    }
    written.append(
        plot_layer_profiles(profiles, pictures / "profile_baseline_vs_best.png", "Psi per block")
    )
    steps = {name: (s["steps"], s["jump_strength"]) for name, s in series.items() if s["steps"]}
    if steps:
        written.append(plot_jump_over_steps(steps, pictures / "j_vs_step.png"))
    early = {
        name: results[name]["final"]["early_exit_loss"]
        for name in [*finished, *([best] if best else [])]
        if results[name]["final"].get("early_exit_loss")
    }
    if early:
        written.append(plot_early_exit_losses(early, pictures / "early_exit.png"))
    written.append(
        plot_tradeoff(
            {name: (metrics[name]["loss"], metrics[name]["J"]) for name in order},
            pictures / "tradeoff.png",
        )
    )

    setup = _setup(spec, {name: results[name] for name in order})
    deltas = {
        name: {
            "J_relative": _relative(metrics[name]["J"], stats["J"]["mean"]),
            "loss": metrics[name]["loss"] - stats["loss"]["mean"],
            "early_exit_middle": metrics[name]["early_exit_middle"]
            - stats["early_exit_middle"]["mean"],
        }
        for name in order
    }
    summary = {
        "title": spec.title,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "setup": setup,
        "baselines": finished,
        "best": best,
        "baseline_stats": stats,
        "runs": {
            name: {
                "jreg": results[name]["jreg"],
                "seed": results[name]["seed"],
                "metrics": metrics[name],
                "difference_to_baseline": deltas[name],
                "still_learning": learning[name],
                "val_series": {
                    k: series[name].get(k, []) for k in ("steps", "jump_strength", "loss")
                },
            }
            for name in order
        },
        "verdict": lines,
    }
    summary_path = pictures / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=_nan_safe) + "\n")
    written.append(summary_path)
    written.extend(archive_runs(spec, order, pictures / "runs"))
    markdown = report_dir / "results.md"
    markdown.write_text(_markdown(spec, summary, order, metrics, stats, deltas, pictures))
    written.append(markdown)
    if spec.readme is not None:
        written.append(update_readme(spec.readme, readme_summary(spec, summary, metrics, stats)))
    return written


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_summary(spec: StudySpec, summary: dict, metrics: dict, stats: dict) -> str:
    """Three lines and a picture for the README, from the same numbers as the report."""
    setup = summary["setup"]
    model = setup["model"]
    base_j, base_loss = stats["J"], stats["loss"]
    lines = [
        f"CPU study ({model['num_layers']} blocks, d={model['hidden_size']}, "
        f"{setup['tokens_per_run']:,} tokens a run, {len(summary['baselines'])} baseline seeds; "
        f"[docs/results.md](docs/results.md)): baseline J = {base_j['mean']:.2f} "
        f"± {base_j['spread']:.2f} (a jump is J > {JUMP_THRESHOLD:g}), "
        f"validation loss {base_loss['mean']:.3f} ± {base_loss['spread']:.3f}.",
    ]
    best = summary.get("best")
    if best:
        m = metrics[best]
        lines.append(
            f"{'Best JREG run' if spec.best is None else 'Chosen JREG run'} "
            f"`{best}`: J {m['J']:.2f} ({_relative(m['J'], base_j['mean']):+.0%}), "
            f"Psi_L {m['psi_L']:.5f} against {stats['psi_L']['mean']:.5f}, validation loss "
            f"{m['loss']:.3f} ({m['loss'] - base_loss['mean']:+.3f})."
        )
    lines.append(summary["verdict"][0])
    figure = (
        f"![baseline vs JREG]({spec.report_dir.as_posix()}/results/profile_baseline_vs_best.png)"
    )
    return "\n".join([*(f"{line}  " for line in lines), "", figure])


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


def _nan_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _markdown(spec, summary, order, metrics, stats, deltas, pictures: Path) -> str:
    setup = summary["setup"]
    model = setup["model"]
    optim = setup["optim"]
    rel = pictures.name
    val_tokens = setup["val_batches"] * setup["batch_size"] * setup["seq_len"]
    out = [
        f"# {spec.title}",
        "",
        f"Generated by `{summary['command']}` on {summary['generated']} from the runs in "
        f"`{spec.output_dir}`; every number below is read from those runs.",
        "",
        *_unfinished_line(spec, order),
        "## Verdict",
        "",
        *[f"- {line}" for line in summary["verdict"]],
        "",
    ]
    if spec.notes:
        out += ["## Reading", "", *[f"- {note}" for note in spec.notes], ""]
    out += [
        "## Setup",
        "",
        f"- Model: Llama, {model['num_layers']} blocks, hidden {model['hidden_size']}, "
        f"FFN {model['intermediate_size']}, {model['num_heads']} heads, "
        f"vocab {model['vocab_size']}.",
        f"- Data: `{setup['corpus']}` ({setup['train_tokens']:,} training / "
        f"{setup['val_tokens']:,} validation tokens), seq_len {setup['seq_len']}, "
        f"batch {setup['batch_size']}.",
        f"- Training: {setup['steps']} steps = {setup['tokens_per_run']:,} tokens per run; "
        f"AdamW lr {optim.get('lr')} ({optim.get('schedule', 'cosine')} after "
        f"{optim.get('warmup_steps')} warmup steps); seeds {setup['seeds']}.",
        f"- Runs went {setup['parallel']} at a time, {setup['threads_per_run']} thread(s) each, "
        f"on a 2-core CPU; fit wall time per run: {fit_times(setup)}.",
        f"- Numbers are the final validation of each run's last checkpoint on the first "
        f"{setup['val_batches']} validation batches ({val_tokens:,} tokens, the same batches for "
        "every run; post-norm final state unless the run says pre_norm); J vs step comes from "
        "the validations logged during training, on the same batches.",
        "",
        f"Reproduce: `{summary['command']}` (finished runs are skipped; a killed run resumes "
        "from its last checkpoint).",
        "",
        "## Runs",
        "",
        "| run | lam | weights | final state | val loss | ppl | J | J_late | argmax | Psi_L "
        "| Psi_L-1 | mean Psi mid | early exit @ mid | std | max/mean | ΔJ | Δloss |",
        "|" + " --- |" * 17,
    ]
    for name in order:
        m = metrics[name]
        jreg = summary["runs"][name]["jreg"]
        d = deltas[name]
        cells = [
            f"`{name}`",
            f"{float(jreg.get('lam', 0)):g}",
            str(jreg.get("weights", "")) if float(jreg.get("lam", 0)) else "-",
            str(jreg.get("final_state", "post_norm")),
            *[_format(m[key], key) for key in METRICS],
            f"{d['J_relative']:+.0%}",
            f"{d['loss']:+.4f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    spread_cells = ["baseline seed spread (±)", "", "", ""]
    spread_cells += [_format(stats[key]["spread"], key) for key in METRICS]
    j_mean = stats["J"]["mean"]
    spread_cells += [f"±{stats['J']['spread'] / j_mean:.0%}" if j_mean else "", ""]
    out.append("| " + " | ".join(spread_cells) + " |")
    out += [
        "",
        "Columns: J = Psi_L / mean(Psi_2..Psi_{L-1}); J_late = max(Psi_{L-1}, Psi_L) / "
        "mean(Psi_2..Psi_{L-2}); argmax = the block with the largest Psi after block 1; "
        "Psi_L-1 = the turn of the block before the last; mean Psi mid = "
        "mean(Psi_2..Psi_{L-1}); early exit @ mid = logit-lens loss after block L/2; "
        "std and max/mean of Psi_2..Psi_L; ΔJ and Δloss against the mean of the baseline seeds.",
        "",
        "## Pictures",
        "",
        f"![profiles]({rel}/profile_baseline_vs_best.png)",
        f"![J vs step]({rel}/j_vs_step.png)",
        f"![early exit]({rel}/early_exit.png)",
        f"![trade-off]({rel}/tradeoff.png)",
        "",
        f"Machine-readable: [`{rel}/summary.json`]({rel}/summary.json).",
        "",
    ]
    return "\n".join(out)
