"""The project's one tokenizer loader, and a byte-level BPE trainer.

Every command that encodes text (``prepare``, ``analyze``, ``perplexity``,
``evaluate``, ``export``) loads its tokenizer here, so every one of them sees
the same ids for the same text. Accepted, all offline (``local_files_only``,
no remote code): a ``tokenizer.json`` (the ``tokenizers`` library's format),
a fast HF tokenizer folder, or a sentencepiece folder (``tokenizer.model``,
Llama-2 style; converted to a fast tokenizer, which needs ``sentencepiece``).

Released ``tokenizer.json`` files often switch truncation (e.g. ``max_length
128``) and padding on: kept, they would cut every document silently. They are
always switched off here. Special tokens that a post-processor adds
(``[CLS]``/``[SEP]``, BOS) are left out of every encoding unless the caller
asks for them (``add_special_tokens=True``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jreg_lightning.errors import ConfigError, InputNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
# Tried in order when the tokenizer does not name its EOS token itself.
KNOWN_EOS_TOKENS = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"


def _without_truncation_or_padding(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer with truncation and padding switched off (see the module doc)."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _from_json_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:
        raise ConfigError(
            f"tokenizer: {path} is not a tokenizers JSON file ({error}); "
            "pass a tokenizer.json written by the tokenizers library"
        ) from None


def _converted_folder(path: Path) -> Tokenizer:
    """A folder without ``tokenizer.json`` (sentencepiece), converted by transformers."""
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as error:
        hint = ""
        if (path / "tokenizer.model").is_file():
            hint = " (a sentencepiece folder needs: pip install sentencepiece protobuf)"
        raise ConfigError(
            f"tokenizer: {path} holds no tokenizer.json and transformers could not load it "
            f"({type(error).__name__}){hint}; pass a folder saved with save_pretrained "
            "or a tokenizer.json"
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"tokenizer: {path} is a slow (Python) tokenizer; convert it to a fast one "
            "(tokenizer.json) with transformers and pass that"
        )
    return backend


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, str | None]:
    """The fast tokenizer of a ``tokenizer.json`` or a local tokenizer folder.

    Truncation and padding are off. Returns the tokenizer and the EOS token the
    folder's config names (``None`` when it names none, or for a bare file).
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(
            f"tokenizer: {path} does not exist; pass a tokenizer.json file or a local "
            "tokenizer folder (tokenizer.json or sentencepiece tokenizer.model)"
        )
    if path.is_file():
        return _without_truncation_or_padding(_from_json_file(path)), None
    if (path / TOKENIZER_FILE).is_file():
        tokenizer = _from_json_file(path / TOKENIZER_FILE)
    else:
        tokenizer = _converted_folder(path)
    return _without_truncation_or_padding(tokenizer), configured_eos(path)


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], add_special_tokens: bool = False
) -> list[list[int]]:
    """Token ids of each text: nothing cut, nothing padded, no special tokens unless asked."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    for encoding in encodings:
        if encoding.overflowing:
            raise RuntimeError(
                "tokenizer: an encoding was truncated although truncation is off; "
                "this is a bug, report it with the tokenizer file"
            )
    return [encoding.ids for encoding in encodings]


def load_encoder(path: str | Path, add_special_tokens: bool = False):
    """A ``text -> list[int]`` function over :func:`load_tokenizer`'s tokenizer."""
    tokenizer, _ = load_tokenizer(path)
    return lambda text: encode_texts(tokenizer, [text], add_special_tokens)[0]


def load_hf_tokenizer(
    path: str | Path, eos_token: str | None = None, eos_id: int | None = None
) -> PreTrainedTokenizerFast:
    """The same tokenizer wrapped as a ``PreTrainedTokenizerFast`` (for export and evaluation).

    Its end-of-text token is ``eos_token``, else the token of ``eos_id``, else the
    one the folder's config names, else the first known name in the vocabulary.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer, configured = load_tokenizer(path)
    folder = Path(path) if Path(path).is_dir() else None
    settings = _tokenizer_config(folder) if folder is not None else {}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    for role in ("bos_token", "unk_token", "pad_token"):
        value = _token_content(settings.get(role))
        if value is not None and tokenizer.token_to_id(value) is not None:
            setattr(wrapped, role, value)
    if eos_token is None and eos_id is not None:
        eos_token = tokenizer.id_to_token(int(eos_id))
    eos_token = eos_token or configured
    if eos_token is None:
        known = (t for t in KNOWN_EOS_TOKENS if tokenizer.token_to_id(t) is not None)
        eos_token = next(known, None)
    if eos_token is None or tokenizer.token_to_id(eos_token) is None:
        raise ConfigError(
            f"tokenizer: no end-of-text token in {path} (tried {eos_token or KNOWN_EOS_TOKENS}); "
            "pass --eos_token with the name of one of its special tokens"
        )
    wrapped.eos_token = eos_token
    return wrapped


def _tokenizer_config(folder: Path) -> dict:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return {}
    try:
        value = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def configured_eos(folder: Path) -> str | None:
    """The EOS token a tokenizer folder's ``tokenizer_config.json`` names, if any."""
    return _token_content(_tokenizer_config(Path(folder)).get("eos_token"))


def eos_token_id(tokenizer: Tokenizer, eos_token: str | None) -> int:
    """The id of ``eos_token``, or of the first known EOS token in the vocabulary."""
    candidates = (eos_token,) if eos_token else KNOWN_EOS_TOKENS
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ConfigError(
        f"eos_token: none of {list(candidates)} is in the tokenizer's vocabulary; "
        "pass --eos_token with the token that ends a document"
    )


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``; ``<|endoftext|>`` is id 0."""
    if vocab_size < 257:
        raise ConfigError(
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
