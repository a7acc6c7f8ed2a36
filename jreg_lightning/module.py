"""The LightningModule: a Hugging Face Llama pretrained with CE + JREG."""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

# Internal module of transformers (checked against 5.24.0): it installs, on the first
# forward with output_hidden_states, the hooks that collect the states; calling it
# before torch.compile keeps that one-time installation out of the graph. No public
# function installs them ahead of the first forward.
from transformers.utils.output_capturing import (
    maybe_install_capturing_hooks as install_hidden_state_hooks,
)

from jreg_lightning.checkpoints import drop_pre_norm_model_copy, reopen_unfinished_epoch
from jreg_lightning.displacement import layer_sums_and_counts
from jreg_lightning.errors import ConfigError
from jreg_lightning.gradients import (
    check_clipping,
    clip_by_total_norm_,
    parameters_with_grads,
    total_gradient_norm,
)
from jreg_lightning.init import materialize_llama
from jreg_lightning.losses import (
    early_exit_loss_sum,
    next_token_split,
    perplexity,
    token_cross_entropy,
)
from jreg_lightning.metrics import LayerProfileMetric, profile_summary
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.nonfinite import NonFiniteGuard, NonFiniteMode
from jreg_lightning.optim import OptimConfig, build_optimizer
from jreg_lightning.parallelize import ParallelConfig, parallelize_llama
from jreg_lightning.preflight import check_checkpoint_shape
from jreg_lightning.pretrained import (
    check_data_tokenizer,
    load_pretrained_llama,
    pretrained_llama_config,
)
from jreg_lightning.regularizer import JregConfig, JumpRegularizer


class TrainingLosses(NamedTuple):
    """What one training step's loss is made of (``JregLightningModule.training_losses``).

    Attributes:
        ce: the mean next-token cross-entropy (float32 scalar).
        jreg: the term ``lam * sum_l w_l * Psi_l``; None at lam = 0.
        layer_sums: the detached Psi sums of the active layers, keyed by 0-based
            index (empty at lam = 0), reused by the logged profile.
        states: h_0 ... h_L of the JREG config.
    """

    ce: Tensor
    jreg: Tensor | None
    layer_sums: dict[int, Tensor]
    states: list[Tensor]


def _as_config(value, cls):
    """Accept a dataclass or the plain dict a checkpoint's hyperparameters hold."""
    return value if isinstance(value, cls) else cls(**dict(value))


class JregLightningModule(L.LightningModule):
    """Pretrains ``LlamaForCausalLM`` with ``L_CE + lam * sum_l w_l * Psi_l``.

    The model is built in ``configure_model`` (so a strategy can build it on the
    meta device and shard it). Each log step it measures the full layer
    profile, J and J_late on the training batch; validation accumulates them
    over the whole split.

    Args:
        llama: shape of the model. With ``init_from`` it is read from the folder's
            ``config.json``; leave it out, or give the same values.
        jreg: lambda, layer weights and which final state to use.
        optim: AdamW and the warmup + cosine schedule.
        nonfinite: what a NaN/inf training loss does: ``stop`` the run before any
            later checkpoint is written (no per-step host sync), or ``skip`` the
            batch and count it (one host sync per step); see ``jreg_lightning.nonfinite``.
        parallel: activation checkpointing, compile, and FSDP2 mixed precision
            (sharding applies under ``ModelParallelStrategy``).
        init_from: a local Hugging Face Llama folder (``config.json`` + safetensors) to
            continue pretraining from instead of a random init; prepare the data with
            its tokenizer (``prepare --tokenizer <folder>``). See ``jreg_lightning.pretrained``.
    """

    def __init__(
        self,
        llama: LlamaModelConfig | None = None,
        jreg: JregConfig | None = None,
        optim: OptimConfig | None = None,
        parallel: ParallelConfig | None = None,
        nonfinite: NonFiniteMode = "stop",
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.init_from = str(init_from) if init_from else None
        if self.init_from:
            given = _as_config(llama, LlamaModelConfig) if llama is not None else None
            self.llama_config = pretrained_llama_config(self.init_from, given)
        else:
            self.llama_config = _as_config(llama or LlamaModelConfig(), LlamaModelConfig)
        self.jreg_config = _as_config(jreg or JregConfig(), JregConfig)
        self.optim_config = _as_config(optim or OptimConfig(), OptimConfig)
        self.parallel_config = _as_config(parallel or ParallelConfig(), ParallelConfig)
        # Plain dicts keep the checkpoint loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "llama": asdict(self.llama_config),
                "jreg": asdict(self.jreg_config),
                "optim": asdict(self.optim_config),
                "parallel": asdict(self.parallel_config),
                "nonfinite": nonfinite,
                "init_from": self.init_from,
            }
        )
        num_layers = self.llama_config.num_layers
        self.regularizer = JumpRegularizer(self.jreg_config, num_layers)
        self.train_profile = LayerProfileMetric(num_layers)
        self.val_profile = LayerProfileMetric(num_layers)
        # Early-exit (logit lens) CE per block: sums and counts in one (2, L) state.
        self.val_early_exit = LayerProfileMetric(num_layers)
        self.val_loss = MeanMetric()
        # With data.sources: one SplitMetrics per source, made in setup().
        self.val_sources: nn.ModuleDict | None = None
        self.source_weights: dict[str, float] = {}
        self.model = None
        # The training loss as one torch.compile graph (compile_scope "loss"), else None.
        self._compiled_losses = None
        self.last_validation: dict | None = None
        self.nonfinite_guard = NonFiniteGuard(nonfinite)

    # ----------------------------------------------------------------- model
    def setup(self, stage: str) -> None:
        """Metrics per source of a data mixture; with ``init_from``, the data's tokenizer check."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if self.init_from and stage == "fit" and getattr(datamodule, "data_dir", None):
            check_data_tokenizer(self.init_from, datamodule.data_dir)
        weights = getattr(datamodule, "source_weights", None)
        if weights and self.val_sources is None:
            # One loss and profile per source (its val loader's index = its position).
            self.source_weights = weights
            self.val_sources = nn.ModuleDict(
                {name: SplitMetrics(self.llama_config.num_layers) for name in weights}
            )

    def configure_model(self) -> None:
        """Build the Llama once: meta -> wrap/shard -> materialise -> init (or load).

        The same path serves every strategy: under ``ModelParallelStrategy`` the
        blocks and root are sharded with FSDP2 over the data-parallel mesh before
        any memory is allocated, so each rank only ever holds its shard. The init
        is seeded per parameter by the run's seed (``jreg_lightning.init``), so the
        weights are the same as an eager ``build_llama`` whatever the world size.
        With ``init_from`` the weights are read from the folder instead, shard by
        shard (``jreg_lightning.pretrained.load_pretrained_llama``); on a resume the
        checkpoint's weights then replace them (Lightning tells ``configure_model``
        nothing about the checkpoint it will restore).
        A second call (validate after fit in one process) is a no-op.
        """
        if self.model is not None:
            return
        mesh = self._data_parallel_mesh()
        compile_target = self.parallel_config.compile_target(sharded=mesh is not None)
        with torch.device("meta"):
            model = build_llama(self.llama_config)
        parallelize_llama(model, self.parallel_config, mesh)
        device = self.trainer.strategy.root_device if self._trainer is not None else "cpu"
        if self.init_from:
            self.model = load_pretrained_llama(model, device, self.init_from)
        else:
            seed = torch.initial_seed()
            init_range = self.llama_config.initializer_range
            self.model = materialize_llama(model, device, init_range, seed)
        self.regularizer.attach(self.model)
        if compile_target == "blocks":
            self.regularizer.compile_displacement()
        elif compile_target == "loss":
            self.compile_training_loss()

    def compile_training_loss(self) -> None:
        """``torch.compile`` the training loss (forward, CE, JREG term) as one graph.

        What ``compile_scope: loss`` does after the model is built. Transformers'
        hidden-state hooks are installed first, eagerly, so that the graph does not
        break on their one-time installation, and so are the regularizer's, which
        the graph traces with the forward.
        """
        install_hidden_state_hooks(self.model.model)
        self.regularizer.attach(self.model)
        self._compiled_losses = torch.compile(self.training_losses)

    def _data_parallel_mesh(self):
        """The strategy's data-parallel mesh under ``ModelParallelStrategy``, else None."""
        mesh = self.device_mesh
        if mesh is None:
            return None
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
            raise ConfigError(
                "strategy.tensor_parallel_size must be 1: this module shards with FSDP2 only; "
                "set tensor_parallel_size: 1 and data_parallel_size to the number of GPUs"
            )
        return mesh["data_parallel"] if names else mesh

    def forward_with_states(
        self, input_ids: Tensor, record_psi: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits ``(batch, seq, vocab)`` and the states h_0 ... h_L of the JREG config.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            record_psi: also compute the active layers' Psi during the forward, for
                ``regularizer.term()`` (the training loss).
        """
        if not torch.compiler.is_compiling():
            # A model set after configure_model (benches, tests) gets its hooks here.
            self.regularizer.attach(self.model)
        return self.regularizer.run_model(self.model, input_ids, record_psi=record_psi)

    # -------------------------------------------------------------- training
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """One step: forward -> CE + lam * sum_l w_l Psi_l; metrics at log steps only."""
        if self._compiled_losses is not None:
            self.regularizer.attach(self.model)  # no-op unless the model was replaced
            losses = self._compiled_losses(batch)
        else:
            losses = self.training_losses(batch)
        ce, jreg = losses.ce, losses.jreg
        loss = ce if jreg is None else ce + jreg
        # NaN/inf: ``stop`` only records the step on the device here and raises at the next
        # log step or checkpoint save; ``skip`` (opt-in, one sync per step) drops the batch.
        if self.nonfinite_guard.observe(loss, self.global_step + 1):
            return None

        if self._is_log_step():
            self.nonfinite_guard.raise_if_bad(self._last_checkpoint_path())
            with torch.no_grad():
                self.train_profile.update(
                    *layer_sums_and_counts(losses.states, known=losses.layer_sums)
                )
            profile = self.train_profile.compute()
            self.train_profile.reset()
            metrics = {"train/ce": ce.detach()}
            metrics["train/jreg"] = jreg.detach() if jreg is not None else torch.zeros_like(ce)
            if self.nonfinite_guard.mode == "skip":
                metrics["train/nonfinite_skipped"] = float(self.nonfinite_guard.skipped)
            metrics.update(self._profile_metrics("train", profile))
            self.log_dict(metrics)
            self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def training_losses(self, batch: Tensor) -> TrainingLosses:
        """CE + the regularizer's term, with its per-layer Psi sums and h_0 ... h_L.

        The one loss path, run eagerly or as one graph (``compile_training_loss``):
        the regularizer's hooks compute Psi_l inside the forward right after block
        l (see ``JumpRegularizer.attach``), and ``term`` reads them.
        """
        inputs, targets = next_token_split(batch)
        logits, states = self.forward_with_states(inputs, record_psi=self.regularizer.enabled)
        ce = token_cross_entropy(logits, targets)
        if not self.regularizer.enabled:
            return TrainingLosses(ce, None, {}, states)
        jreg = self.regularizer.term()
        return TrainingLosses(ce, jreg.term, jreg.layer_sums, states)

    def _is_log_step(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        # Private (checked against lightning 2.6.6): the Trainer's own rule for a logging
        # step (log_every_n_steps, the last step, should_stop); no public property gives it.
        return trainer._logger_connector.should_update_logs

    def _profile_metrics(self, stage: str, result: dict[str, Tensor]) -> dict[str, Tensor]:
        metrics = {
            f"{stage}/jump_strength": result["jump_strength"],
            f"{stage}/jump_strength_late": result["jump_strength_late"],
            f"{stage}/jump_layer": result["jump_layer"].float(),
        }
        for index, value in enumerate(result["profile"], start=1):
            metrics[f"{stage}/psi/layer_{index:02d}"] = value
        return metrics

    # ------------------------------------------------------------ evaluation
    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulate token-weighted CE and the per-layer Psi sums over the split.

        With a data mixture, each source's split (``dataloader_idx``) on its own.
        In ``validate`` / ``test`` (not during ``fit``, to keep it cheap) also the
        early-exit loss of every block: the final norm and LM head applied to h_l.
        """
        inputs, targets = next_token_split(batch)
        logits, states = self.forward_with_states(inputs)
        ce = token_cross_entropy(logits, targets)
        split = self._split_metrics(dataloader_idx)
        split.loss.update(ce, weight=targets.numel())
        split.profile.update(*layer_sums_and_counts(states))
        if self._measures_early_exit():
            self.val_early_exit.update(
                self._early_exit_sums(states, ce.detach() * targets.numel(), targets),
                ce.new_full((), float(targets.numel())),
            )

    def _split_metrics(self, dataloader_idx: int) -> SplitMetrics | _SingleSplit:
        if self.val_sources is None:
            return _SingleSplit(self.val_loss, self.val_profile)
        return self.val_sources[list(self.val_sources)[dataloader_idx]]

    def _measures_early_exit(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn in ("validate", "test")

    @torch.no_grad()
    def _early_exit_sums(self, states: list[Tensor], final_sum: Tensor, targets: Tensor) -> Tensor:
        """``(L,)`` CE sums of the logit lens on h_1 .. h_{L-1}; block L is the model's own CE.

        One layer's logits exist at a time. ``states[-1]`` may be post-norm, so the
        last block reuses ``final_sum`` (the model's loss) instead of a second norm.
        """
        norm, head = self.model.model.norm, self.model.get_output_embeddings()
        sums = [early_exit_loss_sum(norm, head, hidden, targets) for hidden in states[1:-1]]
        return torch.stack([*sums, final_sum.float()])

    def on_validation_epoch_end(self) -> None:
        """Log val/loss, val/ppl, the profile, J and J_late; keep them in ``last_validation``.

        ``jreg_lightning.profile_report.ProfileReport`` (a callback ``cli.py`` adds)
        prints them as a table after ``validate`` / ``test`` and writes them to the run.
        """
        metrics, sources = {}, {}
        if self.val_sources is None:
            loss, profile = self.val_loss.compute(), self.val_profile.compute()
        else:
            # The total is the sources' weighted mean, as the training mixture weighs them.
            loss, mean_profile = 0.0, 0.0
            for name, split in self.val_sources.items():
                source_loss, source_profile = split.loss.compute(), split.profile.compute()
                split.loss.reset()
                split.profile.reset()
                weight = self.source_weights[name]
                loss = loss + weight * source_loss
                mean_profile = mean_profile + weight * source_profile["profile"]
                sources[name] = _validation_summary(source_loss, source_profile)
                metrics[f"val/{name}/loss"] = source_loss
                metrics[f"val/{name}/ppl"] = sources[name]["ppl"]
                metrics.update(self._profile_metrics(f"val/{name}", source_profile))
            profile = profile_summary(mean_profile)
        early_exit = None
        if self.val_early_exit.update_count > 0:
            early_exit = [float(v) for v in self.val_early_exit.compute()["profile"]]
        self.val_loss.reset()
        self.val_profile.reset()
        self.val_early_exit.reset()
        self.last_validation = {
            **_validation_summary(loss, profile),
            "final_state": self.jreg_config.final_state,
            "early_exit_loss": early_exit,
        }
        if sources:
            self.last_validation["sources"] = sources
        metrics.update({"val/loss": loss, "val/ppl": self.last_validation["ppl"]})
        metrics.update(self._profile_metrics("val", profile))
        self.log_dict(metrics, sync_dist=False)

    def test_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Same measurements as validation."""
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        """Same report as validation."""
        self.on_validation_epoch_end()

    # ---------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to save after a non-finite loss; keep the skipped-batch count.

        An epoch that ``max_steps`` cut short is saved as still running
        (``jreg_lightning.checkpoints.reopen_unfinished_epoch``), so that extending a
        finished run resumes it at the true epoch and position.
        """
        self.nonfinite_guard.raise_if_bad(self._last_checkpoint_path())
        checkpoint["nonfinite"] = self.nonfinite_guard.state_dict()
        reopen_unfinished_epoch(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another model shape (one line, before any weight is copied).

        Some ``pre_norm`` checkpoints hold a second copy of the model; it is dropped
        (``jreg_lightning.checkpoints.drop_pre_norm_model_copy``).
        """
        check_checkpoint_shape(checkpoint.get("hyper_parameters"), self.llama_config, "checkpoint")
        self.nonfinite_guard.load_state_dict(checkpoint.get("nonfinite", {}))
        drop_pre_norm_model_copy(checkpoint.get("state_dict") or {})

    def _last_checkpoint_path(self) -> str | None:
        """The newest checkpoint this run has written and its step, for the non-finite message."""
        if self._trainer is None:
            return None
        for callback in self.trainer.checkpoint_callbacks:
            path = getattr(callback, "_last_checkpoint_saved", "")
            if path:
                return f"{path} (step {getattr(callback, '_last_global_step_saved', '?')})"
        return None

    # ------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        """AdamW with warmup + cosine decay to ``min_lr``, stepped every optimizer step."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        optimizer, scheduler = build_optimizer(
            self.model, self.optim_config, self.trainer.max_steps, grad_scaler=scaler is not None
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by the total norm (or by value), and log the norm before clipping at log steps.

        The module clips instead of Lightning's precision plugin, which refuses any
        fused optimizer under ``bf16-mixed`` (see ``jreg_lightning.gradients``).
        The norm is the whole model's under FSDP2 and FSDP1; it stays on the device.
        """
        max_norm = float(gradient_clip_val or 0.0)
        log_step = self._is_log_step()
        if max_norm <= 0 and not log_step:
            return
        check_clipping(optimizer, getattr(self.trainer.precision_plugin, "scaler", None))
        parameters = parameters_with_grads(optimizer)
        by_value = (gradient_clip_algorithm or "norm").lower() == "value"
        fsdp1_root = self._fsdp1_root()
        if fsdp1_root is not None:
            # FSDP1 keeps flat shards: only its own method reduces the norm over ranks.
            limit = max_norm if max_norm > 0 and not by_value else float("inf")
            norm = fsdp1_root.clip_grad_norm_(limit)
        else:
            norm = total_gradient_norm(parameters)
            if max_norm > 0 and not by_value:
                clip_by_total_norm_(parameters, max_norm, norm)
        if max_norm > 0 and by_value:
            torch.nn.utils.clip_grad_value_(parameters, max_norm, foreach=True)
        if log_step:
            self.log("train/grad_norm", norm.detach().float())

    def _fsdp1_root(self):
        """The ``FullyShardedDataParallel`` root under Lightning's ``FSDPStrategy``, else None."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model if self._trainer is not None else None
        return root if isinstance(root, FullyShardedDataParallel) else None


class SplitMetrics(nn.Module):
    """Token-weighted loss and layer profile of one validation split (one mixture source)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.profile = LayerProfileMetric(num_layers)


class _SingleSplit(NamedTuple):
    loss: MeanMetric
    profile: LayerProfileMetric


def _validation_summary(loss: Tensor | float, profile: dict[str, Tensor]) -> dict:
    """The plain numbers of one validation: loss, perplexity, profile, J, J_late, argmax."""
    return {
        "loss": float(loss),
        "ppl": perplexity(torch.as_tensor(loss)),
        "profile": [float(v) for v in profile["profile"]],
        "jump_strength": float(profile["jump_strength"]),
        "jump_strength_late": float(profile["jump_strength_late"]),
        "jump_layer": int(profile["jump_layer"]),
    }
