"""A checkpoint of this project becomes a standard Hugging Face model folder.

The folder holds ``config.json``, ``model.safetensors`` and the tokenizer files,
so ``AutoModelForCausalLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)`` load it offline, without this package.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from jreg_lightning.checkpoints import load_checkpoint_model
from jreg_lightning.data.shard_meta import META_FILE, read_meta
from jreg_lightning.data.storage import require_local
from jreg_lightning.data.tokenizer import load_hf_tokenizer
from jreg_lightning.errors import ConfigError, InputNotFoundError, OutputExistsError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tokenizer_from_meta(data_dir: str | Path) -> tuple[Path, int | None]:
    """The tokenizer path and EOS id recorded in ``data_dir/meta.json`` by ``cli.py prepare``."""
    data_dir = require_local(data_dir, "data_dir")
    meta_path = data_dir / META_FILE
    meta = read_meta(data_dir)
    if meta is None:
        raise InputNotFoundError(
            f"data_dir: {meta_path} not found; pass --tokenizer PATH or the data folder "
            "written by cli.py prepare"
        )
    recorded = meta.get("tokenizer")
    if not recorded:
        raise ConfigError(f"data_dir: {meta_path} records no tokenizer; pass --tokenizer PATH")
    # prepare records the copy it keeps beside the shards, relative to the data folder.
    for candidate in (meta_path.parent / recorded, Path(recorded)):
        if candidate.exists():
            return candidate, meta.get("eos_id")
    raise InputNotFoundError(
        f"data_dir: the tokenizer {recorded} recorded in {meta_path} does not exist; "
        "pass --tokenizer PATH"
    )


def _check_vocab(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
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
    output_dir: str,
    tokenizer: str | None = None,
    data_dir: str | None = None,
    eos_token: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint of ``cli.py fit`` as a Hugging Face model folder.

    Writes ``config.json``, ``model.safetensors`` (tied embeddings stored once)
    and the tokenizer files into ``output_dir``, atomically: a temporary folder is
    renamed into place once complete, so a failed export leaves nothing behind.
    The result loads offline with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``.

    Args:
        checkpoint: a Lightning ``.ckpt`` file or an FSDP2 distributed-checkpoint folder.
        output_dir: the HF folder to write.
        tokenizer: a ``tokenizer.json`` or a local HF tokenizer folder; default:
            the tokenizer recorded in ``data_dir/meta.json``.
        data_dir: prepared data folder whose ``meta.json`` names the tokenizer.
        eos_token: end-of-text token of a bare ``tokenizer.json`` (default: found by name).
        dtype: dtype of the saved weights.
        overwrite: replace an existing non-empty ``output_dir``.

    Returns:
        The path of the written folder.
    """
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(
            f"output_dir: {out} exists and is not empty; choose a new folder "
            "or pass --overwrite true"
        )
    eos_id = None
    if tokenizer is None:
        if data_dir is None:
            raise ConfigError(
                "export needs a tokenizer: pass --tokenizer PATH (tokenizer.json or folder) "
                "or --data_dir DIR of prepared data whose meta.json names it"
            )
        tokenizer_path, eos_id = tokenizer_from_meta(data_dir)
        tokenizer = str(tokenizer_path)
    hf_tokenizer = load_hf_tokenizer(tokenizer, eos_token, eos_id)
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
