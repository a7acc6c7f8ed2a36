"""A released model as the starting point: ``model.init_from: <local HF Llama folder>``.

The folder is what ``save_pretrained`` writes: ``config.json``, the weights as
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) and,
usually, the tokenizer. Nothing is fetched and no code runs: the config is read
with ``local_files_only=True`` and ``trust_remote_code=False``, the weights only
from safetensors (a ``pytorch_model.bin`` is a pickle and is refused).

- The shape (``model.llama``) is read from ``config.json``
  (:func:`pretrained_llama_config`); a ``model.llama`` given as well must agree
  with it field by field.
- The weights are loaded into the model that ``configure_model`` has already
  built on the meta device, wrapped and sharded (:func:`load_pretrained_llama`).
- The data must be prepared with the folder's tokenizer
  (``prepare --tokenizer <folder>``); :func:`check_data_tokenizer` compares them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from jreg_lightning.errors import ConfigError
from jreg_lightning.init import allocate_llama, canonical_name, copy_full_into, init_rotary_buffers
from jreg_lightning.model_config import LlamaModelConfig

FIELD = "model.init_from"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Features of HF's Llama that ``LlamaModelConfig`` does not build: (config.json key, plain value).
PLAIN_LLAMA = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{FIELD}: {folder} is not a local Hugging Face model folder (no config.json); "
            "pass the folder save_pretrained wrote (config.json + model.safetensors)"
        )
    return folder


def pretrained_llama_config(
    path: str | Path, given: LlamaModelConfig | None = None
) -> LlamaModelConfig:
    """The ``LlamaModelConfig`` of the folder's ``config.json``.

    Args:
        path: a local HF ``LlamaForCausalLM`` folder.
        given: ``model.llama`` if the config gave one too; it must equal the folder's.

    Raises:
        ConfigError: no ``config.json``, not a Llama, a Llama feature this project
            does not build (rope scaling, biases, another activation or head width),
            or a ``given`` field that differs from the folder.
    """
    from transformers import AutoConfig

    folder = _folder(path)
    try:
        hf = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(f"{FIELD}: {folder}/config.json is not readable ({detail})") from None
    if hf.model_type != "llama":
        raise ConfigError(
            f"{FIELD}: {folder} holds a {hf.model_type!r} model; this project continues "
            "pretraining Llama models (model_type 'llama') only"
        )
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"{FIELD}: {folder}/config.json uses rope_type {rope['rope_type']!r} (rope "
            "scaling), which this project's Llama does not build; use a model with plain RoPE"
        )
    for key, plain in PLAIN_LLAMA.items():
        if getattr(hf, key, plain) != plain:
            raise ConfigError(
                f"{FIELD}: {folder}/config.json has {key}={getattr(hf, key)!r}; this project's "
                f"Llama builds {key}={plain!r} only"
            )
    head_dim = getattr(hf, "head_dim", None)
    if head_dim is not None and head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ConfigError(
            f"{FIELD}: {folder}/config.json has head_dim={head_dim} but hidden_size / "
            f"num_attention_heads = {hf.hidden_size // hf.num_attention_heads}; this project's "
            "Llama builds head_dim = hidden_size / num_attention_heads only"
        )
    config = LlamaModelConfig.from_hf(hf)
    if given is not None:
        for name, value in vars(config).items():
            if getattr(given, name) != value:
                raise ConfigError(
                    f"model.llama.{name}={getattr(given, name)!r} differs from {value!r} in "
                    f"{folder}/config.json (model.init_from); set model.llama: null (the "
                    "shape is then read from the folder) or give the folder's value"
                )
    return config


def safetensors_files(path: str | Path) -> dict[str, Path]:
    """Which safetensors file of the folder holds each weight: ``{hf key: file}``.

    Reads ``model.safetensors`` (its header only) or the shard map of
    ``model.safetensors.index.json``.
    """
    from safetensors import safe_open

    folder = _folder(path)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = {key: folder / name for key, name in weight_map.items()}
        for file in set(files.values()):
            if not file.is_file():
                raise ConfigError(
                    f"{FIELD}: {file.name}, listed in {index}, is missing; copy the whole folder"
                )
        return files
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        with safe_open(single, framework="pt", device="cpu") as handle:
            keys = handle.keys()  # a safe_open handle is not iterable
        return dict.fromkeys(keys, single)
    pickled = [p.name for p in folder.glob("*.bin")]
    hint = (
        f" ({', '.join(sorted(pickled))} is a pickle, which is never loaded: re-save it with "
        "save_pretrained(folder, safe_serialization=True))"
        if pickled
        else ""
    )
    raise ConfigError(
        f"{FIELD}: {folder} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}{hint}; "
        "pass a folder with safetensors weights"
    )


@torch.no_grad()
def load_pretrained_llama(
    model: nn.Module, device: torch.device | str, path: str | Path
) -> nn.Module:
    """Allocate a meta-device (possibly sharded) Llama on ``device`` and fill it from ``path``.

    How the weights are distributed under FSDP2: every rank reads the folder's
    safetensors itself, one tensor at a time (memory-mapped), and keeps only its
    own shard of it (``distribute_tensor`` with ``src_data_rank=None``, as the
    seeded init does). So no rank ever holds more than its shard plus one full
    tensor, and no collective runs. The alternative,
    ``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)``,
    needs the whole state dict on rank 0. The cost: every node must see the
    folder (as it must see the data). Rotary buffers are recomputed, not read.

    Weights are cast to the model's dtype (float32: a bfloat16 release trains
    with float32 master weights). A tied LM head (``tie_word_embeddings``) is the
    embedding, so a stored ``lm_head.weight`` is ignored then; untied, it must be
    in the folder.

    Args:
        model: the ``LlamaForCausalLM`` built on meta from :func:`pretrained_llama_config`
            and wrapped / sharded by ``parallelize_llama``.
        device: where its parameters and buffers are allocated.
        path: the local HF folder.

    Returns:
        ``model``, loaded in place.

    Raises:
        ConfigError: a weight missing, unexpected or of another shape.
    """
    from safetensors import safe_open

    files = safetensors_files(path)
    params = {canonical_name(name): p for name, p in model.named_parameters()}
    stored = {key for key in files if not key.endswith("rotary_emb.inv_freq")}
    if model.lm_head.weight is model.model.embed_tokens.weight:
        stored.discard("lm_head.weight")
    missing, unexpected = sorted(set(params) - stored), sorted(stored - set(params))
    if missing or unexpected:
        raise ConfigError(
            f"{FIELD}: the weights in {path} do not match its config.json (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}); pass a folder saved from "
            "LlamaForCausalLM"
        )
    allocate_llama(model, device)
    # ``to_empty`` made new tensors: look the parameters up again.
    params = {canonical_name(name): p for name, p in model.named_parameters()}
    by_file: dict[Path, list[str]] = defaultdict(list)
    for key in sorted(params):
        by_file[files[key]].append(key)
    for file, keys in by_file.items():
        with safe_open(file, framework="pt", device="cpu") as handle:
            for key in keys:
                full = handle.get_tensor(key)
                param = params[key]
                if tuple(full.shape) != tuple(param.shape):
                    raise ConfigError(
                        f"{FIELD}: {key} in {file} has shape {tuple(full.shape)}, but "
                        f"config.json gives {tuple(param.shape)}; the folder is inconsistent"
                    )
                copy_full_into(param, full.to(param.dtype))
                del full
    return init_rotary_buffers(model)


def check_data_tokenizer(path: str | Path, data_dir: str | Path) -> None:
    """The data in ``data_dir`` must have been prepared with the folder's tokenizer.

    Compares the vocabulary of the tokenizer copy ``prepare`` keeps beside the
    shards (named in ``meta.json``) with the folder's, both read by
    ``jreg_lightning.data.tokenizer.load_tokenizer``. Nothing is checked when the
    data has no ``meta.json`` or the folder no tokenizer.

    Raises:
        ConfigError: the two vocabularies differ.
    """
    import tempfile

    from jreg_lightning.data.shard_meta import read_meta
    from jreg_lightning.data.storage import as_location, join, read_text
    from jreg_lightning.data.tokenizer import load_tokenizer

    folder, data_dir = Path(path), as_location(data_dir)
    recorded = (read_meta(data_dir) or {}).get("tokenizer")
    tokenizer_files = ("tokenizer.json", "tokenizer.model")
    folder_has_one = any((folder / name).is_file() for name in tokenizer_files)
    text = read_text(join(data_dir, recorded), "data.data_dir") if recorded else None
    if text is None or not folder_has_one:
        return
    with tempfile.TemporaryDirectory() as scratch:
        data_tokenizer = Path(scratch, "tokenizer.json")
        data_tokenizer.write_text(text)
        data_vocab = load_tokenizer(data_tokenizer)[0].get_vocab()
    if data_vocab != load_tokenizer(folder)[0].get_vocab():
        raise ConfigError(
            f"data.data_dir: {data_dir} was prepared with another tokenizer than {folder} "
            f"(model.init_from); prepare it again with `cli.py prepare --tokenizer {folder}`"
        )
