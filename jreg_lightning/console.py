"""A quiet console: the messages of Lightning, torch and litdata that ask nothing of the user.

``quiet_console()`` installs one narrow filter per message (its text, category
and the module that emits it), each with the reason it needs no action; a
message that changes wording in a later version shows again rather than
hiding something else. ``quiet_callbacks(trainer, configured)`` swaps
Lightning's default progress bar and model summary for ones without the
fields that are always empty here (``Epoch 0/-2``, ``v_num``, ``FLOPs 0``).
Messages that do ask for action (a checkpoint folder that is not empty, the
device in use, data that does not fill a batch) stay.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.utilities.model_summary import get_human_readable_count

# (message regex, category, emitting module regex, why it asks nothing of the user).
# Checked against torch 2.14.1, lightning 2.6.6.
WARNING_FILTERS: tuple[tuple[str, type[Warning], str, str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
        "Lightning's own use of a torch API torch deprecated; nothing in this project to change.",
    ),
    (
        r"Your `IterableDataset` has `__len__` defined",
        UserWarning,
        r"lightning\.pytorch\.utilities\.data",
        "litdata's StreamingDataset splits its chunks per rank and per worker itself, so "
        "its length is right with any num_workers.",
    ),
    (
        r"It is recommended to use `self\.log\('val/[^']+', \.\.\., sync_dist=True\)`",
        UserWarning,
        r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.result",
        "val/* metrics are torchmetrics computed after their states were summed over ranks "
        "(one collective per validation), logged with sync_dist=False on purpose; a second "
        "reduction would only cost a collective per metric.",
    ),
    (
        r"FSDP2-wrapped module \(FSDPLlamaForCausalLM\) returned a view tensor",
        UserWarning,
        r"torch\.distributed\.fsdp\._fully_shard\._fsdp_state",
        "the view is hidden_states[0], the embedding output as block 0 received it through "
        "FSDP2's own post-backward autograd function; nothing writes to the hidden states "
        "in place (the JREG term and the metrics read them), and "
        "tests/test_distributed_fsdp_loss.py checks every parameter's gradient under 2-rank "
        "FSDP2 against one process. Only the root model's message is matched: a block "
        "returning a view still warns.",
    ),
)

# Lightning's product tips, logged at INFO by rank_zero_info (lightning 2.6.6).
TIP_PREFIXES = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
)
# rank_zero_info logs to whichever of these lightning imported last.
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    """Advertisements for lightning.ai packages: nothing the run needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIXES)


_TIP_FILTER = _DropTips()


class _DropCudaHomeNotice(logging.Filter):
    """torch's notice that a CUDA build runs without a GPU (``torch.utils.cpp_extension``).

    Logged when ``torch.compile`` builds CPU kernels with the CUDA build of torch that
    the CPU install pins (README, "Why constraints.txt"); the CPU kernels need nothing
    from CUDA, so the user has nothing to do. Checked against torch 2.14.1.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


_CUDA_HOME_FILTER = _DropCudaHomeNotice()


class _DropTrackerNotices(logging.Filter):
    """Set-up notices of the MLflow overlay (``configs/logger/mlflow.yaml``).

    MLflow creates its sqlite tables on a new store and Lightning's ``MLFlowLogger``
    creates the experiment on first use; both are what the overlay asks for, so the
    user has nothing to do. Checked against mlflow-skinny 3.18.0, lightning 2.6.6.
    """

    PREFIXES = (
        "Creating initial MLflow database tables",
        "Updating database tables",
        "Experiment with name ",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            message.startswith(self.PREFIXES)
            and (not message.startswith("Experiment") or message.endswith("Creating it."))
        )


_TRACKER_FILTER = _DropTrackerNotices()
TRACKER_LOGGERS = ("mlflow.store.db.utils", "lightning.pytorch.loggers.mlflow")


def quiet_console() -> None:
    """Install the filters of ``WARNING_FILTERS`` and ``TIP_PREFIXES`` (idempotent).

    Called by ``cli.main`` (every rank runs it: Lightning and torchrun start each
    rank through ``cli.py``) and by the demo.
    """
    for message, category, module, _why in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    for name in TRACKER_LOGGERS:
        tracker_logger = logging.getLogger(name)
        if _TRACKER_FILTER not in tracker_logger.filters:
            tracker_logger.addFilter(_TRACKER_FILTER)
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    if _CUDA_HOME_FILTER not in extension_logger.filters:
        extension_logger.addFilter(_CUDA_HOME_FILTER)


# ------------------------------------------------------------ callbacks
class _WithoutVersion:
    """Progress bar items without ``v_num``, and a total that holds after a mid-epoch resume.

    The bar counts batches within the epoch (``batch_idx + 1``). Lightning's total is
    ``min(batches in the epoch, steps left)``, which is right only when the epoch
    starts at batch 0: a run resumed at batch 3 with 3 steps left showed ``6/3``.
    Here the total is where the epoch or the run ends, counted from the batch
    where the bar started, in batches (optimizer steps x ``accumulate_grad_batches``).
    """

    # The epoch's bar starts at this batch index, when global_step was this.
    _first_batch: int | None = None
    _first_step = 0

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_batch, self._first_step = 0, trainer.global_step
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A mid-epoch resume calls no on_train_epoch_start: its first batch starts the bar.
        if self._first_batch is None:
            self._first_batch, self._first_step = batch_idx, trainer.global_step
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @property
    def total_train_batches(self) -> int | float:
        """The batch index (1-based) at which this epoch's bar ends: its data or ``max_steps``."""
        trainer = self.trainer
        in_epoch = trainer.num_training_batches
        if trainer.max_steps is None or trainer.max_steps < 0 or self._first_batch is None:
            return super().total_train_batches
        steps_left = max(0, trainer.max_steps - self._first_step)
        return min(in_epoch, self._first_batch + steps_left * trainer.accumulate_grad_batches)


class QuietRichProgressBar(_WithoutVersion, RichProgressBar):
    """Lightning's rich bar; ``Epoch N`` alone when steps drive the run (not ``Epoch N/-2``)."""

    # Private hook of RichProgressBar (lightning 2.6.6): the only place the title is made.
    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:
            description = description.replace(f"/{max_epochs - 1}", "", 1)
        return description


class QuietTQDMProgressBar(_WithoutVersion, TQDMProgressBar):
    """Lightning's tqdm bar (used when ``rich`` is not installed), without ``v_num``."""


class QuietRichModelSummary(RichModelSummary):
    """Lightning's rich model summary without the FLOPs column when nothing was counted.

    Lightning counts FLOPs only through a forward of ``example_input_array``, which
    the module does not set, so the column is all zeros. The real FLOPs of a step
    are logged by ``TokenThroughputMonitor`` (``train/device/flops_per_sec``).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Print the summary table and totals (``RichModelSummary.summarize``'s arguments)."""
        from rich import get_console
        from rich.table import Table

        if total_flops == 0:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _values in summary_data:
            numeric = name in ("Params", "Params per Device", "FLOPs", "In sizes", "Out sizes")
            table.add_column(name, justify="right" if numeric else "left", no_wrap=name == "Name")
        for row in zip(*(values for _name, values in summary_data)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        lines = [
            f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}",
            f"[bold]Non-trainable params[/]: {get_human_readable_count(int(frozen))}",
            f"[bold]Total params[/]: {get_human_readable_count(int(total_parameters))}",
            f"[bold]Total estimated model params size (MB)[/]: {model_size:,.3f}",
        ]
        if total_flops:
            lines.append(f"[bold]Total FLOPs[/]: {get_human_readable_count(total_flops)}")
        console.print("\n".join(lines))


_REPLACEMENTS: dict[type[Callback], type[Callback]] = {
    RichProgressBar: QuietRichProgressBar,
    TQDMProgressBar: QuietTQDMProgressBar,
    RichModelSummary: QuietRichModelSummary,
}


def quiet_callbacks(trainer: L.Trainer, configured: Iterable[Callback] = ()) -> None:
    """Swap the progress bar and model summary Lightning added by default for quiet ones.

    Callbacks in ``configured`` (those the user's config gave) are kept as they are.
    """
    kept = {id(callback) for callback in configured}
    for index, callback in enumerate(trainer.callbacks):
        quiet = _REPLACEMENTS.get(type(callback))
        if quiet is not None and id(callback) not in kept:
            trainer.callbacks[index] = quiet()
