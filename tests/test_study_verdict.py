"""The report's sentences are rules over the numbers: each rule triggered by constructed results."""

from __future__ import annotations

import dataclasses
import math

import pytest

from jreg_tools.study.report import corpus_name, readme_summary
from jreg_tools.study.seeds import seed_groups, seed_stats
from jreg_tools.study.spec import RunSpec, load_study
from jreg_tools.study.verdict import (
    METRICS,
    _early_exit_sentence,
    idle_middle_sentences,
    j_change_clause,
    judge,
    loss_cost_clause,
    middle_contribution,
    reduction_sentence,
    setting_stats,
    verdict,
)
from tests.studies import REPO, tiny_study


def _metrics(j: float, loss: float = 4.0, j_late: float | None = None, argmax: int = 12) -> dict:
    """A run's report numbers (12 blocks); only J, J_late, argmax and loss matter here."""
    values = dict.fromkeys(METRICS, 0.01)
    return values | {
        "J": j,
        "J_late": j if j_late is None else j_late,
        "argmax": argmax,
        "blocks": 12,
        "loss": loss,
        "early_exit_middle": 5.0,
    }


def _spec(tmp_path, runs: dict[str, tuple[int, float]], baselines: list[str]):
    """The tiny study with ``runs``: name -> (seed, lam), all linear."""
    spec = load_study(tiny_study(tmp_path))
    specs = [
        RunSpec(name, seed, {"lam": lam} | ({"weights": "linear"} if lam else {}), {})
        for name, (seed, lam) in runs.items()
    ]
    return dataclasses.replace(spec, runs=specs, baselines=baselines, best=None)


def _verdict(spec, metrics: dict) -> list[str]:
    stats = seed_stats(metrics, spec.baselines, METRICS)
    return verdict(spec, metrics, stats, dict.fromkeys(metrics, True), None)


def test_one_baseline_seed_leaves_the_spread_unknown_and_calls_nothing_clear(tmp_path):
    spec = _spec(tmp_path, {"baseline": (1, 0.0), "jreg": (1, 30.0)}, ["baseline"])
    metrics = {"baseline": _metrics(3.0, loss=4.00), "jreg": _metrics(0.5, loss=3.90)}
    lines = _verdict(spec, metrics)
    jreg = next(line for line in lines if line.startswith("`jreg`"))
    assert "-83% against the baseline mean" in jreg
    assert "seed spread unknown" in jreg and "not called clear" in jreg
    assert "not called free of cost" in jreg
    text = " ".join(lines)
    for claim in ("a clear change", "no cost beyond the noise", "±0%", "±0.0000"):
        assert claim not in text
    assert "Largest clear reduction" not in text and "train more baseline seeds" in text
    early = _early_exit_sentence(
        "jreg", {}, metrics | {"jreg": _metrics(0.5)}, seed_stats(metrics, ["baseline"], METRICS)
    )
    assert "no clear sign either way" in early and "±unknown" in early


def test_a_turn_at_block_l_minus_1_is_reported_as_the_jump_near_the_final_layer(tmp_path):
    spec = _spec(tmp_path, {"baseline": (1, 0.0)}, ["baseline"])
    metrics = {"baseline": _metrics(1.80, j_late=3.39, argmax=11)}
    first = _verdict(spec, metrics)[0]
    assert first.startswith("The baseline shows the jump near the final layer: J = 1.80")
    assert "J_late 3.39 with the largest turn at block 11 of 12" in first
    # J_late above the threshold but the largest turn elsewhere: no jump.
    metrics = {"baseline": _metrics(1.80, j_late=3.39, argmax=6)}
    assert _verdict(spec, metrics)[0].startswith("The baseline does not show the jump")
    # One seed jumps at the last block, one at block L-1: both count, the L-1 one named.
    spec = _spec(tmp_path, {"b1": (1, 0.0), "b2": (2, 0.0)}, ["b1", "b2"])
    metrics = {"b1": _metrics(2.6), "b2": _metrics(1.8, j_late=3.4, argmax=11)}
    first = _verdict(spec, metrics)[0]
    assert first.startswith("The baseline shows the jump: J = 2.60, 1.80")
    assert "`b2` J_late 3.40 with the largest turn at block 11 of 12" in first


def test_seeds_of_one_setting_pool_as_mean_and_spread(tmp_path):
    runs = {
        "baseline_s1": (1, 0.0),
        "baseline_s2": (2, 0.0),
        "baseline_s3": (3, 0.0),
        "linear_lam30": (1, 30.0),
        "linear_lam10": (1, 10.0),
        "linear_lam30_s2": (2, 30.0),
        "linear_lam30_s3": (3, 30.0),
    }
    spec = _spec(tmp_path, runs, ["baseline_s1", "baseline_s2", "baseline_s3"])
    metrics = {
        "baseline_s1": _metrics(2.6, loss=3.90),
        "baseline_s2": _metrics(3.1, loss=3.99),
        "baseline_s3": _metrics(2.85, loss=3.95),
        "linear_lam30": _metrics(0.49, loss=3.89),
        "linear_lam10": _metrics(2.0, loss=3.90),
        "linear_lam30_s2": _metrics(0.60, loss=3.93),
        "linear_lam30_s3": _metrics(0.38, loss=3.97),
    }
    assert seed_groups(spec, list(metrics)) == {
        "linear_lam30": ["linear_lam30", "linear_lam30_s2", "linear_lam30_s3"],
        "linear_lam10": ["linear_lam10"],
    }
    settings = setting_stats(spec, metrics)
    j = settings["linear_lam30"]["stats"]["J"]
    assert j["mean"] == pytest.approx(0.49) and j["spread"] == pytest.approx(0.11)
    assert math.isnan(settings["linear_lam10"]["stats"]["J"]["spread"])
    lines = _verdict(spec, metrics)
    pooled = next(line for line in lines if line.startswith("`linear_lam30` over 3 seeds"))
    # J: -83% against noise (0.25 + 0.11) / 2.85 = 13%; loss +0.0 within 0.045 + 0.04.
    assert "J 0.49 ± 0.11, -83% against the baseline mean (seed noise of both ±13%" in pooled
    assert "a clear change" in pooled and "no cost beyond the noise" in pooled
    assert not any(line.startswith("`linear_lam30_s2`") for line in lines)
    single = next(line for line in lines if line.startswith("`linear_lam10`"))
    assert "seed spread ±9%" in single  # the baselines' spread alone: 0.25 / 2.85
    assert "Largest clear reduction of J at no loss cost beyond the seed noise: `linear_lam30`" in (
        " ".join(lines)
    )


def test_the_readme_line_gives_the_chosen_settings_seeds_as_mean_and_spread(tmp_path):
    spec = dataclasses.replace(_spec(tmp_path, {"b": (1, 0.0)}, ["b"]), best="j")
    summary = {
        "setup": {"model": {"num_layers": 12, "hidden_size": 256}, "tokens_per_run": 1000},
        "baselines": ["b"],
        "best": "j",
        "seed_groups": {
            "j": {
                "runs": ["j", "j_s2"],
                "stats": {
                    "J": {"mean": 0.5, "spread": 0.1},
                    "loss": {"mean": 3.9, "spread": 0.02},
                    "psi_L": {"mean": 0.001, "spread": 0.0},
                },
            }
        },
        "verdict": ["first line"],
    }
    stats = seed_stats({"b": _metrics(2.5, loss=4.0)}, ["b"], METRICS)
    text = readme_summary(spec, summary, {"j": _metrics(0.4)}, stats)
    assert "baseline J = 2.50 ± unknown" in text
    assert "Chosen JREG run `j` (2 seeds): J 0.50 ± 0.10 (-80%)" in text
    assert "validation loss 3.900 ± 0.020 (-0.100)" in text


def test_the_corpus_is_named_from_the_data_the_study_used(tmp_path):
    spec = load_study(tiny_study(tmp_path))  # data.corpus: docstrings, corpus_file corpus.jsonl
    assert corpus_name(spec, {"inputs": ["/data/prose/wiki.jsonl"]}) == "wiki.jsonl"
    assert corpus_name(spec, {}) == "corpus.jsonl"


def test_j_vs_step_draws_no_two_runs_alike_and_the_baselines_heavier(tmp_path):
    from jreg_tools.analysis.plots import line_styles, plot_jump_over_steps

    spec = load_study(REPO / "configs/study/cpu.yaml")
    names = [run.name for run in spec.runs]
    groups = {run: name for name, runs in seed_groups(spec, names).items() for run in runs}
    styles = line_styles(names, emphasis=spec.baselines, groups=groups)
    pairs = [(s["color"], s["linestyle"]) for s in styles.values()]
    assert len(set(pairs)) == len(names) == 15
    heavy = {name for name, s in styles.items() if s["linewidth"] > 2}
    assert heavy == set(spec.baselines)
    assert {styles[name]["color"] for name in spec.baselines} == {"black"}
    seeds = ["linear_lam30", "linear_lam30_s2", "linear_lam30_s3"]
    assert len({styles[name]["color"] for name in seeds}) == 1
    series = {name: ([100, 200], [0.5, 1.0]) for name in names}
    path = plot_jump_over_steps(series, tmp_path / "j.png", emphasis=spec.baselines, groups=groups)
    assert path.stat().st_size > 0


def _judged(base_j: list[float], base_loss: list[float], j: list[float], loss: list[float]):
    """``judge``: a setting of seeds ``j``, ``loss`` against baselines ``base_j``, ``base_loss``."""
    base = {f"b{i}": _metrics(v, loss=lo) for i, (v, lo) in enumerate(zip(base_j, base_loss))}
    runs = {f"r{i}": _metrics(v, loss=lo) for i, (v, lo) in enumerate(zip(j, loss))}
    stats = seed_stats(base, list(base), METRICS)
    setting = {"runs": list(runs), "stats": seed_stats(runs, list(runs), METRICS)}
    return judge(stats, setting)


@pytest.mark.parametrize(
    ("base_j", "j", "clause"),
    [
        # Baselines 2.9 ± 0.1 (noise 3%): a cut to 1.0 is clear, to 2.85 within the noise.
        ([2.8, 3.0], [1.0], "seed spread ±3%: a clear change"),
        ([2.8, 3.0], [2.85], "seed spread ±3%: within the seed noise"),
        # Two seeds of the setting add their spread: 0.1 + 0.5 over 2.9 is 21%.
        ([2.8, 3.0], [2.0, 3.0], "seed spread ±21%: within the seed noise"),
        ([3.0], [1.0], "seed spread unknown with one baseline seed: not called clear"),
    ],
)
def test_a_j_change_is_clear_within_the_noise_or_unknown(base_j, j, clause):
    result = _judged(base_j, [4.0] * len(base_j), j, [4.0] * len(j))
    assert j_change_clause(result, "seed spread") == clause


@pytest.mark.parametrize(
    ("loss", "clause"),
    [
        ([4.20], "seed spread ±0.0500: a cost beyond the noise"),
        ([4.04], "seed spread ±0.0500: no cost beyond the noise"),
        ([3.80], "seed spread ±0.0500: no cost beyond the noise"),  # a gain is no cost
    ],
)
def test_a_loss_cost_is_beyond_the_noise_or_not(loss, clause):
    result = _judged([2.8, 3.0], [3.95, 4.05], [1.0], loss)
    assert loss_cost_clause(result, "seed spread") == clause
    one_seed = _judged([3.0], [4.0], [1.0], loss)
    assert loss_cost_clause(one_seed, "seed spread") == (
        "seed spread unknown: not called free of cost"
    )


def test_idle_middle_blocks_are_warned_about_only_where_a_seed_jumps(tmp_path):
    idle = _metrics(12.0) | {"psi_middle": 0.0011, "psi_L": 0.0130}
    busy = _metrics(3.0) | {"psi_middle": 0.0080, "psi_L": 0.0240}
    flat = _metrics(1.2) | {"psi_middle": 0.0011}  # idle, but no jump to misread
    assert idle_middle_sentences(["b"], {"b": busy}, {"b": True}) == []
    assert idle_middle_sentences(["b"], {"b": flat}, {"b": True}) == []
    [warning] = idle_middle_sentences(["b1", "b2"], {"b1": idle, "b2": busy}, {"b1": True})
    assert warning.startswith("Caution: J is a ratio") and "1 of 2 baseline seed(s)" in warning
    assert "`b1` mean Psi mid 0.00110, Psi_L 0.01300" in warning and "below 0.002" in warning
    assert "loss was still falling" in warning and "not the paper's phenomenon" not in warning
    [stalled] = idle_middle_sentences(["b"], {"b": idle}, {"b": False})
    assert "loss had stopped falling" in stalled and "not the paper's phenomenon" in stalled
    # In the verdict it follows the baseline's sentence.
    spec = _spec(tmp_path, {"b": (1, 0.0)}, ["b"])
    lines = _verdict(spec, {"b": idle})
    assert lines[0].startswith("The baseline shows the jump: J = 12.00")
    assert lines[1].startswith("Caution: J is a ratio")


def test_the_bottom_line_holds_without_a_jreg_run_and_without_a_baseline_jump(tmp_path):
    spec = _spec(tmp_path, {"b1": (1, 0.0), "b2": (2, 0.0)}, ["b1", "b2"])
    metrics = {"b1": _metrics(0.6), "b2": _metrics(0.8)}
    lines = _verdict(spec, metrics)
    assert lines[0].startswith("The baseline does not show the jump: J = 0.60, 0.80")
    assert lines[-1] == "No JREG run has finished: nothing is set against the baselines yet."
    stats = seed_stats(metrics, ["b1", "b2"], METRICS)
    found = [(-0.5, "jreg")]
    assert reduction_sentence(found, 1, stats, 2, jumps=0) == (
        "Largest clear reduction of J at no loss cost beyond the seed noise: `jreg` (-50%); "
        "the baselines show no jump, so it lowers a ratio, not a jump."
    )
    assert reduction_sentence(found, 1, stats, 2, jumps=2).endswith("`jreg` (-50%).")
    assert reduction_sentence([], 1, stats, 2, jumps=2).startswith("No JREG run lowered J")


@pytest.mark.parametrize(
    ("delta", "spread", "reading"),
    [
        (-0.8, 0.5, "the middle layers carry more of the prediction"),
        (-0.3, 0.5, "no clear sign that the middle layers contribute more"),
        (0.8, 0.5, "the middle layers carry less of the prediction"),
        (-0.8, math.nan, "no clear sign either way (the baselines' seed spread is unknown)"),
        (math.nan, 0.5, "no sign either way (no early-exit losses were measured)"),
    ],
)
def test_the_middle_blocks_early_exit_reads_against_its_noise(delta, spread, reading):
    assert middle_contribution(delta, spread) == reading


def test_a_report_of_one_baseline_seed_and_no_jreg_run_keeps_its_layout(tmp_path):
    from jreg_tools.study.report import write_report

    spec = dataclasses.replace(_spec(tmp_path, {"b": (1, 0.0)}, ["b"]), notes=[], readme=None)
    final = {
        "loss": 5.0,
        "ppl": 148.4,
        "jump_strength": 0.5,
        "jump_strength_late": 0.6,
        "jump_layer": 2,
        "profile": [0.5, 0.02, 0.01, 0.01],
        "early_exit_loss": [7.0, 6.5, 6.0, 5.0],
    }
    result = {"jreg": {"lam": 0.0}, "seed": 1, "steps": 8, "tokens": 512, "fit_seconds": 60.0}
    write_report(spec, {"b": result | {"final": final}}, "python cli.py study --config x.yaml")
    text = (spec.report_dir / "results.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# tiny study", "## Verdict", "## Setup", "## Runs", "## Pictures"]
    assert "- The baseline does not show the jump: J = 0.50 on 1 seed(s)" in text
    assert "- No JREG run has finished: nothing is set against the baselines yet." in text
    assert "| `b` | 0 | - | post_norm | 5.0000 |" in text
    assert "| baselines, 1 seed(s) |  |  |  | 5.0000 ± unknown |" in text
    assert "on the CPU" in text and "8 steps = 512 tokens per run" in text
    for claim in ("clear", "Caution", "2-core"):
        assert claim not in text
