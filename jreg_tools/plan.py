"""``cli.py plan``: what a training run will be, before it starts.

    python cli.py plan --config configs/llama_1b_jreg.yaml --trainer.num_nodes 4

The run config is parsed exactly as ``cli.py fit`` parses it, with the same
``--trainer.*``, ``--model.*`` and ``--data.*`` overrides; the model is built
on the meta device to count its parameters. Memory per GPU under FSDP2
(``ModelParallelStrategy``, every parameter sharded over the world size):

- states: fp32 parameters, fp32 gradients and AdamW's two fp32 moments, each
  sharded on dim 0 (a rank holds ``ceil(rows / world)`` rows of every tensor);
- FSDP2 buffers: two decoder blocks gathered in ``param_dtype`` (the running one
  and the prefetched one), one block's unsharded gradients (``param_dtype``) and
  their ``reduce_dtype`` copy, and the LM head group, which stays gathered;
- activations saved for backward, counted tensor by tensor for HF's Llama block
  (``activation_bytes``); with activation checkpointing only each block's input
  is kept, plus one block recomputed in backward;
- the logits of the cross-entropy, live at the end of forward and in its backward.

``bench/README.md`` (section "Plan vs measured memory") compares these figures
with FSDP2 runs on CPU.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from jreg_lightning.errors import ConfigError
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.parallelize import DTYPES, ParallelConfig

GIB = 2**30
FP32 = 4
ADAMW_MOMENTS = 2


@dataclass
class ModelCounts:
    """Parameter counts of one model shape, from a meta-device build.

    Attributes:
        total: every parameter (a tied embedding once).
        embedding: the input embedding (no matrix product in forward).
        per_rank: elements one rank holds when each tensor is sharded on dim 0 over
            ``world_size`` (``ceil(rows / world)`` rows; the uneven tail is padding).
        block: parameters of one decoder block.
        head: parameters of the final norm and LM head group (gathered all step long).
    """

    total: int
    embedding: int
    per_rank: int
    block: int
    head: int


def count_parameters(llama: LlamaModelConfig, world_size: int = 1) -> ModelCounts:
    """Count the parameters of ``llama`` built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_llama(llama)
    unique = {id(p): p for p in model.parameters()}.values()
    per_rank = sum(math.ceil(p.shape[0] / world_size) * p[0].numel() for p in unique)
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    head_params = {id(p): p for p in [*model.model.norm.parameters(), model.lm_head.weight]}
    return ModelCounts(
        total=sum(p.numel() for p in unique),
        embedding=model.model.embed_tokens.weight.numel(),
        per_rank=per_rank,
        block=block,
        head=sum(p.numel() for p in head_params.values()),
    )


def activation_bytes(
    llama: LlamaModelConfig, tokens: int, dtype_bytes: int, checkpointing: bool
) -> dict[str, int]:
    """Bytes of activations one rank keeps for backward, for ``tokens`` = batch x seq_len.

    Counted per token for HF's ``LlamaDecoderLayer`` (SDPA attention), matching the
    tensors autograd saves (``tests/test_plan.py`` checks the count on CPU):
    each RMSNorm keeps an fp32 copy of its input, the fp32 ``rsqrt`` and the
    normalized output; attention keeps its input, q, k, v, output and one fp32
    log-sum-exp per head; the SwiGLU MLP keeps its input and four ``intermediate``
    tensors. Outside the blocks: the final norm, the LM head's input, the fp32
    log-softmax of the logits and the token ids.

    Returns:
        ``blocks`` (kept between forward and backward), ``recompute`` (one block's
        activations rebuilt in backward under checkpointing), ``outside`` and
        ``logits`` (the transient logits and their gradient, freed after the CE).
    """
    d, f, v = llama.hidden_size, llama.intermediate_size, llama.vocab_size
    kv = llama.num_kv_heads * llama.head_dim
    a = dtype_bytes
    norm = FP32 * d + FP32 + a * d
    attention = a * (3 * d + 2 * kv) + FP32 * llama.num_heads
    mlp = a * (d + 4 * f)
    block = 2 * norm + attention + mlp
    outside = norm + a * d + FP32 * v + 2 * 8  # + input ids and targets (int64)
    per_layer = a * d if checkpointing else block
    return {
        "blocks": tokens * llama.num_layers * per_layer,
        "recompute": tokens * block if checkpointing else 0,
        "outside": tokens * outside,
        "logits": tokens * v * (a + FP32),
    }


def flops_per_token(llama: LlamaModelConfig, counts: ModelCounts, seq_len: int) -> int:
    """Training FLOPs per token: 6 x (matrix-product parameters) + attention (nanoGPT's)."""
    matmul_params = counts.total - counts.embedding
    if llama.tie_word_embeddings:  # the tied embedding is also the LM head's matrix
        matmul_params += counts.embedding
    return 6 * matmul_params + 12 * llama.num_layers * llama.hidden_size * seq_len


@dataclass
class Plan:
    """What one run will be (see ``plan``); bytes per rank, times in seconds."""

    config: str
    num_nodes: int
    devices_per_node: int
    world_size: int
    parameters: int
    parameters_per_rank: int
    batch_size: int
    accumulate_grad_batches: int
    seq_len: int
    tokens_per_step: int
    activation_checkpointing: bool
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    fsdp_buffer_bytes: int
    activation_bytes: int
    activation_bytes_checkpointed: int
    activation_bytes_full: int
    reserve_bytes: int
    peak_bytes: int
    gpu_memory_bytes: int
    fits: bool
    token_budget: float
    steps: int
    flops_per_token: int
    mfu: float
    peak_tflops: float
    seconds: float

    @property
    def state_bytes(self) -> int:
        """Parameters, gradients and AdamW moments of one rank (what FSDP2 shards)."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


def make_plan(
    llama: LlamaModelConfig,
    parallel: ParallelConfig,
    *,
    config: str = "",
    num_nodes: int = 1,
    devices_per_node: int = 8,
    batch_size: int = 1,
    accumulate_grad_batches: int = 1,
    seq_len: int = 2048,
    max_steps: int = 1,
    activation_checkpointing: bool | None = None,
    gpu_memory_gib: float = 80.0,
    reserve_gib: float = 2.0,
    peak_tflops: float = 989.0,
    mfu: float = 0.4,
    tokens: float | None = None,
) -> Plan:
    """The plan of a run of ``llama`` on ``num_nodes x devices_per_node`` GPUs (FSDP2)."""
    for name, value in (
        ("num_nodes", num_nodes),
        ("devices_per_node", devices_per_node),
        ("batch_size", batch_size),
        ("accumulate_grad_batches", accumulate_grad_batches),
        ("seq_len", seq_len),
    ):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"plan: {name} must be a positive integer, got {value!r}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"plan: mfu must be in (0, 1], got {mfu}; 0.4 is a good GPU run")
    if gpu_memory_gib <= 0 or peak_tflops <= 0:
        raise ConfigError("plan: gpu_memory_gib and peak_tflops must be > 0")
    if tokens is not None and tokens <= 0:
        raise ConfigError(f"plan: tokens must be > 0, got {tokens}")
    world = num_nodes * devices_per_node
    counts = count_parameters(llama, world)
    checkpointing = (
        parallel.activation_checkpointing
        if activation_checkpointing is None
        else activation_checkpointing
    )
    param_dtype = DTYPES[parallel.param_dtype].itemsize
    reduce_dtype = DTYPES[parallel.reduce_dtype].itemsize

    states = counts.per_rank * FP32
    buffers = (
        2 * counts.block * param_dtype
        + counts.block * (param_dtype + reduce_dtype)
        + counts.head * param_dtype
    )
    batch_tokens = batch_size * seq_len
    full = activation_bytes(llama, batch_tokens, param_dtype, checkpointing=False)
    ckpt = activation_bytes(llama, batch_tokens, param_dtype, checkpointing=True)
    chosen = ckpt if checkpointing else full
    activations = sum(chosen.values())
    reserve = int(reserve_gib * GIB)
    peak = states * (2 + ADAMW_MOMENTS) + buffers + activations + reserve
    tokens_per_step = batch_tokens * accumulate_grad_batches * world
    budget = float(tokens) if tokens is not None else float(max_steps * tokens_per_step)
    steps = math.ceil(budget / tokens_per_step)
    per_token = flops_per_token(llama, counts, seq_len)
    seconds = steps * tokens_per_step * per_token / (world * peak_tflops * 1e12 * mfu)
    return Plan(
        config=config,
        num_nodes=num_nodes,
        devices_per_node=devices_per_node,
        world_size=world,
        parameters=counts.total,
        parameters_per_rank=counts.per_rank,
        batch_size=batch_size,
        accumulate_grad_batches=accumulate_grad_batches,
        seq_len=seq_len,
        tokens_per_step=tokens_per_step,
        activation_checkpointing=checkpointing,
        param_bytes=states,
        grad_bytes=states,
        optimizer_bytes=states * ADAMW_MOMENTS,
        fsdp_buffer_bytes=buffers,
        activation_bytes=activations,
        activation_bytes_checkpointed=sum(ckpt.values()),
        activation_bytes_full=sum(full.values()),
        reserve_bytes=reserve,
        peak_bytes=peak,
        gpu_memory_bytes=int(gpu_memory_gib * GIB),
        fits=peak <= gpu_memory_gib * GIB,
        token_budget=budget,
        steps=steps,
        flops_per_token=per_token,
        mfu=mfu,
        peak_tflops=peak_tflops,
        seconds=seconds,
    )


def read_run_config(path: str, overrides: Sequence[str] = ()):
    """``path`` parsed as ``cli.py fit --config path OVERRIDES`` parses it (includes, overlays).

    Args:
        path: the run config, e.g. ``configs/llama_1b_jreg.yaml``.
        overrides: more ``cli.py fit`` arguments, e.g. ``["--trainer.num_nodes=4"]``.

    Returns:
        The parsed config (a jsonargparse ``Namespace``), no class instantiated.
    """
    from jreg_tools.cli import JregToolsCLI

    if not Path(path).is_file():
        raise ConfigError(
            f"plan: config {path} not found; pass a file such as configs/llama_1b_jreg.yaml"
        )

    class ParseOnlyCLI(JregToolsCLI):
        def instantiate_classes(self) -> None:
            pass

    # seed_everything false: parsing only, so no "Seed set" line.
    args = ["--config", path, *overrides, "--seed_everything", "false"]
    # LightningCLI warns when both args and a non-empty sys.argv are present.
    with mock.patch.object(sys, "argv", [sys.argv[0]]):
        return ParseOnlyCLI(args=args, run=False).config


def override_args(**sections: dict[str, Any] | None) -> list[str]:
    """``trainer={"num_nodes": 4}`` -> ``["--trainer.num_nodes=4"]``, for ``read_run_config``.

    Keys may be dotted (``model={"parallel.compile": False}``); values are written as
    JSON, which the config parser reads back as the same value.
    """
    return [
        f"--{section}.{key}={json.dumps(value)}"
        for section, values in sections.items()
        for key, value in (values or {}).items()
    ]


def _fields(namespace) -> dict:
    return {k: v for k, v in vars(namespace).items() if k != "__path__"}


def _devices_per_node(devices, default: int) -> int:
    """The config's ``trainer.devices`` as a count: a number as is, ``auto`` -> ``default``."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if isinstance(devices, list | tuple) and devices:
        return len(devices)
    return default


def plan(
    config_file: str,
    trainer: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    devices_per_node: int | None = None,
    gpu_memory_gib: float = 80.0,
    peak_tflops: float = 989.0,
    mfu: float = 0.4,
    tokens: float | None = None,
    activation_checkpointing: bool | None = None,
    reserve_gib: float = 2.0,
) -> dict:
    """Print what ``cli.py fit --config CONFIG [overrides]`` will be; start nothing.

    Args:
        config_file: the training config, e.g. ``configs/llama_1b_jreg.yaml`` (``--config``).
        trainer: overrides of the config's trainer, as for ``fit``: ``--trainer.num_nodes 4``
            (nodes of the run; default the config's), ``--trainer.devices 4``.
        model: overrides of the model, e.g. ``--model.parallel.activation_checkpointing true``.
        data: overrides of the data, e.g. ``--data.batch_size 4``.
        devices_per_node: GPUs per node when ``trainer.devices`` is ``auto`` (default 8);
            given, it replaces the config's count.
        gpu_memory_gib: memory of one GPU, to say whether the run fits.
        peak_tflops: dense bf16 peak of one GPU (989 for an H100 SXM, 312 for an A100).
        mfu: model FLOPs utilisation assumed for the wall time (0.3-0.5 is typical).
        tokens: token budget (default: the config's ``max_steps`` x tokens per step).
        activation_checkpointing: override the config's ``model.parallel`` setting.
        reserve_gib: CUDA context, NCCL buffers and allocator slack per GPU.

    Returns:
        The plan as a dict (also printed as a table).
    """
    config = read_run_config(config_file, override_args(trainer=trainer, model=model, data=data))
    run_trainer, run_data = config.trainer, config.data
    llama = LlamaModelConfig(**_fields(config.model.llama))
    parallel = ParallelConfig(**_fields(config.model.parallel))
    nodes = run_trainer.num_nodes
    devices = devices_per_node or _devices_per_node(run_trainer.devices, default=8)
    accumulate = run_trainer.accumulate_grad_batches or 1
    batch_size = run_data.batch_size
    if config.get("global_batch_size"):
        from jreg_lightning.preflight import per_device_batch_size

        batch_size = per_device_batch_size(
            batch_size, config.global_batch_size, nodes * devices, accumulate
        )
    result = make_plan(
        llama,
        parallel,
        config=config_file,
        num_nodes=nodes,
        devices_per_node=devices,
        batch_size=batch_size,
        accumulate_grad_batches=accumulate,
        seq_len=run_data.seq_len,
        max_steps=run_trainer.max_steps,
        activation_checkpointing=activation_checkpointing,
        gpu_memory_gib=gpu_memory_gib,
        reserve_gib=reserve_gib,
        peak_tflops=peak_tflops,
        mfu=mfu,
        tokens=tokens,
    )
    print(format_plan(result))
    return asdict(result)


def format_plan(p: Plan) -> str:
    """The plan as a short table (GiB per GPU, steps, wall time)."""

    def gib(n: float) -> str:
        return f"{n / GIB:.2f} GiB"

    ckpt = "on" if p.activation_checkpointing else "off"
    verdict = "fits" if p.fits else "does NOT fit"
    hint = (
        ""
        if p.fits
        else "to fit: model.parallel.activation_checkpointing true, a smaller data.batch_size "
        "with more trainer.accumulate_grad_batches, or more nodes"
    )
    days = p.seconds / 86400
    lines = [
        f"plan: {p.config}",
        f"  world size        {p.world_size} = {p.num_nodes} node(s) x {p.devices_per_node} GPUs",
        f"  parameters        {p.parameters / 1e9:.3f}B; "
        f"per rank {p.parameters_per_rank / 1e6:.1f}M",
        f"  tokens per step   {p.tokens_per_step:,} = {p.batch_size} x {p.accumulate_grad_batches}"
        f" x {p.world_size} x {p.seq_len} (batch x accumulation x GPUs x seq_len)",
        "  memory per GPU (FSDP2, every tensor sharded over the world size)",
        f"    parameters fp32   {gib(p.param_bytes)}",
        f"    gradients fp32    {gib(p.grad_bytes)}",
        f"    AdamW moments     {gib(p.optimizer_bytes)}",
        f"    FSDP2 buffers     {gib(p.fsdp_buffer_bytes)}  (2 blocks gathered, 1 block's grads)",
        f"    activations       {gib(p.activation_bytes)}  (checkpointing {ckpt})",
        f"      checkpointing   on {gib(p.activation_bytes_checkpointed)}, "
        f"off {gib(p.activation_bytes_full)}",
        f"    reserve           {gib(p.reserve_bytes)}  (CUDA context, NCCL, allocator)",
        f"    peak              {gib(p.peak_bytes)}  of {gib(p.gpu_memory_bytes)}: {verdict}",
        f"  budget            {p.token_budget / 1e9:.2f}B tokens = {p.steps:,} steps",
        f"  wall time         {p.seconds / 3600:.1f} h ({days:.1f} days) at MFU {p.mfu:.2f} of "
        f"{p.peak_tflops:.0f} TFLOP/s per GPU ({p.flops_per_token / 1e9:.2f} GFLOP per token)",
    ]
    if not p.fits:
        lines.append(f"  {hint.strip(' ()')}")
    return "\n".join(lines)
