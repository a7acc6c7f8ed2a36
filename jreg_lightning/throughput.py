"""Tokens/s, FLOPs/s and MFU of every run: Lightning's ``Throughput`` windows, kept off the step.

The FLOPs of one step are counted once per batch shape by ``measure_flops`` on a
meta-device copy of the model (no memory, no compute), forward + backward for
training and forward only for evaluation. The JREG term is not in the count:
it has no matrix products and is about 3·L·B·T·d FLOPs, under 0.1% of a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops, measure_flops
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

from jreg_lightning.errors import ConfigError
from jreg_lightning.model_config import LlamaModelConfig, build_llama

PROGRESS_BAR_KEY = "tokens/s"


def batch_rows(batch: Tensor) -> int:
    """Sequences in a ``(batch, seq_len + 1)`` token batch."""
    return int(batch.shape[0])


def batch_tokens(batch: Tensor) -> int:
    """Predicted tokens in a ``(batch, seq_len + 1)`` token batch: ``batch * seq_len``."""
    return int(batch.shape[0]) * (int(batch.shape[1]) - 1)


def step_flops(
    config: LlamaModelConfig, batch_size: int, seq_len: int, training: bool = True
) -> int:
    """FLOPs of one forward (+ backward when ``training``) on ``(batch_size, seq_len)`` tokens.

    Counted with ``measure_flops`` on a meta-device copy, so it costs no memory
    even for a 1B model. Matrix products only, as in the usual MFU convention:
    ``6 N T + 12 L T^2 d`` per sequence for training (N the matmul parameters).
    """
    with torch.device("meta"):
        model = build_llama(config)
        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        # A prepared 4-D mask skips transformers' mask preprocessing, whose
        # data-dependent checks would read values that meta tensors do not have.
        mask = torch.ones(batch_size, 1, seq_len, seq_len, dtype=torch.bool)

    def forward() -> Tensor:
        return model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    return int(measure_flops(model, forward, (lambda logits: logits.sum()) if training else None))


# Lightning's logging rule and compute dtype, from public Trainer properties.
def is_log_step(trainer: L.Trainer, step: int) -> bool:
    """Whether Lightning logs at ``step``: every ``log_every_n_steps``-th, and once it should stop.

    ``step`` counts from 1: during training the optimizer steps taken including the
    current one (``trainer.global_step`` after the step, ``+ 1`` before it); during
    evaluation the batches of the current run. This is the rule by which Lightning
    sends a module's step metrics to the loggers.
    """
    every = trainer.log_every_n_steps
    return every > 0 and (step % every == 0 or trainer.should_stop)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the matrix products under a Lightning ``precision`` (for the peak FLOP/s).

    ``bf16-*`` and ``16-*`` compute in bfloat16 and float16 (also FSDP's mixed
    precision, whose reduce dtype it is), ``64-true`` in float64,
    ``transformer-engine`` in int8 (fp8 tables), and everything else in float32.
    """
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    if precision.startswith("transformer-engine"):
        return torch.int8
    return torch.float32


@dataclass
class StageCounts:
    """Running totals of one stage (training, validation, ...) since its clock started.

    ``unwindowed_flops`` are the FLOPs of the batches since the last window update:
    ``Throughput.update`` takes the FLOPs done since its previous call.
    """

    throughput: Throughput
    started: float
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    unwindowed_flops: int = 0

    def count(self, batch: Tensor, flops: int | None) -> None:
        """Add one ``(batch, seq_len + 1)`` token batch and its FLOPs (when known)."""
        self.batches += 1
        self.samples += batch_rows(batch)
        self.tokens += batch_tokens(batch)
        if flops is not None:
            self.unwindowed_flops += flops

    def update(self, now: float, flops_known: bool) -> None:
        """Pass the totals at ``now`` (a ``time.perf_counter`` reading) to the window."""
        self.throughput.update(
            time=now - self.started,
            batches=self.batches,
            samples=self.samples,
            lengths=self.tokens,
            flops=self.unwindowed_flops if flops_known else None,
        )
        self.unwindowed_flops = 0


class TokenThroughputMonitor(L.Callback):
    """Logs tokens/s, FLOPs/s and (on GPUs) MFU; shows tokens/s in the progress bar.

    Training is timed only at log steps (``trainer.log_every_n_steps``), so on a
    GPU the one ``cuda.synchronize`` it needs happens there and not in every
    step; the window spans the last ``window_size`` log steps. Time spent in
    validation is taken off the training clock. Logged keys:
    ``train/device/tokens_per_sec``, ``train/device/flops_per_sec``,
    ``train/device/mfu`` (when the device's peak is known or ``peak_flops`` is
    given), and the same for ``validate`` during evaluation (and ``test``,
    ``predict``), with the other totals of Lightning's ``Throughput``
    (``train/time``, ``train/samples``, ...). Rank 0 measures and logs.

    Args:
        window_size: number of log steps (or evaluation batches) averaged over.
        peak_flops: peak FLOP/s of one device for MFU; by default Lightning's
            table for the GPU and precision in use (none on CPUs).
        progress_bar: show tokens/s in the progress bar.
    """

    def __init__(
        self, window_size: int = 5, peak_flops: float | None = None, progress_bar: bool = True
    ) -> None:
        if window_size < 2:
            raise ConfigError(
                f"TokenThroughputMonitor.window_size must be >= 2 (a rate needs two times), "
                f"got {window_size}"
            )
        self.window_size = window_size
        self.peak_flops = peak_flops
        self.progress_bar = progress_bar
        self.available_flops: float | None = peak_flops
        self._stages: dict[RunningStage, StageCounts] = {}
        self._flops_cache: dict[tuple[int, int, bool], int | None] = {}
        self._seen_global_step = 0
        self._validation_started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Find the device's peak FLOP/s for MFU, unless ``peak_flops`` is given."""
        if self.peak_flops is None:
            self.available_flops = get_available_flops(
                trainer.strategy.root_device, compute_dtype(trainer.precision)
            )

    def _start(self, trainer: L.Trainer, stage: RunningStage) -> None:
        """A fresh window and zero totals for ``stage``; its clock starts now."""
        throughput = Throughput(
            available_flops=self.available_flops,
            world_size=trainer.world_size,
            window_size=self.window_size,
        )
        self._stages[stage] = StageCounts(throughput, started=time.perf_counter())

    def _batch_flops(
        self, pl_module: L.LightningModule, batch: Tensor, training: bool
    ) -> int | None:
        """FLOPs of one batch, measured once per (shape, training) on a meta copy."""
        key = (int(batch.shape[0]), int(batch.shape[1]) - 1, training)
        if key not in self._flops_cache:
            config = getattr(pl_module, "llama_config", None)
            if isinstance(config, LlamaModelConfig):
                self._flops_cache[key] = step_flops(config, key[0], key[1], training=training)
            else:
                self._flops_cache[key] = getattr(pl_module, "flops_per_batch", None)
        return self._flops_cache[key]

    @staticmethod
    def _synchronize(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def _log(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: RunningStage,
        step: int,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Send the window's rates to every logger at ``step``, tokens/s to the progress bar."""
        throughput = self._stages[stage].throughput
        metrics = {
            key.replace("items_per_sec", "tokens_per_sec"): value
            for key, value in throughput.compute().items()
        }
        logged = {f"{stage.value}{throughput.separator}{k}": v for k, v in metrics.items()}
        logged |= extra or {}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
            logger.save()
        tokens_per_sec = metrics.get(f"device{throughput.separator}tokens_per_sec")
        if self.progress_bar and tokens_per_sec is not None and stage == RunningStage.TRAINING:
            pl_module.log(
                PROGRESS_BAR_KEY,
                float(tokens_per_sec) * trainer.world_size,
                prog_bar=True,
                logger=False,
                on_step=True,
                on_epoch=False,
            )

    # ---------------------------------------------------------------- training
    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the training clock."""
        self._start(trainer, RunningStage.TRAINING)
        self._seen_global_step = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Count every batch; read the clock (and sync a GPU) only at log steps.

        A batch ends an optimizer step when ``global_step`` has moved since the
        previous batch (not while gradients accumulate): only then is the step's
        time complete, and only then does Lightning log the module's metrics.
        """
        counts = self._stages[RunningStage.TRAINING]
        flops = self._batch_flops(pl_module, batch, training=True)
        counts.count(batch, flops)
        stepped = trainer.global_step != self._seen_global_step
        self._seen_global_step = trainer.global_step
        if not stepped or not is_log_step(trainer, trainer.global_step):
            return
        self._synchronize(trainer)
        counts.update(time.perf_counter(), flops_known=flops is not None)
        # The step and "epoch" column Lightning gives the module's metrics of this
        # batch: the optimizer steps before it.
        self._log(
            trainer,
            pl_module,
            RunningStage.TRAINING,
            step=trainer.global_step - 1,
            extra={"epoch": trainer.current_epoch},
        )

    # -------------------------------------------------------------- evaluation
    @staticmethod
    def _evaluation_batches(trainer: L.Trainer, stage: RunningStage) -> int:
        """Batches the running evaluation loop has taken over all its runs (resumed with fit)."""
        if stage == RunningStage.PREDICTING:
            loop = trainer.predict_loop
        elif trainer.state.fn == TrainerFn.FITTING:
            loop = trainer.fit_loop.epoch_loop.val_loop
        elif stage == RunningStage.TESTING:
            loop = trainer.test_loop
        else:
            loop = trainer.validate_loop
        return int(loop.batch_progress.total.ready)

    def _evaluation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Tensor
    ) -> None:
        """Every evaluation batch updates the window (forward-only FLOPs); log steps log it."""
        stage = trainer.state.stage
        counts = self._stages[stage]
        self._synchronize(trainer)
        now = time.perf_counter()
        flops = self._batch_flops(pl_module, batch, training=False)
        counts.count(batch, flops)
        counts.update(now, flops_known=flops is not None)
        if is_log_step(trainer, counts.batches):
            self._log(trainer, pl_module, stage, step=self._evaluation_batches(trainer, stage))

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the validation clock (and remember when, to pause the training clock)."""
        if trainer.sanity_checking:
            return
        self._synchronize(trainer)
        self._validation_started = time.perf_counter()
        self._start(trainer, RunningStage.VALIDATING)

    @rank_zero_only
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Time and count one validation batch (not during the sanity check)."""
        if not trainer.sanity_checking:
            self._evaluation_batch_end(trainer, pl_module, batch)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the training clock forward by the time validation took."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        training = self._stages.get(RunningStage.TRAINING)
        if self._validation_started is not None and training is not None:
            self._synchronize(trainer)
            training.started += time.perf_counter() - self._validation_started
        self._validation_started = None

    @rank_zero_only
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the test clock."""
        self._start(trainer, RunningStage.TESTING)

    @rank_zero_only
    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Time and count one test batch."""
        self._evaluation_batch_end(trainer, pl_module, batch)

    @rank_zero_only
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the prediction clock."""
        self._start(trainer, RunningStage.PREDICTING)

    @rank_zero_only
    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Time and count one prediction batch."""
        self._evaluation_batch_end(trainer, pl_module, batch)
