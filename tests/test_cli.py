"""The real entry point: fit writes a checkpoint, validate reports the jump."""

from __future__ import annotations

import csv

import pytest

from tests.cli_run import run_cli, tiny_override


def test_fit_then_validate_end_to_end(tmp_path, token_shards):
    run_dir = tmp_path / "run"
    override = tiny_override(run_dir, token_shards, max_steps=3)
    fit = run_cli("fit", "--config", "configs/tiny_jreg.yaml", "--config", str(override))
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()

    metrics_files = list(run_dir.glob("logs/version_*/metrics.csv"))
    assert metrics_files, "CSVLogger wrote no metrics"
    with metrics_files[0].open() as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss", "train/ce", "train/jreg", "train/jump_strength"} <= logged
    assert {f"train/psi/layer_{i:02d}" for i in range(1, 5)} <= logged
    assert {"val/loss", "val/ppl", "val/jump_strength", "val/jump_strength_late"} <= logged

    validate = run_cli(
        "validate",
        "--config",
        "configs/tiny_jreg.yaml",
        "--config",
        str(override),
        "--ckpt_path",
        str(checkpoint),
    )
    output = validate.stdout + validate.stderr
    assert validate.returncode == 0, output[-3000:]
    assert "Layer profile (final state: post_norm)" in output
    assert "J = " in output and "J_late = " in output and "argmax layer = " in output
    for layer in range(1, 5):
        assert f"\n{layer:5d}  0." in output


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_help_works(subcommand):
    result = run_cli(subcommand, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--model.jreg" in result.stdout and "--data.data_dir" in result.stdout


def test_print_config_shows_the_jreg_settings():
    result = run_cli("fit", "--config", "configs/tiny_jreg.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    # The study's default (configs/jreg/linear.yaml): lam 30, linear weights.
    assert "lam: 30.0" in result.stdout and "weights: linear" in result.stdout
