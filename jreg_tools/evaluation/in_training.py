"""Held-out evaluation while a run trains: perplexity on named sets, tasks, every N steps.

``HeldOutEvaluation`` is the ``evaluation`` block of ``cli.py fit`` (off until
``evaluation.every_n_steps`` is set; ``configs/eval/during_training.yaml``).
Every N optimizer steps it scores the model being trained:

- perplexity, J and the token count on each named set of prepared shards,
  through the module's own forward (``forward_with_states``), so it runs
  sharded under FSDP2 like validation. litdata gives each rank its share of
  the blocks; every rank runs as many forwards as the busiest one (extra ones
  weigh zero, FSDP2 needs every rank in every forward), and the sums and
  counts are added over ranks in one collective;
- zero-shot tasks (``cli.py evaluate``'s YAMLs) on a full copy of the weights
  that rank 0 scores, through lm-evaluation-harness when the ``eval`` extra is
  installed, else the built-in scorer; the other ranks wait.

The numbers go to every logger at that step as ``eval/<set>/loss``,
``eval/<set>/ppl``, ``eval/<set>/jump_strength``, ``eval/<set>/tokens`` and
``eval/<task>/acc``, ``eval/<task>/acc_norm``, beside ``val/loss``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from jreg_lightning.displacement import jump_strength, layer_sums_and_counts
from jreg_lightning.errors import ConfigError, InputNotFoundError
from jreg_lightning.losses import next_token_split, perplexity, token_cross_entropy
from jreg_lightning.tracking import logger_step

TaskBackend = Literal["auto", "harness", "builtin"]


class HeldOutEvaluation(L.Callback):
    """Every ``every_n_steps`` steps of ``fit``: held-out perplexity and tasks, logged.

    Args:
        every_n_steps: optimizer steps between evaluations; 0 turns it off.
        perplexity: set name -> folder of ``cli.py prepare`` shards (its ``split``
            is read) or a litdata dataset folder.
        split: the split read from each prepared folder.
        max_batches: at most this many batches of each set (over all ranks).
        batch_size: blocks per forward; the run's ``data.seq_len`` tokens each.
        tasks: task YAMLs of ``cli.py evaluate`` (local multiple-choice JSONL).
        task_backend: ``harness`` (lm-evaluation-harness, the ``eval`` extra),
            ``builtin``, or ``auto``: the harness where it is installed.
        task_limit: score only the first N documents of each task.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        perplexity: dict[str, str] | None = None,
        split: str = "val",
        max_batches: int = 16,
        batch_size: int = 8,
        tasks: list[str] | None = None,
        task_backend: TaskBackend = "auto",
        task_limit: int | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ConfigError(
                f"evaluation.every_n_steps: {every_n_steps} is negative; "
                "use 0 (off) or the steps between evaluations"
            )
        for name, value in {"max_batches": max_batches, "batch_size": batch_size}.items():
            if value < 1:
                raise ConfigError(f"evaluation.{name}: {value}; use 1 or more")
        self.every_n_steps = every_n_steps
        self.sets = {str(k): Path(v) for k, v in (perplexity or {}).items()}
        self.split = split
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.tasks = [str(task) for task in tasks or []]
        self.task_backend = task_backend
        self.task_limit = task_limit
        self._last_step = -1

    @property
    def enabled(self) -> bool:
        """True when it evaluates something at some step."""
        return self.every_n_steps > 0 and bool(self.sets or self.tasks)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check every named set and task file before training starts."""
        if stage != "fit" or not self.enabled:
            return
        for name, folder in self.sets.items():
            if not folder.exists():
                raise InputNotFoundError(
                    f"evaluation.perplexity.{name}: {folder} does not exist; "
                    "name a folder written by cli.py prepare"
                )
        for task in self.tasks:
            if not Path(task).is_file():
                raise InputNotFoundError(
                    f"evaluation.tasks: {task} does not exist; name a task YAML "
                    "(see docs/evaluation.md)"
                )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Evaluate after the optimizer step that makes ``global_step`` a multiple of N."""
        step = trainer.global_step
        if not self.enabled or step == self._last_step or step % self.every_n_steps != 0:
            return
        self._last_step = step
        metrics: dict[str, float] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                seq_len = int(trainer.datamodule.seq_len)
                for name, folder in self.sets.items():
                    measured = self.measure_set(trainer, pl_module, folder, seq_len)
                    metrics.update({f"eval/{name}/{key}": v for key, v in measured.items()})
                if self.tasks:
                    metrics.update(self.score_tasks(trainer, pl_module))
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=logger_step(trainer))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    def measure_set(
        self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path, seq_len: int
    ) -> dict[str, float]:
        """Token-weighted loss, perplexity, J and token count on one set, over all ranks."""
        from jreg_tools.analysis.text import shard_batches

        world = trainer.world_size
        per_rank = max(1, -(-self.max_batches // world))
        # litdata gives this rank its own share of the blocks.
        batches = list(shard_batches(folder, self.split, seq_len, self.batch_size, per_rank))
        device = pl_module.device
        count = torch.tensor(len(batches), device=device)
        rounds = int(trainer.strategy.reduce(count, None, "max"))
        if rounds == 0:
            raise ConfigError(
                f"evaluation.perplexity: {folder} has fewer than evaluation.batch_size "
                f"({self.batch_size}) blocks of {seq_len + 1} tokens; lower evaluation.batch_size"
            )
        num_layers = pl_module.llama_config.num_layers
        # loss sum, token count, then Psi sums and counts per layer: one reduction.
        totals = torch.zeros(2 + 2 * num_layers, dtype=torch.float64, device=device)
        for index in range(rounds):
            weight = 1.0 if index < len(batches) else 0.0
            block = batches[index] if batches and weight else self._filler(batches, seq_len)
            totals += weight * self._sums(pl_module, block.to(device))
        totals = trainer.strategy.reduce(totals, None, "sum")
        loss = float(totals[0] / totals[1])
        profile = (totals[2 : 2 + num_layers] / totals[2 + num_layers :]).float()
        return {
            "loss": loss,
            "ppl": perplexity(loss),
            "jump_strength": float(jump_strength(profile)) if num_layers >= 3 else float("nan"),
            "tokens": float(totals[1]),
        }

    def _filler(self, batches: list[Tensor], seq_len: int) -> Tensor:
        return batches[0] if batches else torch.zeros(1, seq_len + 1, dtype=torch.long)

    @staticmethod
    def _sums(pl_module: L.LightningModule, batch: Tensor) -> Tensor:
        inputs, targets = next_token_split(batch)
        logits, states = pl_module.forward_with_states(inputs)
        loss_sum = token_cross_entropy(logits, targets, reduction="sum")
        psi_sums, psi_counts = layer_sums_and_counts(states)
        count = loss_sum.new_tensor(float(targets.numel()))
        counts = psi_counts.float().expand(psi_sums.shape)  # one count for every layer
        parts = [loss_sum[None], count[None], psi_sums.float(), counts]
        return torch.cat(parts).to(torch.float64)

    def score_tasks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Zero-shot task accuracy of a full copy of the weights, scored by rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from jreg_lightning.checkpoints import strip_compiled_prefix
        from jreg_lightning.data.tokenizer import load_hf_tokenizer
        from jreg_lightning.model_config import build_llama
        from jreg_tools.evaluation.evaluate import evaluate_tasks
        from jreg_tools.evaluation.models import EvalModel
        from jreg_tools.export import tokenizer_from_meta

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank takes part in gathering the full weights (FSDP2 shards them).
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(pl_module.model, options=options)
        else:
            state = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
        state = strip_compiled_prefix(state)
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            model = build_llama(pl_module.llama_config)
            model.load_state_dict(state)
            model.eval()
            tokenizer_path, _eos = tokenizer_from_meta(trainer.datamodule.data_dir)
            tokenizer = load_hf_tokenizer(tokenizer_path)
            loaded = EvalModel("training", Path("."), model, tokenizer, is_hf_folder=False)
            results = evaluate_tasks(
                loaded, self.tasks, self._backend(), self.batch_size, self.task_limit
            )
            for task, scores in results.items():
                metrics[f"eval/{task}/acc"] = float(scores["acc"])
                metrics[f"eval/{task}/acc_norm"] = float(scores["acc_norm"])
        trainer.strategy.barrier("evaluation.tasks")
        return metrics

    def _backend(self) -> str:
        if self.task_backend != "auto":
            return self.task_backend
        return "harness" if importlib.util.find_spec("lm_eval") is not None else "builtin"
