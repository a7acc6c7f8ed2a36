"""load_full_state_dict and consolidate on both checkpoint layouts (single process)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp

from jreg_lightning.checkpoints import load_full_state_dict
from jreg_tools.commands import run_extra_command
from jreg_tools.consolidate import consolidate


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.model.embed_tokens.weight": torch.randn(8, 4, generator=generator),
        "model.model.layers.0._orig_mod.mlp.up_proj.weight": torch.randn(6, 4, generator=generator),
    }


def _write_sharded(folder, weights) -> None:
    """The layout ModelParallelStrategy writes: DCP with state_dict/optimizer_0, plus meta.pt."""
    optimizer = {"state": {k: {"exp_avg": torch.zeros_like(v)} for k, v in weights.items()}}
    dcp.save({"state_dict": dict(weights), "optimizer_0": optimizer}, checkpoint_id=str(folder))
    torch.save(
        {"global_step": 7, "hyper_parameters": {"llama": {"num_layers": 1}}}, folder / "meta.pt"
    )


def test_single_file_and_sharded_folder_give_the_same_weights(tmp_path):
    weights = _weights()
    single = tmp_path / "single.ckpt"
    torch.save({"state_dict": weights, "global_step": 7}, single)
    sharded = tmp_path / "sharded.ckpt"
    _write_sharded(sharded, weights)

    from_file = load_full_state_dict(single)
    from_folder = load_full_state_dict(sharded)
    expected = {k.replace("_orig_mod.", ""): v for k, v in weights.items()}
    assert from_file.keys() == from_folder.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(from_file[key], value)
        assert torch.equal(from_folder[key], value)


def test_consolidate_writes_one_loadable_file_and_keeps_existing_output(tmp_path):
    weights = _weights()
    sharded = tmp_path / "last.ckpt"
    _write_sharded(sharded, weights)
    out = tmp_path / "full.ckpt"
    run_extra_command("consolidate", ["--checkpoint", str(sharded), "--output", str(out)])

    loaded = torch.load(out, weights_only=True)
    assert loaded["global_step"] == 7
    assert loaded["hyper_parameters"] == {"llama": {"num_layers": 1}}
    assert "optimizer_0" not in loaded and "optimizer_states" not in loaded
    assert torch.equal(
        loaded["state_dict"]["model.model.layers.0.mlp.up_proj.weight"],
        weights["model.model.layers.0._orig_mod.mlp.up_proj.weight"],
    )
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        consolidate(sharded, out)
    assert out.read_bytes() == before


def test_bad_paths_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_full_state_dict(tmp_path / "missing.ckpt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"\.metadata"):
        load_full_state_dict(tmp_path / "plain")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="state_dict"):
        load_full_state_dict(tmp_path / "other.pt")
