"""The full ``cli.py``: the core's fit / validate / test plus the tools' commands.

Adds to ``jreg_lightning.cli`` the ``evaluation.*`` callback (held-out evaluation
during training) and the commands of ``jreg_tools.commands`` (prepare, analyze,
study, demo, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser

from jreg_lightning import cli as core_cli
from jreg_tools.commands import EXTRA_COMMANDS, SUMMARIES, run_extra_command
from jreg_tools.evaluation.in_training import HeldOutEvaluation


class JregToolsCLI(core_cli.JregCLI):
    """The core CLI with ``evaluation.*``: held-out evaluation every N steps."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The core's arguments and ``evaluation.*``, off unless ``every_n_steps`` is set."""
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(HeldOutEvaluation, "evaluation")


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``cli.py`` with every command; see ``jreg_lightning.cli.main``."""
    commands = {name: functools.partial(run_extra_command, name) for name in EXTRA_COMMANDS}
    core_cli.main(argv, cli_class=JregToolsCLI, commands=commands, summaries=SUMMARIES)
