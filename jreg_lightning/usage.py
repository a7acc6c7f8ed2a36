"""``cli.py --help``: one line per command, printed without importing torch or Lightning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# LightningCLI's subcommands this project supports (``predict`` is left out: the module
# has no predict step). Each has its full typed help: ``cli.py fit --help``.
TRAINING_COMMANDS: dict[str, str] = {
    "fit": "train a model from a config: cli.py fit --config configs/tiny_jreg.yaml",
    "validate": "validation loss, layer profile and J of a checkpoint (--ckpt_path)",
    "test": "the same measurements on the test split",
}
HELP_FLAGS = ("-h", "--help")


def wants_usage(words: Sequence[str]) -> bool:
    """Whether the command line asks for the command list (no command, or only ``--help``)."""
    return not words or words[0] in HELP_FLAGS


def usage(tool_commands: Mapping[str, str]) -> str:
    """The command list: the training core's commands, then the tools' (name -> one line)."""
    width = max(map(len, [*TRAINING_COMMANDS, *tool_commands]))
    lines = [
        "usage: python cli.py <command> [--config FILE] [--key value ...]",
        "       python cli.py <command> --help   (every option of that command, typed)",
        "",
        "training (jreg_lightning):",
        *(f"  {name:<{width}}  {summary}" for name, summary in TRAINING_COMMANDS.items()),
    ]
    if tool_commands:
        lines += ["", "tools (jreg_tools):"]
        lines += [f"  {name:<{width}}  {tool_commands[name]}" for name in sorted(tool_commands)]
    return "\n".join(lines)
