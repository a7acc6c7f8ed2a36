"""Per-rank bytes of parameters, gradients and AdamW state under FSDP2, against one process.

    .venv/bin/python bench/memory.py                        # tiny shape, world 2 and 4
    .venv/bin/python bench/memory.py --layers 12 --hidden 512 --world 2 4 8

Each world size runs as that many gloo processes on CPU (the same code path as
on GPUs): ``JregLightningModule.configure_model`` shards the model with FSDP2,
one optimizer step is taken so that gradients and AdamW's moments exist, and
every rank counts the bytes of the storages it holds (padding of uneven shards
included, each storage once). One process without a mesh is the reference.
The figure of merit is (bytes per rank / bytes of one process) / (1 / world):
1.00 is perfect sharding. Activations are not counted (they are not sharded by
FSDP; activation checkpointing is what reduces them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments.lightning import find_free_network_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jreg_lightning.module import JregLightningModule
from jreg_lightning.optim import OptimConfig, build_optimizer


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (DTensors: the local shard's)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure(llama: dict, batch: torch.Tensor, mesh=None) -> dict[str, int]:
    """Bytes of parameters, gradients and AdamW state after one step, on this rank."""
    torch.manual_seed(0)
    module = JregLightningModule(llama=llama, optim=OptimConfig(warmup_steps=0))
    module._device_mesh = mesh
    module.configure_model()
    optimizer, _ = build_optimizer(module.model, module.optim_config, max_steps=10)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    params = list(module.model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "params": _storage_bytes(params),
        "grads": _storage_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": _storage_bytes(t for t in state if t.numel() > 1),
    }


def _rank(rank: int, world: int, port: int, llama: dict, batch: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
        local = batch.chunk(world)[rank]
        torch.save(measure(llama, local, mesh), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--world", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    intermediate = -(-8 * args.hidden // 3 // 256) * 256
    llama = {
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": intermediate,
        "num_layers": args.layers,
        "num_heads": args.hidden // 64,
        "num_kv_heads": max(1, args.hidden // 256),
        "max_position_embeddings": args.seq,
        "tie_word_embeddings": False,
    }
    largest = max(args.world)
    batch = torch.randint(0, args.vocab, (largest, args.seq + 1))
    single = measure(llama, batch)
    total_single = sum(single.values())
    print(f"shape: {llama}")
    print(
        f"one process: {total_single / 2**20:.2f} MiB ", {k: v // 2**10 for k, v in single.items()}
    )
    print(
        "| world | MiB per rank (params / grads / AdamW) | per rank / one process | ideal 1/world "
        "| ratio to ideal |"
    )
    print("| --- | --- | --- | --- | --- |")
    for world in args.world:
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(
                _rank,
                args=(world, find_free_network_port(), llama, batch[:world], out),
                nprocs=world,
                join=True,
            )
            ranks = [torch.load(f"{out}/rank{r}.pt", weights_only=True) for r in range(world)]
        worst = max(ranks, key=lambda r: sum(r.values()))
        per_rank = sum(worst.values())
        fraction = per_rank / total_single
        parts = " / ".join(f"{worst[k] / 2**20:.2f}" for k in ("params", "grads", "optimizer"))
        print(
            f"| {world} | {per_rank / 2**20:.2f} ({parts}) | {fraction:.3f} | {1 / world:.3f} "
            f"| {fraction * world:.3f} |"
        )


if __name__ == "__main__":
    main()
