"""The training CLI: ``fit``, ``validate`` and ``test`` over LightningCLI.

``jreg_tools.cli`` extends it with the tools' commands (prepare, analyze, study, ...)
and the ``evaluation.*`` callback; this module runs without them.
"""

from __future__ import annotations

import importlib
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from jreg_lightning import preflight
from jreg_lightning.checkpoints import AtomicCheckpointIO, read_checkpoint_meta
from jreg_lightning.console import quiet_callbacks, quiet_console
from jreg_lightning.data.datamodule import STAGE_SPLITS, TokenShardDataModule
from jreg_lightning.data.mixture import SourceShares
from jreg_lightning.errors import (
    TRACEBACK_ENV,
    ConfigError,
    one_line,
    reported_error,
    unknown_key_message,
)
from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import check_max_steps
from jreg_lightning.profile_report import ProfileReport
from jreg_lightning.tracking import ConfigArtifact, ProfileTracking
from jreg_lightning.usage import usage, wants_usage

# In a logger's save_dir or a checkpoint's dirpath: the run directory, trainer.default_root_dir.
RUN_DIR = "{run}"


class JregCLI(LightningCLI):
    """LightningCLI for this project: the module and data module are fixed classes."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        # Each subcommand's parser, for the unknown-key message (its dotted keys).
        self.subcommand_parsers: dict[str, LightningArgumentParser] = {}
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # config.yaml goes to the log folder and, as a file, to W&B / MLflow / TensorBoard.
        kwargs.setdefault("save_config_callback", ConfigArtifact)
        kwargs.setdefault("seed_everything_default", 1337)
        # The module owns its optimizer and schedule (model.optim); no --optimizer flags.
        kwargs.setdefault("auto_configure_optimizers", False)
        # validate / test print the per-layer table and write validation_profile.{csv,json}.
        defaults = kwargs["trainer_defaults"] = dict(kwargs.get("trainer_defaults") or {})
        defaults["callbacks"] = [*defaults.get("callbacks", []), ProfileReport(), SourceShares()]
        # Parse errors raise (main() prints them as one line) instead of a usage wall.
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("exit_on_error", False)
        for subcommand in STAGE_SPLITS:
            parser_kwargs.setdefault(subcommand, {}).setdefault("exit_on_error", False)
        super().__init__(JregLightningModule, TokenShardDataModule, args=args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's subcommands without ``predict`` (the module has no predict step)."""
        return {
            name: args for name, args in LightningCLI.subcommands().items() if name != "predict"
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``global_batch_size`` (optional) and ``tracking.*``.

        ``tracking``: the profile picture for experiment trackers
        (``jreg_lightning.tracking.ProfileTracking``).
        """
        parser.add_lightning_class_args(ProfileTracking, "tracking")
        parser.add_argument(
            "--global_batch_size",
            type=int | None,
            default=None,
            help="Sequences per optimizer step over all devices and accumulation steps; when "
            "set it must divide evenly and it sets the per-device data.batch_size.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse ``args`` (or ``sys.argv``) into ``self.config``.

        As LightningCLI's, without its warning when both ``args`` and ``sys.argv``
        are given: ``main(argv)`` passes its words on purpose (the demo, tests), and
        the warning would quote the caller's own command line to the user.
        """
        try:
            if isinstance(args, dict | Namespace):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as err:
            words = list(sys.argv[1:] if args is None else args)
            subcommand = next((w for w in words if w in self.subcommand_parsers), None)
            known = self.subcommand_parsers[subcommand].get_defaults().keys() if subcommand else []
            message = unknown_key_message(err, known)
            if message is None:
                raise
            raise ConfigError(message) from err

    def before_instantiate_classes(self) -> None:
        """Logger ``save_dir`` and checkpoint ``dirpath`` follow ``trainer.default_root_dir``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        derive_run_paths(config)

    # Private hook of LightningCLI (checked against lightning 2.6.6): no public switch
    # turns off reading hyperparameters from --ckpt_path.
    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace the config's model.* with the checkpoint's saved
        # hyperparameters, silently dropping a changed lr or nonfinite mode on resume. Here
        # the config stays the source of truth; a checkpoint of another model shape is
        # refused with one line (preflight.check_checkpoint_shape, before the run starts).
        return

    # Private hook and attribute of LightningCLI (checked against lightning 2.6.6): the
    # subcommand parsers get their method arguments (weights_only) only in here.
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        # Loading a checkpoint never unpickles code unless --weights_only false is given.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.subcommand_parsers[subcommand] = parser
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)
        return parser

    def instantiate_trainer(self, **kwargs):
        """The Trainer, saving checkpoints atomically (``AtomicCheckpointIO``), quiet console.

        A config that asks for GPUs on a machine without one stops here in one line.
        """
        # Taken before the Trainer exists: it appends its defaults to this same list.
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        preflight.check_accelerator(
            config.get("trainer", {}).get("accelerator"), torch.cuda.is_available()
        )
        configured = config.get("trainer", {}).get("callbacks") or []
        configured = list(configured) if isinstance(configured, list) else [configured]
        trainer = super().instantiate_trainer(**kwargs)
        quiet_callbacks(trainer, configured)
        # Replace only Lightning's default; a CheckpointIO given in the config stays.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """Cross-checks of the config, data and checkpoint before anything is written."""
        self._preflight("fit")

    def before_validate(self) -> None:
        """As ``before_fit``."""
        self._preflight("validate")

    def before_test(self) -> None:
        """As ``before_fit``."""
        self._preflight("test")

    def _preflight(self, subcommand: str) -> None:
        config = self.config_init[subcommand]
        model, data, trainer = self.model, self.datamodule, self.trainer
        if subcommand == "fit":
            check_max_steps(trainer.max_steps)
        preflight.check_sequence_length(data.seq_len, model.llama_config)
        data.batch_size = preflight.per_device_batch_size(
            data.batch_size,
            config.get("global_batch_size"),
            trainer.world_size,
            trainer.accumulate_grad_batches,
        )
        for folder in [source.data_dir for source in data.sources] or [data.data_dir]:
            preflight.check_token_shards(
                folder,
                STAGE_SPLITS[subcommand],
                data.seq_len,
                data.batch_size,
                model.llama_config.vocab_size,
                data.storage_options,
            )
        folders = [
            str(cb.dirpath)
            for cb in trainer.callbacks
            if isinstance(cb, ModelCheckpoint) and cb.dirpath
        ]
        path = preflight.resolve_checkpoint_path(config.get("ckpt_path"), folders)
        if path is not None:
            preflight.check_checkpoint_shape(
                read_checkpoint_meta(path).get("hyper_parameters"), model.llama_config, str(path)
            )


# A command beside fit / validate / test: its words after the command name -> its result.
Command = Callable[[list[str]], object]


def main(
    argv: Sequence[str] | None = None,
    cli_class: type[JregCLI] = JregCLI,
    commands: Mapping[str, Command] | None = None,
    summaries: Mapping[str, str] | None = None,
) -> None:
    """Run ``cli.py``; bad input ends with one ``error: ...`` line on stderr and exit code 1.

    ``cli_class``, ``commands`` and their ``summaries`` (one line each for ``--help``)
    let ``jreg_tools.cli`` add its callbacks and commands.

    The project's errors (``JregError``: a config field, a path, a data file, a
    checkpoint, named with the fix) and the argument parser's are printed as one
    line; set ``JREG_TRACEBACK=1`` for the full traceback. Anything else is a
    bug and keeps its traceback.
    """
    quiet_console()
    try:
        _dispatch(argv, cli_class, commands or {}, summaries or {})
    except Exception as err:
        if reported_error(err) is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(one_line(err), file=sys.stderr)
        raise SystemExit(1) from None


def derive_run_paths(config: Namespace) -> None:
    """Fill the run paths of a parsed config from ``trainer.default_root_dir``, in place.

    The run directory is named once: ``{run}`` in a logger's ``save_dir`` or a
    ``ModelCheckpoint``'s ``dirpath`` is replaced by it, and a ``dirpath`` left
    out becomes ``<run>/checkpoints`` (Lightning's loggers require a ``save_dir``,
    so the configs write ``"{run}"``). Paths written out in full are kept. Without
    a ``default_root_dir`` the run directory is the working directory, as in Lightning.
    """
    trainer = config.get("trainer")
    if trainer is None:
        return
    run = str(trainer.get("default_root_dir") or os.getcwd())
    for logger in _class_entries(trainer.get("logger")):
        init_args = logger.init_args
        if "save_dir" in init_args:
            init_args.save_dir = _run_path(init_args.save_dir, run, default=run)
    for callback in _class_entries(trainer.get("callbacks")):
        if _is_subclass(callback.class_path, ModelCheckpoint):
            default = str(Path(run) / "checkpoints")
            callback.init_args.dirpath = _run_path(
                callback.init_args.get("dirpath"), run, default=default
            )


def _run_path(value, run: str, default: str):
    if value is None:
        return default
    return str(value).replace(RUN_DIR, run) if RUN_DIR in str(value) else value


def _class_entries(value) -> list[Namespace]:
    """The ``class_path``/``init_args`` entries of a logger or callbacks value."""
    entries = value if isinstance(value, list) else [value]
    return [
        entry
        for entry in entries
        if isinstance(entry, Namespace)
        and "class_path" in entry
        and isinstance(entry.get("init_args"), Namespace)
    ]


def _is_subclass(class_path: str, base: type) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        return issubclass(getattr(importlib.import_module(module), name), base)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def _dispatch(
    argv: Sequence[str] | None,
    cli_class: type[JregCLI],
    commands: Mapping[str, Command],
    summaries: Mapping[str, str],
) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in commands:
        commands[words[0]](words[1:])
        return
    if wants_usage(words):
        print(usage(summaries))
        if not words:
            raise SystemExit(2)
        return
    # LightningCLI reads sys.argv itself; passing args too only triggers a warning.
    cli_class(args=None if argv is None else words)
