"""Deterministic initialisation of a Llama, identical whether built eagerly, on meta, or sharded.

A model built on the meta device and materialised with ``to_empty`` holds
uninitialised memory: Lightning would only call ``reset_parameters()`` (torch's
kaiming init for ``nn.Linear``, nothing at all for RMSNorm or the rotary
``inv_freq`` buffer). ``init_llama_weights`` gives every parameter and buffer
Hugging Face's Llama init instead:

- ``nn.Linear`` / ``nn.Embedding`` weights: normal(0, ``initializer_range``)
  (an embedding's padding row zero);
- RMSNorm weights: ones;
- rotary ``inv_freq`` buffers: recomputed from the config.

Each random tensor is drawn from its own CPU generator seeded by (seed,
parameter name), not from the global RNG stream, so the values do not depend
on construction order, wrappers (compile, activation checkpointing), the
device, or how FSDP2 shards the parameter: every rank draws the full tensor
and keeps its own shard. The same seed gives bit-identical weights eagerly,
on meta + materialise, and on any number of ranks.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

# Names that wrappers insert into parameter paths; stripped so a wrapped
# model draws the same numbers as a plain one.
WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """A parameter path without compile / checkpoint / FSDP1 wrapper segments."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def parameter_seed(seed: int, name: str) -> int:
    """The generator seed of one parameter: a stable function of ``seed`` and its name."""
    return (seed * 1_000_003 + zlib.crc32(canonical_name(name).encode())) % (2**63)


@torch.no_grad()
def init_llama_weights(model: nn.Module, initializer_range: float, seed: int) -> nn.Module:
    """Initialise every parameter and buffer of a (possibly sharded) HF Llama in place.

    Args:
        model: a materialised ``LlamaForCausalLM`` (parameters may be FSDP2 DTensors).
        initializer_range: std of the normal init of Linear and Embedding weights.
        seed: base seed; the same seed gives the same weights on any device or world size.

    Returns:
        ``model``.

    Raises:
        TypeError: a parameter or buffer of a module type this init does not know,
            so that nothing is silently left uninitialised.
    """
    done: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in done:  # a tied LM head: initialised as the embedding
                continue
            done.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, (nn.Linear, nn.Embedding)) and param_name == "weight":
                full = _normal(param, initializer_range, parameter_seed(seed, name))
                padding = getattr(module, "padding_idx", None)
                if padding is not None:
                    full[padding].zero_()
            elif param_name == "bias":
                full = torch.zeros(param.shape, dtype=param.dtype, device="cpu")
            elif "RMSNorm" in type(module).__name__ and param_name == "weight":
                full = torch.ones(param.shape, dtype=param.dtype, device="cpu")
            else:
                raise TypeError(
                    f"init_llama_weights does not know how to initialise {name} "
                    f"({type(module).__name__}); add a rule for it in jreg_lightning/init.py"
                )
            copy_full_into(param, full)
    return init_rotary_buffers(model)


def materialize_llama(
    model: nn.Module, device: torch.device | str, initializer_range: float, seed: int
) -> nn.Module:
    """Allocate a meta-device (possibly sharded) model on ``device`` and initialise it.

    Args:
        model: the ``LlamaForCausalLM`` built under ``torch.device("meta")``.
        device: where its parameters and buffers are allocated.
        initializer_range: std of the normal init of Linear and Embedding weights.
        seed: base seed of ``init_llama_weights``.

    Returns:
        ``model``, materialised in place.
    """
    return init_llama_weights(allocate_llama(model, device), initializer_range, seed)


def allocate_llama(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Give a meta-device (possibly sharded) model uninitialised memory on ``device``.

    ``to_empty`` gives every module its own new tensor, which unties a tied LM
    head from the embedding; the ties are restored here. The caller fills every
    parameter and buffer next (``init_llama_weights``, or
    ``jreg_lightning.pretrained.load_pretrained_llama``).

    Returns:
        ``model``, allocated in place.
    """
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, name))
    model.to_empty(device=device)
    for shared in owners.values():
        (first_module, first_name), *others = shared
        for module, name in others:
            setattr(module, name, getattr(first_module, first_name))
    return model


@torch.no_grad()
def init_rotary_buffers(model: nn.Module) -> nn.Module:
    """Recompute the rotary ``inv_freq`` buffers of an allocated model (they are not weights).

    Raises:
        TypeError: a buffer of another module type, so that nothing is left uninitialised.
    """
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if "RotaryEmbedding" not in type(module).__name__:
                raise TypeError(
                    f"init_rotary_buffers does not know how to initialise buffer "
                    f"{module_name}.{buffer_name} ({type(module).__name__}); add a rule for it"
                )
            copy_full_into(buffer, _rotary_buffer(module, buffer_name))
    return model


def _normal(param: Tensor, std: float, seed: int) -> Tensor:
    """The full-shape tensor, drawn on CPU so every device gets the same numbers.

    ``device="cpu"`` is explicit: Lightning calls ``configure_model`` under a default
    device (the GPU under DDP or one device), where a bare ``torch.empty`` would not
    match the CPU generator.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    full = torch.empty(param.shape, dtype=torch.float32, device="cpu")
    full.normal_(mean=0.0, std=std, generator=generator)
    return full.to(param.dtype)


def _rotary_buffer(module: nn.Module, buffer_name: str) -> Tensor:
    """A buffer of a freshly built CPU copy of the rotary embedding (computed, not random)."""
    with torch.device("cpu"):
        fresh = type(module)(config=module.config)
    return getattr(fresh, buffer_name)


def copy_full_into(target: Tensor, full: Tensor) -> None:
    """Copy a full-shape CPU tensor into ``target``, or into its shard if it is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        # src_data_rank=None: every rank drew the same full tensor, so each keeps
        # its own slice without any communication.
        full = distribute_tensor(
            full.to(target.device_mesh.device_type),
            target.device_mesh,
            target.placements,
            src_data_rank=None,
        )
        target.to_local().copy_(full.to_local())
    else:
        target.copy_(full)
