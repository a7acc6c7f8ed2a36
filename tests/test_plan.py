"""``cli.py plan``: parameter counts, world size, memory estimates against measured bytes."""

from __future__ import annotations

import pytest
import torch

from jreg_lightning.errors import ConfigError
from jreg_lightning.model_config import LlamaModelConfig, build_llama
from jreg_lightning.module import JregLightningModule
from jreg_lightning.parallelize import ParallelConfig
from jreg_tools.cli import main
from jreg_tools.plan import activation_bytes, count_parameters, make_plan, plan

SMALL = LlamaModelConfig(
    vocab_size=1001,
    hidden_size=128,
    intermediate_size=352,
    num_layers=3,
    num_heads=2,
    num_kv_heads=1,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_is_the_real_models(tied):
    llama = LlamaModelConfig(**{**vars(SMALL), "tie_word_embeddings": tied})
    model = build_llama(llama, seed=0)
    real = sum(p.numel() for p in model.parameters())  # a tied weight once
    counts = count_parameters(llama)
    assert counts.total == real == llama.num_parameters()
    assert counts.per_rank == real
    assert counts.block == sum(p.numel() for p in model.model.layers[0].parameters())


def test_per_rank_count_pads_each_tensor_as_fsdp2_shards_it():
    # 1001 rows over 3 ranks: 334 rows on rank 0 (FSDP2 pads the tail), not 333.67.
    counts = count_parameters(SMALL, world_size=3)
    with torch.device("meta"):
        model = build_llama(SMALL)
    expected = sum(-(-p.shape[0] // 3) * p[0].numel() for p in model.parameters())
    assert counts.per_rank == expected > counts.total / 3


def test_headline_config_plan_counts_the_configs_model(capsys):
    result = plan("configs/llama_1b_jreg.yaml", trainer={"num_nodes": 4}, devices_per_node=8)
    llama = LlamaModelConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    assert result["parameters"] == llama.num_parameters()
    assert result["world_size"] == 32
    # batch 8 x accumulation 1 x 32 GPUs x 2048 tokens
    assert result["tokens_per_step"] == 8 * 1 * 32 * 2048
    assert result["fits"]
    out = capsys.readouterr().out
    assert "world size        32 = 4 node(s) x 8 GPUs" in out and "fits" in out


@pytest.mark.parametrize(("nodes", "devices"), [(1, 8), (2, 4), (4, 8), (3, 1)])
def test_world_size_follows_nodes_times_devices(nodes, devices):
    result = make_plan(SMALL, ParallelConfig(), num_nodes=nodes, devices_per_node=devices)
    assert result.world_size == nodes * devices
    assert result.parameters_per_rank == count_parameters(SMALL, nodes * devices).per_rank
    assert result.tokens_per_step == nodes * devices * result.seq_len


def test_num_nodes_defaults_to_the_configs():
    assert plan("configs/llama_300m_jreg.yaml", devices_per_node=4)["world_size"] == 4


def test_command_line_takes_fit_overrides(capsys):
    # The command: the same --trainer.* / --model.* / --data.* flags as fit.
    main(["plan", "--config", "configs/llama_1b_jreg.yaml", "--trainer.num_nodes", "4"])
    assert "world size        32 = 4 node(s) x 8 GPUs" in capsys.readouterr().out
    flags = ["--trainer.devices", "2", "--data.batch_size", "2"]
    flags += ["--model.parallel.activation_checkpointing", "false"]
    main(["plan", "--config", "configs/llama_1b_jreg.yaml", *flags])
    out = capsys.readouterr().out
    assert "world size        2 = 1 node(s) x 2 GPUs" in out
    assert "8,192 = 2 x 1 x 2 x 2048" in out and "(checkpointing off)" in out


def test_flags_a_config_that_does_not_fit(capsys):
    result = plan(
        "configs/llama_1200m_jreg.yaml", activation_checkpointing=False, gpu_memory_gib=40
    )
    assert not result["fits"]
    assert result["peak_bytes"] > 40 * 2**30
    assert "does NOT fit" in capsys.readouterr().out
    # Activation checkpointing is what brings it under 40 GiB.
    assert plan("configs/llama_1200m_jreg.yaml", activation_checkpointing=True, gpu_memory_gib=40)[
        "fits"
    ]


def test_bad_input_is_one_line_naming_the_field(capsys):
    with pytest.raises(ConfigError, match="mfu"):
        make_plan(SMALL, ParallelConfig(), mfu=0)
    with pytest.raises(SystemExit):
        main(["plan", "--config", "configs/nope.yaml"])
    assert "config configs/nope.yaml not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--config", "configs/llama_1b_jreg.yaml", "--trainer.num_nodes", "four"])
    assert "trainer.num_nodes" in capsys.readouterr().err


def _saved_activation_bytes(llama: LlamaModelConfig, batch: int, seq: int, ckpt: bool) -> int:
    """Bytes autograd keeps for backward after one training forward (parameters excluded)."""
    torch.manual_seed(0)
    module = JregLightningModule(
        llama=llama, jreg={"lam": 1.0}, parallel=ParallelConfig(activation_checkpointing=ckpt)
    )
    module.configure_model()
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    tokens = torch.randint(0, llama.vocab_size, (batch, seq + 1))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        module.training_step(tokens, 0)
    return sum(storages.values())


@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_estimate_matches_the_saved_tensors(ckpt):
    batch, seq = 2, 32
    measured = _saved_activation_bytes(SMALL, batch, seq, ckpt)
    estimate = activation_bytes(SMALL, batch * seq, dtype_bytes=4, checkpointing=ckpt)
    kept = estimate["blocks"] + estimate["outside"]  # the transients are not saved tensors
    assert abs(kept / measured - 1) < 0.02, (kept, measured)
