"""Only the project's errors and the parser's print as one line; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser

from jreg_lightning import cli
from jreg_lightning.checkpoints import safe_torch_load
from jreg_lightning.errors import (
    REPORTED_ERRORS,
    ConfigError,
    InputNotFoundError,
    InputUnreadableError,
    JregError,
    NonFiniteLossError,
    OutputExistsError,
    reported_error,
)
from jreg_tools import cli as tools_cli

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Shape:
    width: int = 4

    def __post_init__(self) -> None:
        if self.width % 2:
            raise ConfigError(f"shape.width={self.width} is odd; pass an even width")


def parse_shape(args: list[str]) -> None:
    """A real jsonargparse parse and instantiation (as LightningCLI's): it wraps the
    dataclass's error in its own ValueError ("Does not validate against any of the Union
    subtypes")."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--shape", type=Shape | None, default=None)
    parser.instantiate(parser.parse_args(args))


def run_main(monkeypatch, dispatch) -> None:
    monkeypatch.delenv("JREG_TRACEBACK", raising=False)
    monkeypatch.setattr(cli, "_dispatch", lambda *args: dispatch())
    cli.main([])


def test_each_error_keeps_its_builtin_and_only_project_and_parser_errors_are_reported():
    for error, builtin in [
        (ConfigError, ValueError),
        (InputNotFoundError, FileNotFoundError),
        (InputUnreadableError, PermissionError),
        (OutputExistsError, FileExistsError),
        (NonFiniteLossError, RuntimeError),
    ]:
        assert issubclass(error, JregError) and issubclass(error, builtin)
    assert not any(issubclass(ValueError, kind) for kind in REPORTED_ERRORS)
    assert not any(issubclass(FileNotFoundError, kind) for kind in REPORTED_ERRORS)


def test_project_error_wrapped_by_the_parser_prints_one_line(monkeypatch, capsys):
    with pytest.raises(ValueError) as caught:
        parse_shape(["--shape.width=3"])
    assert not isinstance(caught.value, JregError)  # jsonargparse's wrapper is on top
    assert isinstance(reported_error(caught.value), ConfigError)

    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, lambda: parse_shape(["--shape.width=3"]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: shape.width=3 is odd; pass an even width\n"


def test_project_error_deep_in_a_cause_chain_prints_one_line(monkeypatch, capsys):
    def deep():
        try:
            try:
                raise InputNotFoundError("data.data_dir: /x does not exist;\n run prepare")
            except InputNotFoundError as err:
                raise ValueError("wrapper") from err
        except ValueError as err:
            raise TypeError("outer wrapper") from err

    with pytest.raises(SystemExit):
        run_main(monkeypatch, deep)
    assert capsys.readouterr().err == "error: data.data_dir: /x does not exist; run prepare\n"


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError])
def test_a_bug_keeps_its_traceback(bug, monkeypatch, capsys):
    def broken():
        raise bug("an internal invariant broke")

    with pytest.raises(bug, match="internal invariant") as caught:
        run_main(monkeypatch, broken)
    assert caught.traceback[-1].name == "broken"  # the raising frame is still there
    assert "error:" not in capsys.readouterr().err


def test_a_bug_while_handling_a_project_error_keeps_its_traceback(monkeypatch):
    def broken_fallback():
        try:
            raise ConfigError("model.x: bad; fix it")
        except ConfigError:
            {}["missing"]  # a bug in the handler: implicit __context__, not a cause

    with pytest.raises(KeyError):
        run_main(monkeypatch, broken_fallback)


def test_argument_error_prints_one_line(monkeypatch, capsys):
    monkeypatch.delenv("JREG_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        tools_cli.main(["prepare", "--inputs=corpus.txt", "--vocab_size=lots"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: vocab_size:") and err.count("\n") == 1, err


def test_traceback_env_shows_the_project_error_itself(monkeypatch):
    monkeypatch.setattr(cli, "_dispatch", lambda *args: parse_shape(["--shape.width=3"]))
    monkeypatch.setenv("JREG_TRACEBACK", "1")
    with pytest.raises(ValueError) as caught:
        cli.main([])
    assert isinstance(reported_error(caught.value), ConfigError)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_unpickling_a_checkpoint_becomes_a_project_error_naming_the_file(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(ConfigError, match=rf"checkpoint: refusing to load {evil}: .*trust"):
        safe_torch_load(evil, field="checkpoint")
    broken = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, broken)
    broken.write_bytes(broken.read_bytes()[:200])  # truncated, as by a full disk
    with pytest.raises(ConfigError, match=rf"ckpt_path: {broken} is not a readable checkpoint"):
        safe_torch_load(broken)
    with pytest.raises(InputNotFoundError, match="ckpt_path: .*gone.ckpt does not exist"):
        safe_torch_load(tmp_path / "gone.ckpt")


def test_a_bug_exits_non_zero_with_its_traceback():
    script = (
        "import jreg_lightning.cli as cli\n"
        "def broken(*args):\n"
        "    raise ValueError('an internal invariant broke')\n"
        "cli._dispatch = broken\n"
        "cli.main([])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "ValueError: an internal invariant broke" in done.stderr
    assert "error: an internal" not in done.stderr
