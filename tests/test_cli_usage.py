"""``cli.py --help`` lists every command in one line without loading torch; config errors
name the innermost cause (an unknown key, with the closest valid one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jreg_lightning.usage import TRAINING_COMMANDS
from jreg_tools.cli import main
from jreg_tools.commands import EXTRA_COMMANDS, SUMMARIES

REPO = Path(__file__).resolve().parents[1]

_HELP_WITH_IMPORTS = """
import runpy, sys
sys.argv = ["cli.py", "--help"]
try:
    runpy.run_path("cli.py", run_name="__main__")
except SystemExit as done:
    code = done.code
heavy = [m for m in ("torch", "lightning", "transformers") if m in sys.modules]
print("exit", code, "heavy", ",".join(heavy) or "none")
"""


def test_help_lists_every_command_in_one_line_without_importing_torch():
    done = subprocess.run(
        [sys.executable, "-c", _HELP_WITH_IMPORTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("exit 0 heavy none")
    lines = done.stdout.splitlines()
    for command in [*TRAINING_COMMANDS, *EXTRA_COMMANDS]:
        assert sum(line.split()[:1] == [command] for line in lines) == 1, command
    assert "predict" not in done.stdout


def test_every_tool_command_has_a_summary():
    assert set(SUMMARIES) == set(EXTRA_COMMANDS)


def test_no_arguments_prints_the_list_and_fails():
    done = subprocess.run(
        [sys.executable, "cli.py"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "training (jreg_lightning):" in done.stdout


def _error_line(capsys, *words: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny_jreg.yaml", *words, "--print_config"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_predict_is_not_a_command(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--config", "configs/tiny_jreg.yaml"])
    assert "invalid choice: 'predict'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "model:\n  jreg:\n    lamb: 3\n",
            "error: model.jreg.lamb: unknown key; did you mean 'lam'? (JregConfig accepts: lam,",
        ),
        (
            "model:\n  optim:\n    learning_rate: 0.1\n",
            "error: model.optim.learning_rate: unknown key; did you mean 'lr'?",
        ),
        (
            "model:\n  llama:\n    hidden: 64\n",
            "error: model.llama.hidden: unknown key; did you mean 'hidden_size'?",
        ),
        (
            "model:\n  foo: 3\n",
            "error: model.foo: unknown key (model accepts: llama, jreg, optim,",
        ),
        (
            "trainer:\n  callbacks:\n"
            "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            "      init_args:\n        every_n_step: 3\n",
            "error: trainer.callbacks.every_n_step: unknown key; "
            "did you mean 'every_n_train_steps'?",
        ),
    ],
)
def test_an_unknown_key_in_a_nested_config_is_named_with_the_closest(
    tmp_path, capsys, yaml_text, expected
):
    override = tmp_path / "override.yaml"
    override.write_text(yaml_text)
    assert _error_line(capsys, "--config", str(override)).startswith(expected)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--trainer.max_stepz", "error: trainer.max_stepz: unknown key; did you mean "),
        ("--data.batchsize", "error: data.batchsize: unknown key; did you mean --data.batch_size?"),
        ("--model.jreg.lamb", "error: model.jreg.lamb: unknown key; did you mean 'lam'?"),
    ],
)
def test_an_unknown_flag_is_named_with_the_closest(capsys, flag, expected):
    assert _error_line(capsys, flag, "3").startswith(expected)
