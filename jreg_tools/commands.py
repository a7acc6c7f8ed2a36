"""The project's own subcommands beside LightningCLI's fit / validate / test.

Each entry maps a subcommand of ``cli.py`` to ``(module, function)``; the
function's typed signature is the command's arguments (jsonargparse builds the
parser, so ``--help`` and ``--config`` work). A function whose one parameter is
an options dataclass (``prepare(options: PrepareOptions)``) takes that
dataclass's fields as its flags. Modules are imported only when their command runs.

The commands name a concept one way: ``--output_dir`` a folder the command
writes, ``--output`` a single file it writes, ``--data_dir`` a prepared data
folder, ``--text`` a text file, ``--model`` one model and ``--models`` a list.
Earlier spellings still parse, with a note (``RENAMED_OPTIONS``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("jreg_tools.analysis.command", "analyze"),
    "compare": ("jreg_tools.evaluation.compare", "compare"),
    "consolidate": ("jreg_tools.consolidate", "consolidate"),
    "demo": ("jreg_tools.demo", "demo"),
    "evaluate": ("jreg_tools.evaluation.evaluate", "evaluate"),
    "export": ("jreg_tools.export", "export"),
    "perplexity": ("jreg_tools.evaluation.perplexity", "perplexity"),
    "plan": ("jreg_tools.plan", "plan"),
    "prepare": ("jreg_tools.data.prepare", "prepare"),
    "study": ("jreg_tools.study.command", "study"),
}


# One line each for ``cli.py --help`` (read without importing the commands' modules).
SUMMARIES: dict[str, str] = {
    "analyze": "layer profiles, J and early-exit losses of checkpoints or models, with pictures",
    "compare": "perplexity and task scores of several models side by side",
    "consolidate": "merge a sharded FSDP2 checkpoint folder into one file",
    "demo": "a baseline and a JREG model trained on CPU in minutes, profiles compared",
    "evaluate": "downstream task scores of one model (built-in scorer or lm-eval)",
    "export": "a checkpoint as a Hugging Face model folder (safetensors + tokenizer)",
    "perplexity": "held-out perplexity and J of one model on prepared data",
    "plan": "memory, throughput and time of a config on a cluster, before running it",
    "prepare": "text (jsonl, txt, parquet, .zst, ...) -> tokenizer and token shards",
    "study": "train a set of runs (baselines, JREG settings, seeds), then the report",
}


@dataclasses.dataclass(frozen=True)
class Renamed:
    """The current name of an option that a command used to spell another way.

    Attributes:
        name: the option's name now, e.g. ``output_dir``.
        for_file: the name instead when the value is an existing file (an old
            ``--data`` took a prepared folder or a text file; now they are two options).
    """

    name: str
    for_file: str | None = None

    def new_name(self, value: str | None) -> str:
        """The name for this ``value`` of the old option."""
        if self.for_file is not None and value is not None and Path(value).is_file():
            return self.for_file
        return self.name


# Per command, old option name -> its name now. Only the command line is rewritten;
# a --config file gives the current names.
RENAMED_OPTIONS: dict[str, dict[str, Renamed]] = {
    "analyze": {
        "inputs": Renamed("models"),
        "data": Renamed("data_dir"),
        "out_dir": Renamed("output_dir"),
    },
    "compare": {"data": Renamed("data_dir", for_file="text")},
    "consolidate": {"out": Renamed("output")},
    "export": {"out_dir": Renamed("output_dir")},
    "perplexity": {"data": Renamed("data_dir", for_file="text")},
}


# jsonargparse's auto_cli keeps ``--config`` for its own config-file option, so a
# command whose input is a config file names that parameter ``config_file`` and
# the command line spells it ``--config`` like fit and validate.
CONFIG_FILE_PARAMETER = "config_file"


def _rename_options(
    args: Sequence[str], new_name: Callable[[str, str | None], str | None]
) -> list[str]:
    """``args`` with each ``--old``, ``--old=V`` or ``--old+`` renamed where ``new_name`` says.

    ``new_name(old, value)`` gives the new name, or ``None`` to keep the word;
    ``value`` is the option's value (the next word when not given with ``=``).
    """
    renamed = []
    for position, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        name = flag[2:].removesuffix("+")
        if flag.startswith("--") and name:
            if not equals:
                following = args[position + 1] if position + 1 < len(args) else None
                value = following
            new = new_name(name, value)
            if new is not None:
                arg = f"--{new}{flag[2 + len(name) :]}{equals}{value if equals else ''}"
        renamed.append(arg)
    return renamed


def _current_names(command: str, args: Sequence[str]) -> list[str]:
    """``args`` with the command's old option names replaced, a note on stderr for each."""
    table = RENAMED_OPTIONS.get(command, {})

    def new_name(old: str, value: str | None) -> str | None:
        if old not in table:
            return None
        new = table[old].new_name(value)
        print(f"note: --{old} is deprecated; use --{new}", file=sys.stderr)
        return new

    return _rename_options(args, new_name)


def _config_alias(parameters: Sequence[str], args: Sequence[str]) -> list[str]:
    """``--config X`` -> ``--config_file X`` for a command with a ``config_file`` parameter."""
    if CONFIG_FILE_PARAMETER not in parameters:
        return list(args)
    return _rename_options(
        args, lambda name, _: CONFIG_FILE_PARAMETER if name == "config" else None
    )


def _options_class(function: Callable) -> type | None:
    """The dataclass of a function whose one parameter is an options dataclass, else None."""
    parameters = list(inspect.signature(function).parameters)
    if len(parameters) != 1:
        return None
    annotation = typing.get_type_hints(function).get(parameters[0])
    return annotation if dataclasses.is_dataclass(annotation) else None


def run_extra_command(name: str, args: Sequence[str]) -> object:
    """Parse ``args`` against the command's signature (or options dataclass) and run it."""
    from jsonargparse import auto_cli

    module_name, function_name = EXTRA_COMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    args = _current_names(name, args)
    options = _options_class(function)
    # Parse errors raise, so that cli.main() prints them as one line (no usage wall).
    if options is not None:
        parameters = [field.name for field in dataclasses.fields(options)]
        parsed = auto_cli(
            options,
            args=_config_alias(parameters, args),
            as_positional=False,
            exit_on_error=False,
            return_instance=True,
        )
        return function(parsed)
    parameters = list(inspect.signature(function).parameters)
    return auto_cli(
        function, args=_config_alias(parameters, args), as_positional=False, exit_on_error=False
    )
