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
from jreg_lightning.study.seeds import group_of, known, noise, seed_groups, seed_stats
from jreg_lightning.study.spec import StudySpec

SERIES_KEYS = ("steps", "jump_strength", "loss")
# A seed "has the jump" when J exceeds this, or J_late does with the largest turn at block L-1.
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
        "blocks": len(profile),
    }


def jump_place(m: dict) -> str | None:
    """Where a run's jump is: ``"the last block"`` (J above the threshold), ``"block L-1"``
    (J_late above it with the largest turn at block L-1), or ``None`` (no jump)."""
    if m["J"] > JUMP_THRESHOLD:
        return "the last block"
    if m["J_late"] > JUMP_THRESHOLD and m["argmax"] == m["blocks"] - 1:
        return "block L-1"
    return None


def one_sentence(baseline: dict, jreg: dict) -> str:
    """The demo's verdict: how much the baseline's late block turns, and JREG's, with the loss.

    Args:
        baseline, jreg: the two runs' final validations (``validation_profile.json``).

    Returns:
        One sentence; the block is block L-1 when that is where the baseline's jump is.
    """
    base, other = run_metrics(baseline), run_metrics(jreg)
    if jump_place(base) == "block L-1":
        block, key = f"block L-1 (block {base['argmax']} of {base['blocks']})", "J_late"
    else:
        block, key = "last block", "J"
    jump = "a jump" if jump_place(base) else f"no jump yet: a jump is above {JUMP_THRESHOLD:g}x"
    held = "holds it at" if other[key] < base[key] else "brings it to"
    return (
        f"The baseline's {block} turns {base[key]:.2f}x as much as the middle ones ({jump}); "
        f"JREG {held} {other[key]:.2f}x, validation loss {base['loss']:.3f} vs "
        f"{other['loss']:.3f} (one seed each: no seed spread to test the difference against)."
    )


def _spread(value: float, spec: str) -> str:
    """A seed spread as text: ``unknown`` below two seeds."""
    return format(value, spec) if known(value) else "unknown"


def _relative(value: float, reference: float) -> float:
    return (value - reference) / reference if reference else math.nan


def _still_learning(series: dict) -> bool:
    """Validation loss fell between the last two logged validations."""
    losses = [v for v in series.get("loss", []) if not math.isnan(v)]
    return len(losses) >= 2 and losses[-1] < losses[-2]


def setting_stats(spec: StudySpec, metrics: dict) -> dict[str, dict]:
    """Each JREG setting (its first run's name) -> ``runs`` (its finished seeds) and ``stats``."""
    return {
        name: {"runs": members, "stats": seed_stats(metrics, members, METRICS)}
        for name, members in seed_groups(spec, list(metrics)).items()
    }


def judge(stats: dict, setting: dict) -> dict:
    """A setting's J and loss against the baselines', and whether each beats the seed noise.

    ``setting``: an entry of ``setting_stats``. The noise is the baselines' spread, plus
    the setting's own when it has several seeds; when it is unknown (one baseline seed)
    nothing is ``clear`` or ``cheap``.
    """
    own = setting["stats"]
    pooled = len(setting["runs"]) >= 2
    base_j = stats["J"]["mean"]
    change = _relative(own["J"]["mean"], base_j)
    j_noise = noise(stats["J"], own["J"] if pooled else None) / base_j if base_j else math.nan
    loss_delta = own["loss"]["mean"] - stats["loss"]["mean"]
    loss_noise = noise(stats["loss"], own["loss"] if pooled else None)
    return {
        "J_relative": change,
        "J_noise": j_noise,
        "clear": known(j_noise) and abs(change) > j_noise,
        "loss": loss_delta,
        "loss_noise": loss_noise,
        "cheap": known(loss_noise) and loss_delta <= loss_noise,
    }


def _clear_and_cheap(spec: StudySpec, metrics: dict, stats: dict) -> list[tuple[float, str]]:
    """``(relative J change, setting)`` of the JREG settings that lower J beyond the seed
    noise at a validation-loss cost within it."""
    found = []
    for name, setting in setting_stats(spec, metrics).items():
        verdict = judge(stats, setting)
        if verdict["J_relative"] < 0 and verdict["clear"] and verdict["cheap"]:
            found.append((verdict["J_relative"], name))
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
    baselines = [name for name in spec.baselines if name in metrics]
    lines = [_baseline_sentence(baselines, metrics, learning)]
    settings = setting_stats(spec, metrics)
    for name, setting in settings.items():
        pre_norm = spec.run(name).jreg.get("final_state") == "pre_norm"
        lines.append(_setting_sentence(name, setting, stats, pre_norm))
    within = _clear_and_cheap(spec, metrics, stats)
    if within:
        change, name = within[0]
        lines.append(
            f"Largest clear reduction of J at no loss cost beyond the seed noise: `{name}` "
            f"({change:+.0%})."
        )
    elif not known(stats["J"]["spread"]):
        lines.append(
            f"The baselines' seed spread is unknown ({len(baselines)} seed): no JREG run's "
            "change is called clear or free of cost; train more baseline seeds."
        )
    else:
        lines.append(
            "No JREG run lowered J beyond the seed noise at a loss cost within the seed noise."
        )
    for run in spec.runs:
        if run.jreg.get("weights") == "final" and run.name in metrics:
            lines.append(_final_scheme_sentence(run.name, metrics[run.name], stats))
    if best is not None:
        lines.append(_early_exit_sentence(best, settings, metrics, stats))
    return lines


def _baseline_sentence(names: list[str], metrics: dict, learning: dict) -> str:
    """Does the baseline jump, on how many seeds, and where (last block or block L-1)?"""
    places = {name: jump_place(metrics[name]) for name in names}
    count = sum(place is not None for place in places.values())
    near = [name for name in names if places[name] == "block L-1"]
    if count == len(names):
        shows = "shows the jump"
    elif count:
        shows = f"shows the jump on {count} of {len(names)} seeds"
    else:
        shows = "does not show the jump"
    if near and len(near) == count:
        shows += " near the final layer"
    j_values = ", ".join(f"{metrics[name]['J']:.2f}" for name in names)
    text = f"The baseline {shows}: J = {j_values}"
    if near:
        turns = "; ".join(
            (f"`{name}` " if len(names) > 1 else "")
            + f"J_late {metrics[name]['J_late']:.2f} with the largest turn at block "
            f"{metrics[name]['argmax']} of {metrics[name]['blocks']}"
            for name in near
        )
        text += f", and block L-1 stands out ({turns}: the jump near the final layer)"
    learning_all = all(learning.get(name, False) for name in names)
    return (
        f"{text} on {len(names)} seed(s) (a jump: J above {JUMP_THRESHOLD:g}, or J_late above "
        f"{JUMP_THRESHOLD:g} with the largest turn at block L-1), and its validation loss "
        f"{'was still falling' if learning_all else 'had stopped falling'} at the last validation."
    )


def _setting_sentence(name: str, setting: dict, stats: dict, pre_norm: bool) -> str:
    """One JREG setting (one run, or its seeds pooled) against the baselines."""
    runs = setting["runs"]
    pooled = len(runs) >= 2
    result = judge(stats, setting)
    own = setting["stats"]
    if pooled:
        head = (
            f"`{name}` over {len(runs)} seeds ({', '.join(f'`{r}`' for r in runs)}): "
            f"J {own['J']['mean']:.2f} ± {own['J']['spread']:.2f}, "
        )
        noise_name = "seed noise of both"
    else:
        head = f"`{name}`: J "
        noise_name = "seed spread"
    if known(result["J_noise"]):
        j_text = f"{noise_name} ±{result['J_noise']:.0%}: " + (
            "a clear change" if result["clear"] else "within the seed noise"
        )
        loss_text = f"{noise_name} ±{result['loss_noise']:.4f}: " + (
            "no cost beyond the noise" if result["cheap"] else "a cost beyond the noise"
        )
    else:
        j_text = "seed spread unknown with one baseline seed: not called clear"
        loss_text = "seed spread unknown: not called free of cost"
    return (
        f"{head}{result['J_relative']:+.0%} against the baseline mean ({j_text}), "
        f"validation loss {result['loss']:+.4f} ({loss_text})"
        + (
            "; its Psi_L and J are measured on the pre-norm final state, the baselines' "
            "on the post-norm one, so they compare only roughly."
            if pre_norm
            else "."
        )
    )


def _early_exit_sentence(best: str, settings: dict, metrics: dict, stats: dict) -> str:
    """Do the middle blocks carry more of the prediction in the best setting?"""
    group = group_of({name: s["runs"] for name, s in settings.items()}, best)
    setting = settings.get(group) if group else None
    if setting is not None and len(setting["runs"]) >= 2:
        own = setting["stats"]["early_exit_middle"]
        who = f"`{group}` over {len(setting['runs'])} seeds"
    else:
        own = {"mean": metrics[best]["early_exit_middle"], "spread": math.nan}
        who = f"`{best}`"
    base = stats["early_exit_middle"]
    delta = own["mean"] - base["mean"]
    spread = noise(base, own)
    head = (
        f"Early exit at the middle block, {who} against the baseline: {delta:+.3f} nats "
        f"(seed noise ±{_spread(spread, '.3f')}); "
    )
    if not known(spread):
        return head + "no clear sign either way (the baselines' seed spread is unknown)."
    if delta < -spread:
        return head + "the middle layers carry more of the prediction."
    if delta <= spread:
        return head + "no clear sign that the middle layers contribute more."
    return head + "the middle layers carry less of the prediction."


def _compared(value: float, stat: dict) -> str:
    """``more than`` / ``less than`` / ``as much as`` the baselines, beyond their seed spread.

    With an unknown spread (one baseline seed) only the direction is said; the
    sentence prints the spread as ``unknown`` beside it.
    """
    spread = stat["spread"] if known(stat["spread"]) else 0.0
    if value - stat["mean"] > spread:
        return "more than"
    if stat["mean"] - value > spread:
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
        f"{m['psi_L1']:.5f} against {psi['mean']:.5f} ± {_spread(psi['spread'], '.5f')}; "
        f"the baselines' last block {stats['psi_L']['mean']:.5f}), J_late {m['J_late']:.2f} "
        "(baselines "
        f"{late['mean']:.2f} ± {_spread(late['spread'], '.2f')}), argmax block {m['argmax']}: "
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
    stats = seed_stats(metrics, finished, METRICS)
    settings = setting_stats(spec, metrics)
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
    steps = {  # the baselines first in the legend
        name: (series[name]["steps"], series[name]["jump_strength"])
        for name in [*finished, *(n for n in order if n not in finished)]
        if series[name]["steps"]
    }
    if steps:
        groups = {run: name for name, s in settings.items() for run in s["runs"]}
        written.append(
            plot_jump_over_steps(
                steps, pictures / "j_vs_step.png", emphasis=finished, groups=groups
            )
        )
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
        "seed_groups": {
            name: {"runs": s["runs"], "stats": s["stats"], **judge(stats, s)}
            for name, s in settings.items()
            if len(s["runs"]) >= 2
        },
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
        f"± {_spread(base_j['spread'], '.2f')} (a jump is J > {JUMP_THRESHOLD:g}), "
        f"validation loss {base_loss['mean']:.3f} ± {_spread(base_loss['spread'], '.3f')}.",
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
            f"{who}: J {j} ({_relative(values['J'], base_j['mean']):+.0%}), "
            f"Psi_L {values['psi_L']:.5f} against {stats['psi_L']['mean']:.5f}, validation loss "
            f"{loss} ({values['loss'] - base_loss['mean']:+.3f})."
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
        cells += [f"±{_spread(relative, '.0%')}", ""]
    else:
        cells += [
            f"{judged['J_relative']:+.0%} ± {_spread(judged['J_noise'], '.0%')}",
            f"{judged['loss']:+.4f} ± {_spread(judged['loss_noise'], '.4f')}",
        ]
    return "| " + " | ".join(cells) + " |"


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
        f"- Data: `{setup['corpus']}` ({_count(setup['train_tokens'])} training / "
        f"{_count(setup['val_tokens'])} validation tokens), seq_len {setup['seq_len']}, "
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
    out.append(_pooled_row(f"baselines, {len(summary['baselines'])} seed(s)", stats, None))
    for name, group in summary["seed_groups"].items():
        label = f"`{name}`, {len(group['runs'])} seeds"
        out.append(_pooled_row(label, group["stats"], group))
    out += [
        "",
        "Columns: J = Psi_L / mean(Psi_2..Psi_{L-1}); J_late = max(Psi_{L-1}, Psi_L) / "
        "mean(Psi_2..Psi_{L-2}); argmax = the block with the largest Psi after block 1; "
        "Psi_L-1 = the turn of the block before the last; mean Psi mid = "
        "mean(Psi_2..Psi_{L-1}); early exit @ mid = logit-lens loss after block L/2; "
        "std and max/mean of Psi_2..Psi_L; ΔJ and Δloss against the mean of the baseline seeds. "
        "Rows of several seeds: mean ± spread (half the range; unknown for one seed); runs "
        "are seeds of one setting when only their seed differs. Their ΔJ ± and Δloss ± are "
        "the seed noise: the baselines' spread plus the setting's.",
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
