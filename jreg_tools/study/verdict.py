"""The report's rules: a run's numbers, how seeds pool, and the verdict's sentences.

Each sentence is a rule applied to the numbers of ``result.json`` files, never
prose written for one study: whether the baselines jump (J above
``JUMP_THRESHOLD`` at the last block, or J_late above it with the largest turn
at block L-1), whether their middle blocks are idle (``IDLE_MIDDLE_PSI``),
whether a JREG setting's change beats the seed noise (``study.seeds``), whether
the middle blocks carry more of the prediction, and the demo's one-sentence summary.
"""

from __future__ import annotations

import math
import statistics

from jreg_tools.study.seeds import group_of, known, noise, pooled, seed_groups, seed_stats
from jreg_tools.study.spec import StudySpec

# The report's thresholds, all here (``seeds.MIN_SEEDS``: the seeds a spread needs).
# A seed "has the jump" when J exceeds this, or J_late does with the largest turn at block L-1.
JUMP_THRESHOLD = 2.0
# Middle blocks (2..L-1) whose mean Psi is below this barely turn, so J, a ratio over that
# mean, is large because they are idle rather than because the last block turns sharply
# (method.md: 0.0011 in a run that had stopped learning, 0.003-0.012 in runs still learning).
IDLE_MIDDLE_PSI = 0.002
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


def spread_text(value: float, spec: str) -> str:
    """A seed spread as text: ``unknown`` below two seeds."""
    return format(value, spec) if known(value) else "unknown"


def relative_change(value: float, reference: float) -> float:
    """``(value - reference) / reference``; NaN against a zero reference."""
    return (value - reference) / reference if reference else math.nan


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
    several = pooled(setting["runs"])
    base_j = stats["J"]["mean"]
    change = relative_change(own["J"]["mean"], base_j)
    j_noise = noise(stats["J"], own["J"] if several else None) / base_j if base_j else math.nan
    loss_delta = own["loss"]["mean"] - stats["loss"]["mean"]
    loss_noise = noise(stats["loss"], own["loss"] if several else None)
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
    """Plain sentences, each from a rule over the numbers (no number typed by hand).

    In order: does the baseline jump; are its middle blocks idle (only when they are);
    each JREG setting against the baselines; the largest clear reduction; each
    final-block-only run; the early exit of ``best``.
    """
    baselines = [name for name in spec.baselines if name in metrics]
    lines = [_baseline_sentence(baselines, metrics, learning)]
    lines += idle_middle_sentences(baselines, metrics, learning)
    settings = setting_stats(spec, metrics)
    for name, setting in settings.items():
        pre_norm = spec.run(name).jreg.get("final_state") == "pre_norm"
        lines.append(_setting_sentence(name, setting, stats, pre_norm))
    jumps = sum(jump_place(metrics[name]) is not None for name in baselines)
    lines.append(
        reduction_sentence(
            _clear_and_cheap(spec, metrics, stats), len(settings), stats, len(baselines), jumps
        )
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
    text = f"The baseline {_jump_seen(count, len(names), bool(near) and len(near) == count)}: "
    text += "J = " + ", ".join(f"{metrics[name]['J']:.2f}" for name in names)
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
        f"{_loss_trend(learning_all)} at the last validation."
    )


def _jump_seen(count: int, seeds: int, all_near: bool) -> str:
    """``shows the jump`` (on every seed), ``... on k of n seeds`` or ``does not show the jump``;
    ``near the final layer`` when every seed that jumps does so at block L-1."""
    if count == seeds:
        shows = "shows the jump"
    elif count:
        shows = f"shows the jump on {count} of {seeds} seeds"
    else:
        return "does not show the jump"
    return shows + (" near the final layer" if all_near else "")


def _loss_trend(learning: bool) -> str:
    """Whether validation loss fell between the last two validations, in words."""
    return "was still falling" if learning else "had stopped falling"


def idle_middle_sentences(names: list[str], metrics: dict, learning: dict) -> list[str]:
    """A warning for the baseline seeds that jump with idle middle blocks, or nothing.

    J divides by the middle blocks' mean Psi, so middle blocks that barely turn
    (mean Psi below ``IDLE_MIDDLE_PSI``) make J large without a sharp last block;
    a run in that state whose loss has stopped falling is not the paper's
    phenomenon, which grows over healthy pretraining.
    """
    idle = [
        name
        for name in names
        if jump_place(metrics[name]) is not None and metrics[name]["psi_middle"] < IDLE_MIDDLE_PSI
    ]
    if not idle:
        return []
    seeds = "; ".join(
        (f"`{name}` " if len(names) > 1 else "")
        + f"mean Psi mid {metrics[name]['psi_middle']:.5f}, Psi_L {metrics[name]['psi_L']:.5f}, "
        f"loss {_loss_trend(learning.get(name, False))}"
        for name in idle
    )
    stalled = not all(learning.get(name, False) for name in idle)
    return [
        f"Caution: J is a ratio over the middle blocks' turn, and they barely turn in "
        f"{len(idle)} of {len(names)} baseline seed(s) that jump (mean Psi of blocks 2..L-1 "
        f"below {IDLE_MIDDLE_PSI:g}: {seeds}): there J reads idle middle blocks more than a "
        "sharp last block"
        + (
            "; a jump in a run whose loss has stopped falling is not the paper's phenomenon, "
            "which grows over healthy pretraining."
            if stalled
            else "."
        )
    ]


def _setting_sentence(name: str, setting: dict, stats: dict, pre_norm: bool) -> str:
    """One JREG setting (one run, or its seeds pooled) against the baselines."""
    runs = setting["runs"]
    result = judge(stats, setting)
    own = setting["stats"]
    if pooled(runs):
        head = (
            f"`{name}` over {len(runs)} seeds ({', '.join(f'`{r}`' for r in runs)}): "
            f"J {own['J']['mean']:.2f} ± {own['J']['spread']:.2f}, "
        )
        noise_name = "seed noise of both"
    else:
        head = f"`{name}`: J "
        noise_name = "seed spread"
    return (
        f"{head}{result['J_relative']:+.0%} against the baseline mean "
        f"({j_change_clause(result, noise_name)}), validation loss {result['loss']:+.4f} "
        f"({loss_cost_clause(result, noise_name)})"
        + (
            "; its Psi_L and J are measured on the pre-norm final state, the baselines' "
            "on the post-norm one, so they compare only roughly."
            if pre_norm
            else "."
        )
    )


def j_change_clause(result: dict, noise_name: str) -> str:
    """A setting's J change (``judge``'s result): clear, within the seed noise, or not called
    either because the baselines' seed spread is unknown (one baseline seed)."""
    if not known(result["J_noise"]):
        return "seed spread unknown with one baseline seed: not called clear"
    called = "a clear change" if result["clear"] else "within the seed noise"
    return f"{noise_name} ±{result['J_noise']:.0%}: {called}"


def loss_cost_clause(result: dict, noise_name: str) -> str:
    """A setting's validation-loss change (``judge``'s result): a cost beyond the seed noise,
    none beyond it, or not called free of cost against an unknown spread."""
    if not known(result["loss_noise"]):
        return "seed spread unknown: not called free of cost"
    called = "no cost beyond the noise" if result["cheap"] else "a cost beyond the noise"
    return f"{noise_name} ±{result['loss_noise']:.4f}: {called}"


def reduction_sentence(
    found: list[tuple[float, str]], settings: int, stats: dict, baselines: int, jumps: int
) -> str:
    """The study's bottom line on J: the largest clear reduction at no loss cost, or why none.

    Args:
        found: ``_clear_and_cheap``'s ``(relative J change, setting)``, largest cut first.
        settings: how many JREG settings finished.
        stats: the baselines' seed stats.
        baselines, jumps: how many baseline seeds finished, and how many of them jump.
    """
    if not settings:
        return "No JREG run has finished: nothing is set against the baselines yet."
    if found:
        change, name = found[0]
        text = (
            f"Largest clear reduction of J at no loss cost beyond the seed noise: `{name}` "
            f"({change:+.0%})"
        )
        if not jumps:  # a lower J than a baseline without the jump removes no jump
            text += "; the baselines show no jump, so it lowers a ratio, not a jump"
        return text + "."
    if not known(stats["J"]["spread"]):
        return (
            f"The baselines' seed spread is unknown ({baselines} seed): no JREG run's "
            "change is called clear or free of cost; train more baseline seeds."
        )
    return "No JREG run lowered J beyond the seed noise at a loss cost within the seed noise."


def _early_exit_sentence(best: str, settings: dict, metrics: dict, stats: dict) -> str:
    """Do the middle blocks carry more of the prediction in the best setting?"""
    group = group_of({name: s["runs"] for name, s in settings.items()}, best)
    setting = settings.get(group) if group else None
    if setting is not None and pooled(setting["runs"]):
        own = setting["stats"]["early_exit_middle"]
        who = f"`{group}` over {len(setting['runs'])} seeds"
    else:
        own = {"mean": metrics[best]["early_exit_middle"], "spread": math.nan}
        who = f"`{best}`"
    base = stats["early_exit_middle"]
    delta = own["mean"] - base["mean"]
    spread = noise(base, own)
    return (
        f"Early exit at the middle block, {who} against the baseline: {delta:+.3f} nats "
        f"(seed noise ±{spread_text(spread, '.3f')}); {middle_contribution(delta, spread)}."
    )


def middle_contribution(delta: float, spread: float) -> str:
    """What a change of the middle block's early-exit loss says, against its seed noise.

    Lower loss beyond the noise: the middle layers carry more of the prediction; higher:
    less; NaN ``delta`` (no early-exit losses measured) or ``spread`` (one baseline seed):
    no sign either way.
    """
    if not known(delta):
        return "no sign either way (no early-exit losses were measured)"
    if not known(spread):
        return "no clear sign either way (the baselines' seed spread is unknown)"
    if delta < -spread:
        return "the middle layers carry more of the prediction"
    if delta <= spread:
        return "no clear sign that the middle layers contribute more"
    return "the middle layers carry less of the prediction"


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
        f"`{name}` (final block only): J {relative_change(m['J'], stats['J']['mean']):+.0%}; "
        f"block L-1 turns {_compared(m['psi_L1'], psi)} in the baselines (Psi_L-1 "
        f"{m['psi_L1']:.5f} against {psi['mean']:.5f} ± {spread_text(psi['spread'], '.5f')}; "
        f"the baselines' last block {stats['psi_L']['mean']:.5f}), J_late {m['J_late']:.2f} "
        "(baselines "
        f"{late['mean']:.2f} ± {spread_text(late['spread'], '.2f')}), argmax block {m['argmax']}: "
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
