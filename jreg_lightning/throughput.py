"""Tokens/s, FLOPs/s and MFU of every run: Lightning's ``ThroughputMonitor``, kept off the step.

The FLOPs of one step are counted once per batch shape by ``measure_flops`` on a
meta-device copy of the model (no memory, no compute), forward + backward for
training and forward only for evaluation. The JREG term is not in the count:
it has no matrix products and is about 3·L·B·T·d FLOPs, under 0.1% of a step.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import ThroughputMonitor
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


# Private parts of Lightning used here (checked against lightning 2.6.6), none with a
# public equivalent: ThroughputMonitor's counters (_throughputs, _samples, _lengths,
# _batches, _t0s) and hooks (_update, _compute, _start), which a subclass must share;
# trainer._logger_connector (log_metrics: Lightning's own step, "epoch" column and
# trainer.logged_metrics; should_update_logs: the same log steps as the module) and
# trainer.fit_loop._should_accumulate (the optimizer step boundary); ThroughputMonitor
# itself uses all three.
class TokenThroughputMonitor(ThroughputMonitor):
    """Logs tokens/s, FLOPs/s and (on GPUs) MFU; shows tokens/s in the progress bar.

    Training is timed only at log steps (``trainer.log_every_n_steps``), so on a
    GPU the one ``cuda.synchronize`` it needs happens there and not in every
    step; the window spans the last ``window_size`` log steps. Logged keys:
    ``train/device/tokens_per_sec``, ``train/device/flops_per_sec``,
    ``train/device/mfu`` (when the device's peak is known or ``peak_flops`` is
    given), and the same for ``validate`` during evaluation.

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
        super().__init__(batch_size_fn=batch_rows, length_fn=batch_tokens, window_size=window_size)
        self.peak_flops = peak_flops
        self.progress_bar = progress_bar
        self._flops_cache: dict[tuple[int, int, bool], int | None] = {}
        self._unlogged_flops = 0
        self._validation_started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Create the throughput windows; apply ``peak_flops`` when given."""
        super().setup(trainer, pl_module, stage)
        if self.peak_flops is not None:
            self.available_flops = self.peak_flops
            for throughput in self._throughputs.values():
                throughput.available_flops = self.peak_flops

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

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int | None) -> None:
        stage = trainer.state.stage
        throughput = self._throughputs[stage]
        metrics = {
            key.replace("items_per_sec", "tokens_per_sec"): value
            for key, value in throughput.compute().items()
        }
        trainer._logger_connector.log_metrics(
            {f"{stage.value}{throughput.separator}{k}": v for k, v in metrics.items()}, step=step
        )
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
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Count every batch; read the clock (and sync a GPU) only at log steps."""
        stage = trainer.state.stage
        self._samples[stage] += batch_rows(batch)
        self._lengths[stage] += batch_tokens(batch)
        self._batches[stage] += 1
        flops = self._batch_flops(pl_module, batch, training=True)
        if flops is not None:
            self._unlogged_flops += flops
        if (
            trainer.fit_loop._should_accumulate()
            or not trainer._logger_connector.should_update_logs
        ):
            return
        self._synchronize(trainer)
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=self._lengths[stage],
            flops=self._unlogged_flops if flops is not None else None,
        )
        self._unlogged_flops = 0
        self._log(trainer, pl_module, step=None)

    # -------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def _update(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, iter_num: int
    ) -> None:
        """Evaluation batches: the parent's per-batch update with forward-only FLOPs."""
        stage = trainer.state.stage
        self._synchronize(trainer)
        self._samples[stage] += batch_rows(batch)
        self._lengths[stage] += batch_tokens(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=self._lengths[stage],
            flops=self._batch_flops(pl_module, batch, training=False),
        )

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        if trainer._logger_connector.should_update_logs:
            self._log(trainer, trainer.lightning_module, step=iter_num)

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Start the validation clock (and remember when, to pause the training clock)."""
        if trainer.sanity_checking:
            return
        self._synchronize(trainer)
        self._validation_started = time.perf_counter()
        self._start(trainer)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, *_: Any) -> None:
        """Move the training clock forward by the time validation took."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._validation_started is not None and RunningStage.TRAINING in self._t0s:
            self._synchronize(trainer)
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - self._validation_started
        self._validation_started = None
