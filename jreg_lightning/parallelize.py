"""Activation checkpointing, torch.compile and FSDP2 sharding of the Llama, in that order.

``parallelize_llama`` is called by ``JregLightningModule.configure_model`` on a
model still on the meta device; the module then materialises and initialises
it (``jreg_lightning.init``). Without a device mesh (single device, DDP) only
checkpointing and compile apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from jreg_lightning.checkpoints import accept_uncompiled_keys
from jreg_lightning.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CompileScope = Literal["auto", "loss", "blocks"]
COMPILE_SCOPES = ("auto", "loss", "blocks")


@dataclass
class ParallelConfig:
    """How each decoder block is wrapped, and FSDP2's mixed precision.

    Attributes:
        activation_checkpointing: recompute each decoder block in backward instead of
            keeping its activations (saves memory, costs ~1/3 more compute).
        compile: ``torch.compile`` the training step's model work (see ``compile_scope``).
        compile_scope: what ``compile`` wraps. ``loss``: the whole training loss (forward,
            CE and the JREG term) as one graph, so that the term and the block boundaries
            fuse too; for one device and DDP. ``blocks``: each decoder block and the JREG
            term separately (checkpoint keys gain ``_orig_mod.``, which
            ``jreg_lightning.checkpoints.load_full_state_dict`` strips); for FSDP2 and
            activation checkpointing, whose wrappers sit between the blocks. ``auto``:
            ``blocks`` under FSDP2 or with activation checkpointing, else ``loss``.
        param_dtype: FSDP2 only: dtype the sharded fp32 parameters are all-gathered in for
            compute (``bfloat16`` on GPUs, ``float32`` on CPU).
        reduce_dtype: FSDP2 only: dtype of the gradient reduce-scatter (``float32`` keeps
            the summed gradients exact).
        reshard_after_forward: FSDP2 only: free the gathered parameters of a block after its
            forward (ZeRO-3); ``false`` keeps them until backward (ZeRO-2, more memory).
    """

    activation_checkpointing: bool = False
    compile: bool = False
    compile_scope: CompileScope = "auto"
    param_dtype: str = "float32"
    reduce_dtype: str = "float32"
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(
                    f"model.parallel.{name} must be one of {sorted(DTYPES)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.compile_scope not in COMPILE_SCOPES:
            raise ConfigError(
                f"model.parallel.compile_scope must be one of {', '.join(COMPILE_SCOPES)}, "
                f"got {self.compile_scope!r}"
            )
        if self.compile_scope == "loss" and self.activation_checkpointing:
            raise ConfigError(
                "model.parallel.compile_scope: loss cannot be combined with "
                "activation_checkpointing; use compile_scope: blocks (or auto)"
            )

    def compile_target(self, sharded: bool) -> Literal["loss", "blocks"] | None:
        """What ``compile`` wraps for this run: None (eager), ``loss`` or ``blocks``.

        Args:
            sharded: whether the model is sharded with FSDP2.
        """
        if not self.compile:
            return None
        if self.compile_scope == "loss" and sharded:
            raise ConfigError(
                "model.parallel.compile_scope: loss is for one device or DDP; under FSDP2 "
                "use compile_scope: blocks (or auto)"
            )
        if self.compile_scope != "auto":
            return self.compile_scope
        return "blocks" if sharded or self.activation_checkpointing else "loss"


def parallelize_llama(model: nn.Module, config: ParallelConfig, mesh=None) -> nn.Module:
    """Wrap each decoder block of an HF ``LlamaForCausalLM`` and shard the model in place.

    Args:
        model: the ``LlamaForCausalLM`` (normally still on the meta device).
        config: which wrappers to apply.
        mesh: 1-D data-parallel ``DeviceMesh`` to shard over, or None for no sharding.

    Returns:
        ``model``, whose ``model.model.layers[i]`` are the wrapped blocks.
    """
    layers = model.model.layers
    for index, block in enumerate(layers):
        # 1. Checkpointing wraps the plain block, so the recomputation in
        #    backward replays exactly the block's own forward.
        if config.activation_checkpointing:
            # Private module (checked against torch 2.14.1), as in torchtitan: no public
            # module wrapper; its "_checkpoint_wrapped_module." key segment is stripped
            # by jreg_lightning.init.WRAPPER_PREFIXES.
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
                checkpoint_wrapper,
            )

            block = checkpoint_wrapper(block, preserve_rng_state=False)
        # 2. Compile after checkpointing and per block (not the whole model): one
        #    graph reused by every block, recompute included, and forward hooks on a
        #    block (the JREG pre-norm capture) stay outside the compiled region.
        if config.compile_target(sharded=mesh is not None) == "blocks":
            block = accept_uncompiled_keys(torch.compile(block))
        layers[index] = block

    if mesh is None:
        return model

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype]
    )
    # 3. Shard each block as its own FSDP group: its parameters are gathered just
    #    before it runs and freed after.
    for index, block in enumerate(layers):
        # The last block's parameters are needed again at once by backward:
        # resharding them after forward would only add an all-gather.
        reshard = config.reshard_after_forward and index < len(layers) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    # 4. Final norm and LM head form one group of their own, so that they can also
    #    be called directly on any hidden state (early-exit / logit-lens losses in
    #    validation) and gather their weights themselves. A tied head is the
    #    embedding's parameter, so then the embedding joins that group.
    head = [model.model.norm, model.lm_head]
    if model.lm_head.weight is model.model.embed_tokens.weight:
        head.insert(0, model.model.embed_tokens)
    fully_shard(head, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    # 5. The root takes whatever is left (the untied embedding) and drives the
    #    prefetching of all groups.
    fully_shard(
        model, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward
    )
    return model
