"""Export: a checkpoint of this project becomes an HF folder that transformers loads offline."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from jreg_lightning.checkpoints import load_checkpoint_model
from jreg_lightning.data.tokenizer import EOS_TOKEN as EOS
from jreg_lightning.module import JregLightningModule
from jreg_tools.export import export
from tests.conftest import TINY_LLAMA
from tests.exported_model import write_checkpoint, write_module_checkpoint, write_tokenizer


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, token_shards):
    return write_checkpoint(tmp_path_factory.mktemp("fit") / "last.ckpt", token_shards)


def _module_from(checkpoint) -> JregLightningModule:
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module = JregLightningModule(**content["hyper_parameters"])
    module.configure_model()
    module.load_state_dict(content["state_dict"])
    return module.eval()


def _load_hf(folder):
    return AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    ).eval()


def test_exported_logits_equal_the_lightning_module(trained_checkpoint, tokenizer_file, tmp_path):
    out = export(str(trained_checkpoint), str(tmp_path / "hf"), tokenizer=str(tokenizer_file))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    hf = _load_hf(out)
    module = _module_from(trained_checkpoint)
    tokens = torch.randint(
        0, TINY_LLAMA["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        expected, _ = module.forward_with_states(tokens)
        got = hf(input_ids=tokens).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_tied_head_is_stored_once_and_stays_tied(tied, tokenizer_file, tmp_path):
    llama = {**TINY_LLAMA, "tie_word_embeddings": tied}
    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt", llama)
    out = export(str(checkpoint), str(tmp_path / "hf"), tokenizer=str(tokenizer_file))
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert ("lm_head.weight" in set(weights.keys())) is not tied
    hf = _load_hf(out)
    assert hf.config.tie_word_embeddings is tied
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) is tied
    tokens = torch.randint(0, llama["vocab_size"], (1, 16))
    with torch.no_grad():
        expected = load_checkpoint_model(checkpoint)(input_ids=tokens).logits
        torch.testing.assert_close(hf(input_ids=tokens).logits, expected, rtol=0, atol=1e-5)


def test_untied_training_of_a_tied_config_is_kept(tokenizer_file, tmp_path):
    # A checkpoint that says tied but holds two different tensors must not lose its head.
    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt")
    content = torch.load(checkpoint, weights_only=True)
    head = content["state_dict"]["model.lm_head.weight"]
    content["state_dict"]["model.lm_head.weight"] = head.clone() + 0.5
    torch.save(content, checkpoint)
    out = export(str(checkpoint), str(tmp_path / "hf"), tokenizer=str(tokenizer_file))
    hf = _load_hf(out)
    assert not hf.config.tie_word_embeddings
    torch.testing.assert_close(hf.lm_head.weight, head + 0.5)


def test_tokenizer_round_trips_through_auto_tokenizer(tokenizer_file, tmp_path):
    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt")
    out = export(str(checkpoint), str(tmp_path / "hf"), tokenizer=str(tokenizer_file))
    loaded = AutoTokenizer.from_pretrained(out, local_files_only=True, trust_remote_code=False)
    raw = Tokenizer.from_file(str(tokenizer_file))
    text = "The dog sat on the log, and the sun set in the west."
    assert loaded.encode(text) == raw.encode(text).ids
    assert loaded.decode(loaded.encode(text)) == text
    assert loaded.eos_token == EOS
    config = _load_hf(out).config
    assert config.eos_token_id == raw.token_to_id(EOS)
    assert config.bos_token_id is None, "no BOS in this tokenizer: none in the config either"
    # A class name transformers 4 knows too, not v5's TokenizersBackend.
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert saved["model_max_length"] == TINY_LLAMA["max_position_embeddings"]


def test_tokenizer_comes_from_prepared_data_meta(tokenizer_file, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    eos_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOS)
    (data / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "eos_id": eos_id}))
    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt")
    out = export(str(checkpoint), str(tmp_path / "hf"), data_dir=str(data))
    assert AutoTokenizer.from_pretrained(out, local_files_only=True).eos_token_id == eos_id


def test_distributed_checkpoint_folder_exports_like_a_single_file(tokenizer_file, tmp_path):
    import torch.distributed.checkpoint as dcp

    single = write_module_checkpoint(tmp_path / "m.ckpt")
    content = torch.load(single, weights_only=True)
    # The layout ModelParallelStrategy writes: DCP shards of {"state_dict": ...} + meta.pt.
    folder = tmp_path / "fsdp.ckpt"
    dcp.save({"state_dict": content["state_dict"]}, checkpoint_id=str(folder))
    torch.save({"hyper_parameters": content["hyper_parameters"]}, folder / "meta.pt")
    out = export(str(folder), str(tmp_path / "hf"), tokenizer=str(tokenizer_file))
    tokens = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 16))
    with torch.no_grad():
        expected = load_checkpoint_model(single)(input_ids=tokens).logits
        torch.testing.assert_close(_load_hf(out)(input_ids=tokens).logits, expected)


def test_export_command_writes_bfloat16(tokenizer_file, tmp_path):
    from jreg_tools.cli import main

    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "hf16"
    main(["export", "--checkpoint", str(checkpoint), "--output_dir", str(out),
          "--tokenizer", str(tokenizer_file), "--dtype", "bfloat16"])  # fmt: skip
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".hf16.*")), "no staging folder is left behind"


def test_bad_inputs_fail_in_one_line_and_damage_nothing(tokenizer_file, tmp_path):
    checkpoint = write_module_checkpoint(tmp_path / "m.ckpt")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="output_dir"):
        export(str(checkpoint), str(taken), tokenizer=str(tokenizer_file))
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="--tokenizer"):
        export(str(checkpoint), str(tmp_path / "a"))
    small = write_module_checkpoint(tmp_path / "small.ckpt", {**TINY_LLAMA, "vocab_size": 64})
    with pytest.raises(ValueError, match="vocab_size"):
        export(str(small), str(tmp_path / "b"), tokenizer=str(tokenizer_file))
    not_ours = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}}, not_ours)
    with pytest.raises(ValueError, match="llama"):
        export(str(not_ours), str(tmp_path / "c"), tokenizer=str(tokenizer_file))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "d"), tokenizer=str(tokenizer_file))
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert not list(tmp_path.glob(".[abcd].*"))
