"""One name per concept across the commands; the old spellings parse, with a note naming the new.

``--print_config`` parses a command line and prints what it became, so the
renames are checked without running the commands.
"""

from __future__ import annotations

import re

import pytest
import yaml

from jreg_tools.cli import main
from jreg_tools.commands import RENAMED_OPTIONS, run_extra_command

# Enough of each command line for the parser to get to --print_config.
REQUIRED = {
    "analyze": ["--models", "[m]"],
    "compare": ["--models", "[a,b]"],
    "consolidate": ["--checkpoint", "sharded"],
    "export": ["--checkpoint", "m.ckpt"],
    "perplexity": ["--model", "hf"],
}
RENAMES = [(command, old, new.name) for command, table in RENAMED_OPTIONS.items()
           for old, new in table.items()]  # fmt: skip


def _parsed(command: str, args: list[str], capsys) -> tuple[dict, str]:
    """The config ``args`` parse to, and what went to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_extra_command(command, [*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out), captured.err


def _listed_options(command: str, capsys) -> set[str]:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return set(re.findall(r"--(\w+)", capsys.readouterr().out))


@pytest.mark.parametrize(("command", "old", "new"), RENAMES)
def test_an_old_name_still_parses_with_a_note_naming_the_new(command, old, new, capsys):
    value = "[x]" if new == "models" else "given"
    for args in ([f"--{old}", value], [f"--{old}={value}"]):
        config, err = _parsed(command, [*REQUIRED[command], *args], capsys)
        assert config[new] == (["x"] if new == "models" else "given")
        assert err.strip() == f"note: --{old} is deprecated; use --{new}"


@pytest.mark.parametrize("command", ["perplexity", "compare"])
def test_the_old_data_of_a_text_file_becomes_text(command, tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("words")
    config, err = _parsed(command, [*REQUIRED[command], "--data", str(book)], capsys)
    assert config["text"] == str(book) and config["data_dir"] is None
    assert err.strip() == "note: --data is deprecated; use --text"


@pytest.mark.parametrize("command", sorted(RENAMED_OPTIONS))
def test_help_lists_only_the_new_names(command, capsys):
    listed = _listed_options(command, capsys)
    for old, new in RENAMED_OPTIONS[command].items():
        assert new.name in listed and old not in listed, listed


def test_the_commands_share_one_vocabulary(capsys):
    listed = {command: _listed_options(command, capsys) for command in ("prepare", *REQUIRED)}
    assert {"output_dir"} <= listed["prepare"] & listed["analyze"] & listed["export"]
    assert "output" in listed["consolidate"] & listed["perplexity"] & listed["compare"]
    assert "data_dir" in listed["analyze"] & listed["export"] & listed["perplexity"]
    spelled_otherwise = {"out", "out_dir", "data", "inputs"}
    for command in REQUIRED:
        assert not listed[command] & spelled_otherwise, (command, listed[command])


def test_an_options_command_reads_a_config_file(tmp_path, capsys):
    config_file = tmp_path / "prepare.yaml"
    config_file.write_text("inputs: corpus.jsonl\noutput_dir: data/mine\nseq_len: 64\n")
    config, err = _parsed("prepare", ["--config", str(config_file), "--seq_len", "32"], capsys)
    assert (config["inputs"], config["output_dir"], config["seq_len"]) == (
        "corpus.jsonl",
        "data/mine",
        32,
    )
    assert err == ""


def test_options_are_checked_where_they_enter(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--inputs=corpus.txt", "--seq_len=0"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: seq_len: 0 is below 1")
