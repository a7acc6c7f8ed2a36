"""``cli.py study``: the plumbing of a study (train, skip, resume, report); not its science."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from jreg_tools.commands import run_extra_command
from jreg_tools.study.command import QUICK_OVERRIDES, quick_spec, study
from jreg_tools.study.runner import train_study
from jreg_tools.study.spec import load_study
from jreg_tools.study.verdict import _final_scheme_sentence, run_metrics, verdict
from tests.studies import tiny_study


@pytest.mark.slow
def test_quick_study_writes_the_report_and_skips_finished_runs(tmp_path, capsys):
    config = tiny_study(tmp_path)
    paths = study(config_file=str(config), quick=True)
    report = tmp_path / "runs_quick" / "report"
    names = {Path(p).name for p in paths}
    assert {
        "early_exit.png",
        "j_vs_step.png",
        "profile_baseline_vs_best.png",
        "results.md",
        "summary.json",
        "tradeoff.png",
    } <= names
    for run in ("baseline_s1", "linear_lam1"):  # the small files outlive the run folders
        archived = report / "results" / "runs" / run
        assert (archived / "result.json").read_text() == (
            tmp_path / "runs_quick" / run / "result.json"
        ).read_text()
        assert list(archived.glob("metrics_version_*.csv"))
    summary = json.loads((report / "results" / "summary.json").read_text())
    assert set(summary["runs"]) == {"baseline_s1", "linear_lam1"}
    assert summary["runs"]["linear_lam1"]["jreg"]["lam"] == 1.0
    for name, entry in summary["runs"].items():
        result = json.loads((tmp_path / "runs_quick" / name / "result.json").read_text())
        assert entry["metrics"] == pytest.approx(run_metrics(result["final"]), nan_ok=True)
        assert result["steps"] == 8 and len(result["final"]["early_exit_loss"]) == 4
    table = (report / "results.md").read_text()
    assert "| `baseline_s1` | 0 | - | post_norm |" in table and "`linear_lam1`" in table
    assert "python cli.py study --config" in table

    # A second call trains nothing: both runs are finished.
    stamp = (tmp_path / "runs_quick" / "baseline_s1" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    run_extra_command("study", ["--config", str(config), "--quick", "true"])  # as cli.py does
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2
    assert (tmp_path / "runs_quick" / "baseline_s1" / "result.json").stat().st_mtime_ns == stamp

    # A longer max_steps extends a finished run from its last checkpoint.
    spec = quick_spec(load_study(config))
    longer = {**QUICK_OVERRIDES, "trainer.max_steps": 12}
    train_study(spec, ["baseline_s1"], longer)
    assert "baseline_s1: extending from 8 to 12 steps" in capsys.readouterr().out
    extended = json.loads((tmp_path / "runs_quick" / "baseline_s1" / "result.json").read_text())
    assert extended["steps"] == 12 and extended["attempts"] == 2


def test_study_file_errors_name_the_key(tmp_path):
    config = tiny_study(tmp_path)
    spec = yaml.safe_load(config.read_text())
    spec["best"] = "nope"
    config.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"study: 'nope' .* is not one of the runs"):
        load_study(config)
    del spec["best"]
    spec["runs"]["linear_lam1"] = {"weights": "linear"}
    config.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"run 'linear_lam1' .* has no 'lam'"):
        load_study(config)


def test_run_metrics_reads_the_profile():
    final = {
        "loss": 5.0,
        "ppl": 148.4,
        "jump_strength": 3.0,
        "jump_strength_late": 2.5,
        "jump_layer": 4,
        "profile": [0.5, 0.01, 0.01, 0.03],
        "early_exit_loss": [7.0, 6.5, 6.0, 5.0],
    }
    metrics = run_metrics(final)
    assert metrics["psi_L"] == 0.03 and metrics["psi_middle"] == pytest.approx(0.01)
    assert metrics["psi_L1"] == 0.01
    assert metrics["early_exit_middle"] == 6.5  # after block L/2 = 2
    assert metrics["spread_max_over_mean"] == pytest.approx(0.03 / (0.05 / 3))


def test_readme_section_between_the_markers_is_replaced(tmp_path):
    from jreg_tools.study.report import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nrest\n")
    update_readme(readme, "new line  \n![p](docs/results/p.png)")
    assert readme.read_text() == (
        "# title\n\n<!-- results:start -->\nnew line  \n![p](docs/results/p.png)\n"
        "<!-- results:end -->\n\nrest\n"
    )
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="has no <!-- results:start -->"):
        update_readme(readme, "x")


@pytest.mark.parametrize(
    ("j_values", "sentence"),
    [
        ((2.5, 3.1), "The baseline shows the jump: J = 2.50, 3.10"),
        ((1.58, 2.41), "The baseline shows the jump on 1 of 2 seeds: J = 1.58, 2.41"),
        ((0.66, 0.49), "The baseline does not show the jump: J = 0.66, 0.49"),
    ],
)
def test_verdict_says_how_many_seeds_show_the_jump(tmp_path, j_values, sentence):
    spec = load_study(tiny_study(tmp_path))
    baselines = [spec.run("baseline_s1"), dataclasses.replace(spec.run("baseline_s1"), name="s2")]
    spec = dataclasses.replace(spec, runs=baselines, baselines=["baseline_s1", "s2"])
    metrics = {
        run.name: {"J": j, "J_late": j, "argmax": 4, "blocks": 4, "psi_middle": 0.01}
        for run, j in zip(baselines, j_values, strict=True)
    }
    mean = sum(j_values) / 2
    stats = {
        "J": {"values": list(j_values), "mean": mean, "spread": abs(j_values[0] - mean)},
        "loss": {"mean": 4.0, "spread": 0.01},
    }
    lines = verdict(spec, metrics, stats, {"baseline_s1": True, "s2": True}, None)
    assert lines[0].startswith(sentence) and "was still falling" in lines[0]


def test_the_report_archive_of_run_files_is_not_ignored_by_git():
    # The archive exists so that the numbers outlive the run folders: git must keep it
    # (a `runs/` pattern without its leading slash once ignored it).
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    archived = "docs/results/runs/baseline_s1/result.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", archived], cwd=repo, check=False)
    assert ignored.returncode == 1, f"{archived} is ignored by .gitignore"
    run_folder = subprocess.run(["git", "check-ignore", "-q", "runs/x/last.ckpt"], cwd=repo)
    assert run_folder.returncode == 0


@pytest.mark.parametrize(
    ("psi_l1", "j_late", "turns", "moved"),
    [
        # Block L-1 turns more in absolute terms, but so do the blocks before it: no jump there.
        (0.0150, 1.19, "more than", "does not jump (J_late at most 2"),
        # It now jumps, less sharply than the baselines' last block (the CPU study at step 600).
        (0.0244, 2.42, "more than", "less sharply than the baselines' last block: the jump moved"),
        (0.0300, 4.10, "more than", "more sharply than the baselines' last block: the jump moved"),
        (0.0120, 2.00, "as much as", "does not jump"),
        (0.0020, 0.30, "less than", "does not jump"),
        # J_late above 2 but the last block still turns more: J_late reads the last block.
        (0.0005, 2.60, "less than", "does not jump"),
    ],
)
def test_final_scheme_sentence_reads_block_l_minus_1_absolute_and_relative(
    psi_l1, j_late, turns, moved
):
    stats = {
        "J": {"mean": 2.88, "spread": 0.25},
        "J_late": {"mean": 3.06, "spread": 0.36},
        "psi_L": {"mean": 0.0230, "spread": 0.0013},
        "psi_L1": {"mean": 0.0119, "spread": 0.0018},
    }
    run = {"J": 0.05, "J_late": j_late, "psi_L": 0.0006 + 0.001 * (psi_l1 < 0.001), "argmax": 11}
    sentence = _final_scheme_sentence("final_lam10", run | {"psi_L1": psi_l1}, stats)
    assert f"block L-1 turns {turns} in the baselines (Psi_L-1 {psi_l1:.5f}" in sentence
    assert moved in sentence and "J -98%" in sentence


def test_a_fit_killed_before_it_recorded_its_time_shows_as_a_lower_bound(tmp_path):
    from jreg_tools.study.report import fit_times
    from jreg_tools.study.runner import unrecorded_attempts

    for version in ("version_0", "version_1"):
        (tmp_path / "logs" / version).mkdir(parents=True)
    (tmp_path / "attempts.json").write_text('[{"started": 1, "seconds": 760.9}]')
    assert unrecorded_attempts(tmp_path) == 1
    setup = {
        "fit_seconds": {"a": 1800.0, "b": 760.9},
        "fit_attempts_unrecorded": {"a": 0, "b": 1},
    }
    assert fit_times(setup).startswith("a 30 min, b >= 13 min (>=: a fit killed mid-run")
    assert fit_times({"fit_seconds": {"a": 60.0}}) == "a 1 min"
