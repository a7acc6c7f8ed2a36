"""Local tokenizers: load a ``tokenizer.json`` / HF tokenizer folder, or train a byte-level BPE.

Nothing is fetched from a hub: a folder is read with ``local_files_only``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"
# Tried in order when the tokenizer does not name its EOS token itself.
KNOWN_EOS_TOKENS = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, str | None]:
    """A fast tokenizer from a ``tokenizer.json`` file or a local HF tokenizer folder.

    Returns the tokenizer and the EOS token the folder's config names (or ``None``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer: {path} does not exist; pass a tokenizer.json file or a local "
            "tokenizer folder, or leave --tokenizer out to train one on the input"
        )
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path)), None
        except Exception as error:
            raise ValueError(
                f"tokenizer: {path} is not a tokenizers JSON file ({error}); "
                "pass a tokenizer.json written by the tokenizers library"
            ) from None
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return tokenizer, _configured_eos(path)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as error:
        raise ValueError(
            f"tokenizer: {path} holds no tokenizer.json and transformers could not load it "
            f"({type(error).__name__}); pass a folder saved with save_pretrained "
            "or a tokenizer.json"
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer: {path} is a slow (Python) tokenizer; convert it to a fast one "
            "(tokenizer.json) with transformers and pass that"
        )
    return backend, hf.eos_token


def _configured_eos(folder: Path) -> str | None:
    import json

    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("eos_token")
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def eos_token_id(tokenizer: Tokenizer, eos_token: str | None) -> int:
    """The id of ``eos_token``, or of the first known EOS token in the vocabulary."""
    candidates = (eos_token,) if eos_token else KNOWN_EOS_TOKENS
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError(
        f"eos_token: none of {list(candidates)} is in the tokenizer's vocabulary; "
        "pass --eos_token with the token that ends a document"
    )


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``; ``<|endoftext|>`` is id 0."""
    if vocab_size < 257:
        raise ValueError(
            f"vocab_size: {vocab_size} is below 257 (256 bytes + EOS); pass a larger --vocab_size"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
