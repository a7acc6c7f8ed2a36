"""Load what the evaluation commands score: an exported HF folder or a project checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from jreg_lightning.checkpoints import load_checkpoint_model
from jreg_lightning.data.tokenizer import load_hf_tokenizer
from jreg_lightning.errors import ConfigError, InputNotFoundError


@dataclass
class EvalModel:
    """A causal LM ready to score, with its tokenizer when one is known.

    Attributes:
        name: label in tables (the folder or file name unless given).
        path: where it was loaded from.
        model: the ``PreTrainedModel`` in eval mode, float32, on the chosen device.
        tokenizer: its tokenizer, or None (token shards need none).
        is_hf_folder: True for a folder with ``config.json`` (what the harness loads).
    """

    name: str
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    is_hf_folder: bool

    @property
    def max_length(self) -> int:
        """Longest sequence the model takes (its ``max_position_embeddings``)."""
        return int(self.model.config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder holding a Hugging Face ``config.json``."""
    return (Path(path) / "config.json").is_file()


def load_eval_model(
    path: str | Path,
    tokenizer: str | Path | None = None,
    name: str | None = None,
    device: str = "cpu",
) -> EvalModel:
    """Load an exported HF folder or a checkpoint of ``cli.py fit`` for evaluation.

    Args:
        path: an HF model folder (``config.json`` + weights), a Lightning ``.ckpt``
            file or an FSDP2 distributed-checkpoint folder.
        tokenizer: a ``tokenizer.json`` or tokenizer folder; default: the HF
            folder's own tokenizer files (a checkpoint has none).
        name: label in tables.
        device: torch device to score on.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(
            f"model: {path} does not exist; pass an exported HF folder or a .ckpt checkpoint"
        )
    hf_folder = is_hf_folder(path)
    if hf_folder:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=torch.float32
        )
    else:
        model = load_checkpoint_model(path)
    hf_tokenizer = None
    if tokenizer is not None:
        hf_tokenizer = load_hf_tokenizer(tokenizer)
    elif hf_folder and (path / "tokenizer_config.json").is_file():
        hf_tokenizer = load_hf_tokenizer(path)
    label = name or (path.name if path.is_dir() else path.stem)
    return EvalModel(label, path, model.to(device).eval(), hf_tokenizer, hf_folder)


def require_tokenizer(model: EvalModel, what: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, or a one-line error saying how to give one."""
    if model.tokenizer is None:
        raise ConfigError(
            f"tokenizer: {what} needs a tokenizer and {model.path} has none; pass --tokenizer "
            "PATH (tokenizer.json or folder) or use an exported HF folder"
        )
    return model.tokenizer
