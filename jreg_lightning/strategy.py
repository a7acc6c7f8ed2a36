"""FSDP2 over every process: Lightning's ``ModelParallelStrategy`` with a world-size mesh.

Lightning's ``ModelParallelStrategy`` reads ``data_parallel_size="auto"`` as the
number of nodes and ``tensor_parallel_size="auto"`` as the devices per node (2-D
parallelism). This project shards with FSDP2 only, so the data-parallel size
must be the world size, which a config cannot know (it changes with
``--trainer.num_nodes``, SLURM or torchrun). ``FSDP2Strategy`` fills it in when
the processes are known; its distributed-checkpoint saves are atomic
(``jreg_lightning.checkpoints.AtomicModelParallelStrategy``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout

from jreg_lightning.checkpoints import AtomicModelParallelStrategy
from jreg_lightning.errors import ConfigError

WORLD_SIZE = "world_size"


def data_parallel_size(world_size: int, tensor_parallel_size: int) -> int:
    """Processes in one data-parallel (FSDP2) group: ``world_size / tensor_parallel_size``."""
    if tensor_parallel_size < 1 or world_size % tensor_parallel_size:
        raise ConfigError(
            f"trainer.strategy.init_args.tensor_parallel_size={tensor_parallel_size} does not "
            f"divide the world size {world_size} (devices x num_nodes); use 1 for pure FSDP2"
        )
    return world_size // tensor_parallel_size


class FSDP2Strategy(AtomicModelParallelStrategy):
    """``ModelParallelStrategy`` whose data-parallel mesh spans every process by default.

    Saves of distributed checkpoints are atomic (``AtomicModelParallelStrategy``).

    Args:
        data_parallel_size: ``world_size`` (the default): devices x num_nodes divided by
            ``tensor_parallel_size``, decided when the processes start; or a number.
        tensor_parallel_size: processes per tensor-parallel group; 1 (pure FSDP2) is what
            the project's ``configure_model`` supports.
        save_distributed_checkpoint: a folder of per-rank shards (True) or one full file.
        process_group_backend: ``nccl`` / ``gloo``; None lets Lightning choose.
        timeout: of the collectives.
    """

    def __init__(
        self,
        data_parallel_size: int | Literal["world_size"] = WORLD_SIZE,
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.requested_data_parallel_size = data_parallel_size
        self.tensor_parallel_size = tensor_parallel_size

    def setup_environment(self) -> None:
        """Fix the data-parallel size to the world size, then Lightning's set-up (mesh, group)."""
        if self.requested_data_parallel_size == WORLD_SIZE:
            # ModelParallelStrategy takes the sizes only through __init__, before the
            # accelerator connector has set num_nodes and the devices, and reads them
            # back from this attribute in its setup_environment: no public way passes a
            # size known only now (docs/private_apis.md). Nodes x devices per node is
            # the world size before the process group exists.
            world_size = self.num_nodes * self.num_processes
            self._data_parallel_size = data_parallel_size(world_size, self.tensor_parallel_size)
        super().setup_environment()
