"""LightningCLI entry point: ``fit``, ``validate``, ``test`` plus the project's own commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from jreg_lightning.commands import EXTRA_COMMANDS, run_extra_command
from jreg_lightning.data.datamodule import TokenShardDataModule
from jreg_lightning.module import JregLightningModule


class JregCLI(LightningCLI):
    """LightningCLI for this project: the module and data module are fixed classes."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1337)
        # The module owns its optimizer and schedule (model.optim); no --optimizer flags.
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(JregLightningModule, TokenShardDataModule, args=args, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``argv`` to a project command or to LightningCLI."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in EXTRA_COMMANDS:
        run_extra_command(words[0], words[1:])
        return
    if words and words[0] in ("-h", "--help") and EXTRA_COMMANDS:
        print("Project commands: " + ", ".join(sorted(EXTRA_COMMANDS)) + " (each takes --help)\n")
    # LightningCLI reads sys.argv itself; passing args too only triggers a warning.
    JregCLI(args=None if argv is None else words)
