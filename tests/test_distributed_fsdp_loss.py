"""Under FSDP2 on 2 gloo ranks the JREG loss and gradients equal one process on the same batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments.lightning import find_free_network_port

from jreg_lightning.init import canonical_name
from jreg_lightning.module import JregLightningModule
from jreg_lightning.parallelize import ParallelConfig
from jreg_lightning.regularizer import JregConfig
from tests.conftest import TINY_LLAMA

WORLD = 2
SEED = 5
# Pre-norm capture (a forward hook on the last block) under activation
# checkpointing and sharding is the hardest case for the hook.
JREG = {"lam": 1.0, "weights": "linear", "final_state": "pre_norm"}


def _global_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, TINY_LLAMA["vocab_size"], (4, 17), generator=generator)


def _step(module: JregLightningModule, batch: torch.Tensor) -> torch.Tensor:
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach()


def _fsdp_rank(rank: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data_parallel",))
        torch.manual_seed(SEED)
        module = JregLightningModule(
            llama=dict(TINY_LLAMA),
            jreg=JregConfig(**JREG),
            parallel=ParallelConfig(activation_checkpointing=True),
        )
        module._device_mesh = mesh
        module.configure_model()
        loss = _step(module, _global_batch().chunk(WORLD)[rank])
        dist.all_reduce(loss)  # equal local batch sizes: the global mean is the mean of means
        grads = {
            canonical_name(name): param.grad.full_tensor()
            for name, param in module.model.named_parameters()
        }
        if rank == 0:
            torch.save({"loss": loss / WORLD, "grads": grads}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_jreg_loss_and_gradients_equal_single_process(tmp_path):
    out_path = tmp_path / "fsdp.pt"
    mp.spawn(_fsdp_rank, args=(find_free_network_port(), str(out_path)), nprocs=WORLD, join=True)
    sharded = torch.load(out_path, weights_only=True)

    torch.manual_seed(SEED)
    single = JregLightningModule(llama=dict(TINY_LLAMA), jreg=JregConfig(**JREG))
    single.configure_model()
    loss = _step(single, _global_batch())

    assert sharded["loss"].item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-6)
    grads = dict(single.model.named_parameters())
    assert sharded["grads"].keys() == grads.keys()
    for name, param in grads.items():
        torch.testing.assert_close(sharded["grads"][name], param.grad, rtol=1e-4, atol=1e-6)
