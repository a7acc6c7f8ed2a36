"""``analyze --documents``: a sequence per document, the model's special tokens, padding masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from jreg_tools.analysis.command import AnalyzeOptions, analyze
from jreg_tools.analysis.text import DocumentCounts, encode_documents

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "log", "ran", "far", "away"]
MAX_LENGTH = 24
# Lengths in words; 30 words + [CLS] + [SEP] is longer than MAX_LENGTH and gets cut.
LENGTHS = [3, 11, 1, 7, 30, 5, 2]


def _tokenizer(path: Path, template: bool) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        # As released encoders ship it: the loader must switch these off.
        tokenizer.enable_truncation(8)
        tokenizer.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(path))
    return tokenizer


def _documents(path: Path) -> list[str]:
    texts = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)) for i, n in enumerate(LENGTHS)]
    with path.open("w") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text, "id": len(text)}) + "\n")
            handle.write("\n")  # blank lines are skipped
    return texts


def _model(kind: str, folder: Path, vocab_size: int) -> Path:
    torch.manual_seed(0)
    if kind == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=MAX_LENGTH,
        )
        BertModel(config).save_pretrained(folder)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=MAX_LENGTH,
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _analyze(tmp_path: Path, model: Path, documents: Path, tokenizer: Path, batch: int) -> dict:
    result = analyze(
        AnalyzeOptions(
            models=[str(model)],
            documents=str(documents),
            tokenizer=str(tokenizer),
            batch_size=batch,
            max_batches=100,
            output_dir=str(tmp_path / f"out_{batch}"),
            progress=False,
        )
    )
    [report] = result["models"]
    return report


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_padding_does_not_change_the_profile(tmp_path, kind):
    template = kind == "bert"
    tokenizer = _tokenizer(tmp_path / "tokenizer.json", template)
    documents = tmp_path / "docs.jsonl"
    _documents(documents)
    model = _model(kind, tmp_path / kind, tokenizer.get_vocab_size())

    alone = _analyze(tmp_path, model, documents, tmp_path / "tokenizer.json", batch=1)
    padded = _analyze(tmp_path, model, documents, tmp_path / "tokenizer.json", batch=4)

    special = 2 if template else 0
    expected = sum(min(n + special, MAX_LENGTH) for n in LENGTHS)
    for report in (alone, padded):
        assert report["documents"] == {
            "documents": len(LENGTHS),
            "tokens": expected,
            "special_tokens_per_document": special,
            "truncated_documents": 1,
            "truncated_tokens": 30 + special - MAX_LENGTH,
            "max_length": MAX_LENGTH,
        }
        # Only document tokens count: padding positions are masked out of Psi.
        assert report["tokens"] == expected
        assert report["loss"] is None and report["early_exit_loss"] is None
    assert padded["batches"] == 2 and alone["batches"] == len(LENGTHS)
    # Psi = (1 - cos) / 2 near cos = 1 carries float32 noise of ~1e-9 absolute (seen: 9e-10
    # on a Psi of 3.3e-5 for BERT); a masking error would be orders of magnitude larger.
    for state in ("post_norm", "pre_norm"):
        assert padded["profiles"][state] == pytest.approx(
            alone["profiles"][state], rel=1e-5, abs=1e-8
        )
    assert max(padded["profiles"]["post_norm"]) > 0


def test_special_tokens_are_present_and_kept_when_cut(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tokenizer.json", template=True)
    from jreg_lightning.data.tokenizer import load_tokenizer

    loaded, _ = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer.truncation is not None and loaded.truncation is None
    texts = _documents(tmp_path / "docs.jsonl")
    counts = DocumentCounts(MAX_LENGTH)
    rows = encode_documents(loaded, texts, MAX_LENGTH, counts)
    for text, ids in zip(texts, rows, strict=True):
        assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP], also on the cut document
        words = min(len(text.split()), MAX_LENGTH - 2)
        assert ids[1:-1] == [loaded.token_to_id(w) for w in text.split()[:words]]
    assert counts.truncated_documents == 1 and counts.truncated_tokens == 30 + 2 - MAX_LENGTH


def test_documents_bad_input_names_the_field(tmp_path):
    _tokenizer(tmp_path / "tokenizer.json", template=True)
    model = _model("bert", tmp_path / "bert", 16)
    wrong_field = tmp_path / "docs.jsonl"
    wrong_field.write_text(json.dumps({"body": "the cat"}) + "\n")
    common = {"models": [str(model)], "tokenizer": str(tmp_path / "tokenizer.json")}
    with pytest.raises(ValueError, match="line 1 has no text field 'text'.*--text_field"):
        analyze(
            AnalyzeOptions(
                **common, documents=str(wrong_field), output_dir=str(tmp_path / "o"), progress=False
            )
        )
    with pytest.raises(ValueError, match="--documents reads its own file"):
        analyze(
            AnalyzeOptions(
                **common, documents=str(wrong_field), text=str(wrong_field), progress=False
            )
        )
    table = tmp_path / "docs.csv"
    table.write_text("text\nthe cat\n")
    with pytest.raises(ValueError, match="not .jsonl, .json or .txt"):
        analyze(AnalyzeOptions(**common, documents=str(table), progress=False))
    with pytest.raises(FileNotFoundError, match="pass --documents a .jsonl or .txt file"):
        analyze(AnalyzeOptions(**common, documents=str(tmp_path / "missing.jsonl"), progress=False))


def test_txt_documents_are_lines(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tokenizer.json", template=True)
    model = _model("bert", tmp_path / "bert", tokenizer.get_vocab_size())
    texts = _documents(tmp_path / "docs.jsonl")
    lines = tmp_path / "docs.txt"
    lines.write_text("\n\n".join(texts) + "\n")
    from_txt = _analyze(tmp_path, model, lines, tmp_path / "tokenizer.json", batch=3)
    from_jsonl = _analyze(tmp_path, model, tmp_path / "docs.jsonl", tmp_path / "tokenizer.json", 3)
    assert from_txt["documents"] == from_jsonl["documents"]
    assert from_txt["profiles"] == from_jsonl["profiles"]
