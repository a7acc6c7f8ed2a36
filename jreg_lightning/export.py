"""A checkpoint of this project becomes a standard Hugging Face model folder.

The folder holds ``config.json``, ``model.safetensors`` and the tokenizer files,
so ``AutoModelForCausalLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)`` load it offline, without this package.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from jreg_lightning.checkpoints import load_full_state_dict, read_checkpoint_meta
from jreg_lightning.data.tokenizer import KNOWN_EOS_TOKENS
from jreg_lightning.init import canonical_name
from jreg_lightning.model_config import LlamaModelConfig, build_llama

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_hyperparameters(checkpoint: str | Path) -> dict:
    """The module's hyperparameters (``llama``, ``jreg``, ``optim`` plain dicts) of a checkpoint.

    Args:
        checkpoint: a single-file Lightning ``.ckpt`` or a distributed-checkpoint
            folder (its ``meta.pt`` holds everything but the tensors).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist; pass a .ckpt file or folder")
    hparams = read_checkpoint_meta(path, field="checkpoint").get("hyper_parameters")
    if not hparams or "llama" not in hparams:
        raise ValueError(
            f"checkpoint: {checkpoint} has no 'llama' hyperparameters; it was not saved by "
            "JregLightningModule (export an HF folder from a checkpoint of cli.py fit)"
        )
    return hparams


def hf_state_dict(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``LlamaForCausalLM`` keys of a module state dict.

    Keeps the ``model.`` entries (the module's HF model), drops that prefix and
    the path segments that compile and activation-checkpoint wrappers add;
    metric and regularizer state is left out.
    """
    result = {}
    for key, value in module_state.items():
        if key.startswith("model."):
            result[canonical_name(key[len("model.") :])] = value
    if not result:
        raise ValueError(
            "checkpoint: no 'model.*' weights found; it was not saved by JregLightningModule"
        )
    return result


def load_checkpoint_model(checkpoint: str | Path) -> LlamaForCausalLM:
    """Rebuild the trained ``LlamaForCausalLM`` (float32, CPU, eval mode) from a checkpoint.

    Args:
        checkpoint: a single-file Lightning ``.ckpt`` or an FSDP2
            distributed-checkpoint folder of ``cli.py fit``.
    """
    path = Path(checkpoint)
    llama = LlamaModelConfig(**read_hyperparameters(path)["llama"])
    weights = hf_state_dict(load_full_state_dict(path))
    head, embedding = weights.get("lm_head.weight"), weights.get("model.embed_tokens.weight")
    if llama.tie_word_embeddings and head is not None and not torch.equal(head, embedding):
        # The run was configured tied but trained two tensors (e.g. a meta-device
        # build whose materialisation broke the sharing): keep what was trained.
        print(
            f"checkpoint: {path} has tie_word_embeddings=true but a separate LM head; "
            "loading it untied so the logits stay those of the trained model"
        )
        llama = replace(llama, tie_word_embeddings=False)
    with torch.device("meta"):  # no random init of weights that are overwritten anyway
        model = build_llama(llama)
    expected = set(model.state_dict())
    if llama.tie_word_embeddings:
        # One tensor under two names: a checkpoint may hold either or both.
        weights.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint: {path} does not match its own llama config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved by this project?"
        )
    model.load_state_dict(
        {k: v.to(torch.float32) for k, v in weights.items()},
        strict=not llama.tie_word_embeddings,
        assign=True,
    )
    model.tie_weights()
    # The rotary inv_freq buffer is computed, not saved: build that module for real.
    with torch.device("cpu"):
        model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
    return model.eval()


def tokenizer_from_meta(data_dir: str | Path) -> tuple[Path, int | None]:
    """The tokenizer path and EOS id recorded in ``data_dir/meta.json`` by ``cli.py prepare``."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"data_dir: {meta_path} not found; pass --tokenizer PATH or the data folder "
            "written by cli.py prepare"
        )
    meta = json.loads(meta_path.read_text())
    recorded = meta.get("tokenizer")
    if not recorded:
        raise ValueError(f"data_dir: {meta_path} records no tokenizer; pass --tokenizer PATH")
    # prepare records the copy it keeps beside the shards, relative to the data folder.
    for candidate in (meta_path.parent / recorded, Path(recorded)):
        if candidate.exists():
            return candidate, meta.get("eos_id")
    raise FileNotFoundError(
        f"data_dir: the tokenizer {recorded} recorded in {meta_path} does not exist; "
        "pass --tokenizer PATH"
    )


def load_tokenizer(
    tokenizer: str | Path, eos_token: str | None = None, eos_id: int | None = None
) -> PreTrainedTokenizerBase:
    """A fast HF tokenizer from a ``tokenizer.json`` file or a local tokenizer folder.

    A bare ``tokenizer.json`` (the ``tokenizers`` library's format) is wrapped
    as a ``PreTrainedTokenizerFast`` whose end-of-text token is ``eos_token``,
    else the token of ``eos_id``, else the first of the usual names
    (``<|endoftext|>``, ``</s>``, ...) in its vocabulary.
    """
    from transformers import AutoTokenizer

    path = Path(tokenizer)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        loaded = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if eos_token is not None:
            loaded.eos_token = eos_token
        return loaded
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer: {tokenizer} is neither a tokenizer.json file nor a folder with one"
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_file=str(path))
    vocab = wrapped.get_vocab()
    if eos_token is None and eos_id is not None:
        eos_token = wrapped.convert_ids_to_tokens(int(eos_id))
    if eos_token is None:
        eos_token = next((name for name in KNOWN_EOS_TOKENS if name in vocab), None)
    if eos_token is None or eos_token not in vocab:
        raise ValueError(
            f"tokenizer: no end-of-text token in {path} (tried {eos_token or KNOWN_EOS_TOKENS}); "
            "pass --eos_token with the name of one of its special tokens"
        )
    wrapped.eos_token = eos_token
    return wrapped


def _check_vocab(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"tokenizer: {len(tokenizer)} tokens do not fit the model's vocab_size "
            f"{model.config.vocab_size}; export with the tokenizer the data was prepared with"
        )


def _portable_tokenizer_config(path: Path) -> None:
    # transformers 5 names its fast tokenizer class TokenizersBackend, which
    # transformers 4 does not know; PreTrainedTokenizerFast loads in both.
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2) + "\n")


def export(
    checkpoint: str,
    out_dir: str,
    tokenizer: str | None = None,
    data_dir: str | None = None,
    eos_token: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint of ``cli.py fit`` as a Hugging Face model folder.

    Writes ``config.json``, ``model.safetensors`` (tied embeddings stored once)
    and the tokenizer files into ``out_dir``, atomically: a temporary folder is
    renamed into place once complete, so a failed export leaves nothing behind.
    The result loads offline with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``.

    Args:
        checkpoint: a Lightning ``.ckpt`` file or an FSDP2 distributed-checkpoint folder.
        out_dir: the HF folder to write.
        tokenizer: a ``tokenizer.json`` or a local HF tokenizer folder; default:
            the tokenizer recorded in ``data_dir/meta.json``.
        data_dir: prepared data folder whose ``meta.json`` names the tokenizer.
        eos_token: end-of-text token of a bare ``tokenizer.json`` (default: found by name).
        dtype: dtype of the saved weights.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The path of the written folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"out_dir: {out} exists and is not empty; choose a new folder or pass --overwrite true"
        )
    eos_id = None
    if tokenizer is None:
        if data_dir is None:
            raise ValueError(
                "export needs a tokenizer: pass --tokenizer PATH (tokenizer.json or folder) "
                "or --data_dir DIR of prepared data whose meta.json names it"
            )
        tokenizer_path, eos_id = tokenizer_from_meta(data_dir)
        tokenizer = str(tokenizer_path)
    hf_tokenizer = load_tokenizer(tokenizer, eos_token, eos_id)
    model = load_checkpoint_model(checkpoint)
    _check_vocab(model, hf_tokenizer)
    # The special ids are the tokenizer's (LlamaConfig's default bos_token_id=1 is a
    # real token of a BPE trained here); the cache is for whoever generates next.
    for name in ("eos", "bos", "pad"):
        token_id = getattr(hf_tokenizer, f"{name}_token_id")
        setattr(model.config, f"{name}_token_id", token_id)
        setattr(model.generation_config, f"{name}_token_id", token_id)
    model.config.use_cache = True
    hf_tokenizer.model_max_length = model.config.max_position_embeddings
    model.to(_DTYPES[dtype])

    out.parent.mkdir(parents=True, exist_ok=True)
    previous = None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
        _portable_tokenizer_config(staging / "tokenizer_config.json")
        for file in staging.iterdir():
            file.chmod(0o644)
        if out.exists():  # overwrite: move the old folder aside until the new one is in place
            previous = out.with_name(f".{out.name}.replaced")
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None and not out.exists():
            previous.rename(out)
        raise
    if previous is not None:
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
    print(f"exported {checkpoint} -> {out} ({model.num_parameters():,} parameters, {dtype})")
    return out
