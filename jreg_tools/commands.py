"""The project's own subcommands beside LightningCLI's fit / validate / test.

Each entry maps a subcommand of ``cli.py`` to ``(module, function)``; the
function's typed signature is the command's arguments (jsonargparse builds the
parser, so ``--help`` and ``--config`` work). Modules are imported only when
their command runs.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

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


# jsonargparse's auto_cli keeps ``--config`` for its own config-file option, so a
# command whose input is a config file names that parameter ``config_file`` and
# the command line spells it ``--config`` like fit and validate.
CONFIG_FILE_PARAMETER = "config_file"


def _config_alias(function, args: Sequence[str]) -> list[str]:
    """``--config X`` -> ``--config_file X`` for a command with a ``config_file`` parameter."""
    if CONFIG_FILE_PARAMETER not in inspect.signature(function).parameters:
        return list(args)
    renamed = []
    for arg in args:
        if arg == "--config":
            arg = f"--{CONFIG_FILE_PARAMETER}"
        elif arg.startswith("--config="):
            arg = f"--{CONFIG_FILE_PARAMETER}=" + arg.split("=", 1)[1]
        renamed.append(arg)
    return renamed


def run_extra_command(name: str, args: Sequence[str]) -> object:
    """Parse ``args`` against the command's signature and run it."""
    from jsonargparse import auto_cli

    module_name, function_name = EXTRA_COMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    # Parse errors raise, so that cli.main() prints them as one line (no usage wall).
    return auto_cli(
        function, args=_config_alias(function, args), as_positional=False, exit_on_error=False
    )
