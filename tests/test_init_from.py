"""``model.init_from``: continue pretraining a local HF Llama folder, one process and FSDP2."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from jreg_lightning.errors import ConfigError
from jreg_lightning.module import JregLightningModule
from jreg_lightning.pretrained import check_data_tokenizer
from jreg_tools.export import export
from tests.cli_run import run_cli, tiny_override
from tests.exported_model import write_tokenizer
from tests.tiny_fit import quiet_trainer

# The shape of the released model in these tests; vocabulary and positions fit the
# ``token_shards`` fixture (512 tokens, seq_len 32).
TINY_HF = {
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}


def write_hf_llama(folder: Path, tied: bool = False, sharded: bool = False, **config) -> Path:
    """Save a tiny ``LlamaForCausalLM`` and a tokenizer with ``save_pretrained`` into ``folder``.

    The weights are drawn wider than HF's init (norms at one), so that the model's
    loss is far from ln(vocab) and a load that silently kept a random init would show.
    """
    torch.manual_seed(7)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_HF, **config}, tie_word_embeddings=tied))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:  # the LM head (or the embedding it is tied to) widest: confident logits
                param.normal_(
                    0.0, 1.0 if name.endswith(("lm_head.weight", "embed_tokens.weight")) else 0.2
                )
    model.save_pretrained(folder, max_shard_size="100KB" if sharded else "1GB")
    write_tokenizer(folder)
    return folder


def hf_model(folder: Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    ).eval()


def hf_loss(folder: Path, batch: torch.Tensor) -> float:
    """HF's own loss on a ``(batch, seq_len + 1)`` block: predict tokens 1.. from 0..t."""
    inputs = batch[:, :-1].long()
    with torch.no_grad():
        logits = hf_model(folder)(input_ids=inputs).logits
    targets = batch[:, 1:].long()
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))


class FirstBatchRecorder(L.Callback):
    """Saves each rank's first training batch and its logged ``train/ce`` to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != 1:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"batch": batch.cpu(), "ce": float(trainer.callback_metrics["train/ce"])}
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("released")
    return {
        "untied_sharded": write_hf_llama(root / "untied_sharded", tied=False, sharded=True),
        "tied": write_hf_llama(root / "tied", tied=True),
    }


@pytest.mark.parametrize("name", ["untied_sharded", "tied"])
def test_configure_model_loads_the_folder_exactly(name, folders):
    folder = folders[name]
    if name == "untied_sharded":
        assert (folder / "model.safetensors.index.json").is_file()
    module = JregLightningModule(init_from=str(folder))
    assert module.llama_config.hidden_size == 32 and module.llama_config.num_kv_heads == 2
    assert module.llama_config.tie_word_embeddings == (name == "tied")
    module.configure_model()
    expected = hf_model(folder).state_dict()
    got = {key.removeprefix("model."): value for key, value in module.state_dict().items()}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    tied = module.model.lm_head.weight is module.model.model.embed_tokens.weight
    assert tied == (name == "tied")


@pytest.mark.parametrize("name", ["untied_sharded", "tied"])
def test_first_step_loss_is_the_hf_loss_and_the_export_loads_back(
    name, folders, token_shards, tmp_path
):
    from jreg_lightning.data.datamodule import TokenShardDataModule

    folder = folders[name]
    L.seed_everything(0, verbose=False)
    module = JregLightningModule(
        init_from=str(folder), jreg={"lam": 0.5}, optim={"lr": 1e-3, "warmup_steps": 1}
    )
    trainer = quiet_trainer(
        devices=1,
        max_steps=2,
        limit_val_batches=0,
        log_every_n_steps=1,
        enable_checkpointing=False,
        callbacks=[FirstBatchRecorder(str(tmp_path / "first"))],
    )
    data = TokenShardDataModule(data_dir=token_shards, seq_len=32, batch_size=4)
    trainer.fit(module, datamodule=data)
    first = torch.load(tmp_path / "first" / "rank0.pt", weights_only=True)
    assert first["ce"] == pytest.approx(hf_loss(folder, first["batch"]), abs=1e-5)
    assert abs(first["ce"] - torch.log(torch.tensor(512.0)).item()) > 0.5  # not a random init

    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["init_from"] == str(folder) and hparams["llama"]["hidden_size"] == 32
    out = export(str(checkpoint), str(tmp_path / "hf"), tokenizer=str(folder))
    exported = hf_model(out)
    assert exported.config.tie_word_embeddings == (name == "tied")
    trained = {k.removeprefix("model."): v for k, v in module.state_dict().items()}
    released = hf_model(folder).state_dict()
    changed = False
    for key, value in exported.state_dict().items():
        assert torch.equal(value, trained[key]), key
        changed |= not torch.equal(value, released[key])
    assert changed  # two optimizer steps moved the weights


def test_shape_comes_from_the_folder_and_a_mismatch_is_one_line(folders):
    folder = folders["tied"]
    derived = JregLightningModule(init_from=str(folder)).llama_config
    same = JregLightningModule(llama=vars(derived), init_from=str(folder))
    assert same.llama_config == derived
    with pytest.raises(ConfigError, match=r"^model\.llama\.hidden_size=64 differs from 32 in"):
        JregLightningModule(llama={**vars(derived), "hidden_size": 64}, init_from=str(folder))


def test_unusable_folders_are_one_line_errors(folders, tmp_path):
    with pytest.raises(
        ConfigError, match=r"^model\.init_from: .*nowhere is not a local .*no config\.json"
    ):
        JregLightningModule(init_from=str(tmp_path / "nowhere"))

    pickled = tmp_path / "pickled"
    LlamaConfig(**TINY_HF).save_pretrained(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    module = JregLightningModule(init_from=str(pickled))
    with pytest.raises(ConfigError, match=r"pytorch_model\.bin is a pickle, which is never loaded"):
        module.configure_model()

    scaled = tmp_path / "scaled"
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    LlamaConfig(**{**TINY_HF, "rope_parameters": rope}).save_pretrained(scaled)
    with pytest.raises(ConfigError, match=r"rope_type 'linear'"):
        JregLightningModule(init_from=str(scaled))

    biased = tmp_path / "biased"
    LlamaConfig(**TINY_HF, attention_bias=True).save_pretrained(biased)
    with pytest.raises(ConfigError, match=r"attention_bias=True"):
        JregLightningModule(init_from=str(biased))

    # config.json of an untied model beside the weights of a tied one: lm_head is missing.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "model.safetensors").symlink_to(folders["tied"] / "model.safetensors")
    LlamaConfig(**TINY_HF, tie_word_embeddings=False).save_pretrained(mixed)
    module = JregLightningModule(init_from=str(mixed))
    with pytest.raises(ConfigError, match=r"missing \['lm_head\.weight'\]"):
        module.configure_model()


def test_data_prepared_with_another_tokenizer_is_refused(folders, tmp_path):
    folder = folders["tied"]
    data = tmp_path / "data"
    write_tokenizer(data, vocab_size=280)
    (data / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json"}))
    with pytest.raises(ConfigError, match=r"^data\.data_dir: .* another tokenizer"):
        check_data_tokenizer(folder, data)
    (data / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    check_data_tokenizer(folder, data)


@pytest.mark.slow
def test_two_process_fsdp2_starts_from_the_folder(folders, token_shards, tmp_path):
    """FSDP2 over 2 gloo processes: each rank's first loss is HF's loss on its batch."""
    folder = folders["untied_sharded"]
    run_dir = tmp_path / "fsdp"
    recorder = {
        "class_path": "tests.test_init_from.FirstBatchRecorder",
        "init_args": {"out_dir": str(run_dir / "first")},
    }
    override = tiny_override(run_dir, token_shards, max_steps=2, limit_val_batches=1)
    config = yaml.safe_load(override.read_text())
    config["trainer"]["callbacks"].append(recorder)
    # tiny_jreg.yaml gives model.llama; null lets the folder's config.json give the shape.
    config["model"] = {"llama": None, "init_from": str(folder)}
    override.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", "configs/tiny_jreg.yaml"]
    args += ["--config", "configs/strategy/fsdp_cpu.yaml", "--config", str(override)]
    result = run_cli(*args, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    batches = []
    for rank in (0, 1):
        first = torch.load(run_dir / "first" / f"rank{rank}.pt", weights_only=True)
        assert first["ce"] == pytest.approx(hf_loss(folder, first["batch"]), abs=1e-5)
        batches.append(first["batch"])
    assert not torch.equal(batches[0], batches[1])  # each rank checked on its own data

    out = export(str(run_dir / "checkpoints" / "last.ckpt"), str(tmp_path / "hf"), str(folder))
    assert hf_model(out).config.hidden_size == 32
