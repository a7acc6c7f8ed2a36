"""Inputs as users have them: released tokenizers, compressed corpora, mixing, no token lost."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
from pathlib import Path

import pytest
from tokenizers import processors

from jreg_lightning.data.tokenizer import (
    encode_texts,
    load_encoder,
    load_hf_tokenizer,
    load_tokenizer,
    train_byte_level_bpe,
)
from jreg_tools.data import prepare as prepare_module
from jreg_tools.data.prepare import PrepareOptions, prepare
from tests.corpora import documents_of, split_tokens, write_corpus

SETTINGS = {"vocab_size": 300, "seq_len": 32, "val_documents": 4, "num_workers": 2}


def released_style_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A tokenizer.json as released models often ship it: truncation at 16 tokens,
    padding on, and a template post-processor that adds [CLS] ... [SEP]."""
    tokenizer = train_byte_level_bpe(texts, vocab_size=300)
    tokenizer.add_special_tokens(["[CLS]", "[SEP]", "[PAD]"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", 301)],
    )
    tokenizer.enable_truncation(max_length=16)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]", length=16)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def plain_ids(folder: Path, text: str) -> list[int]:
    """The text's ids from the raw file with truncation, padding and the template removed."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    return raw.encode(text, add_special_tokens=False).ids


def test_released_tokenizer_loses_and_adds_no_token(tmp_path):
    texts = write_corpus(tmp_path / "docs.jsonl", documents=30, words=(40, 80))
    folder = released_style_tokenizer(tmp_path / "released", texts)
    expected = [plain_ids(folder, text) for text in texts]
    assert all(len(ids) > 16 for ids in expected)  # the shipped settings would cut every one

    meta = prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"),
            output_dir=str(tmp_path / "out"),
            tokenizer=str(folder),
            shuffle_block_buffer=1,  # documents stay whole in the stream, to compare them
            **SETTINGS,
        )
    )
    encoded = sum(info["document_tokens"] for info in meta["splits"].values())
    assert encoded == sum(map(len, expected))
    assert meta["splits"]["train"]["tokens"] == meta["splits"]["train"]["document_tokens"] + 26
    written = documents_of(split_tokens(tmp_path / "out" / "train"), meta["eos_id"])
    written += documents_of(split_tokens(tmp_path / "out" / "val"), meta["eos_id"])
    assert sorted(written) == sorted(tuple(ids) for ids in expected)

    # analyze --text and perplexity encode through the same loader: same ids, none added.
    text = "\n".join(texts)
    assert load_encoder(folder)(text) == plain_ids(folder, text)
    hf = load_hf_tokenizer(folder)
    assert hf.encode(text, add_special_tokens=False) == plain_ids(folder, text)
    assert hf.eos_token == "<|endoftext|>"


def test_analyze_text_batches_keep_every_token(tmp_path):
    from jreg_tools.analysis.text import text_batches

    texts = write_corpus(tmp_path / "docs.jsonl", documents=30, words=(40, 80))
    folder = released_style_tokenizer(tmp_path / "released", texts)
    text_file = tmp_path / "text.txt"
    text_file.write_text("\n".join(texts) + "\n")
    total = len(plain_ids(folder, text_file.read_text()))
    batches = list(text_batches(text_file, load_encoder(folder), 15, 2, max_batches=10_000))
    assert sum(batch.numel() for batch in batches) == (total // 32) * 32 > 0


def test_sentencepiece_folder_loads_and_prepares(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    texts = write_corpus(tmp_path / "docs.jsonl", documents=40)
    (tmp_path / "plain.txt").write_text("\n".join(texts))
    folder = tmp_path / "llama2_style"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "plain.txt"),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=60,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    config = {"tokenizer_class": "LlamaTokenizer", "eos_token": "</s>", "bos_token": "<s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer, eos = load_tokenizer(folder)
    assert eos == "</s>"
    ids = encode_texts(tokenizer, [texts[0]])[0]
    assert ids and tokenizer.token_to_id("<s>") not in ids  # no BOS behind the user's back
    meta = prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"),
            output_dir=str(tmp_path / "out"),
            tokenizer=str(folder),
            **SETTINGS,
        )
    )
    assert meta["eos_id"] == tokenizer.token_to_id("</s>")
    assert meta["splits"]["train"]["documents"] == 36


def _chunks(folder: Path) -> list[bytes]:
    return [
        p.read_bytes() for split in ("train", "val") for p in sorted((folder / split).glob("*.bin"))
    ]


def test_compressed_corpora_give_identical_shards(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    write_corpus(tmp_path / "plain" / "docs.jsonl", documents=50)
    raw = (tmp_path / "plain" / "docs.jsonl").read_bytes()
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "docs.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "zst").mkdir()
    (tmp_path / "zst" / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "json_gz").mkdir()
    (tmp_path / "json_gz" / "docs.json.gz").write_bytes(gzip.compress(raw))
    plain = prepare(
        PrepareOptions(inputs=str(tmp_path / "plain"), output_dir=str(tmp_path / "p"), **SETTINGS)
    )
    tokenizer = str(tmp_path / "p" / "tokenizer.json")
    for name in ("gz", "zst", "json_gz"):
        meta = prepare(
            PrepareOptions(
                inputs=str(tmp_path / name / "*"),
                output_dir=str(tmp_path / f"out_{name}"),
                tokenizer=tokenizer,
                **SETTINGS,
            )
        )
        assert meta["splits"] == plain["splits"]
    # The plain run trained its tokenizer; compare shards made with that same tokenizer.
    again = prepare(
        PrepareOptions(
            inputs=str(tmp_path / "plain"),
            output_dir=str(tmp_path / "p2"),
            tokenizer=tokenizer,
            **SETTINGS,
        )
    )
    assert again["splits"] == plain["splits"]
    for name in ("gz", "zst", "json_gz"):
        assert _chunks(tmp_path / f"out_{name}") == _chunks(tmp_path / "p2")


def test_truncated_zst_is_one_line_naming_the_file_and_writes_nothing(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    write_corpus(tmp_path / "docs.jsonl", documents=200)
    packed = zstandard.ZstdCompressor().compress((tmp_path / "docs.jsonl").read_bytes())
    broken = tmp_path / "in" / "broken.jsonl.zst"
    broken.parent.mkdir()
    broken.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"inputs: .*broken\.jsonl\.zst is corrupt or truncated"):
        prepare(PrepareOptions(inputs=str(broken), output_dir=str(tmp_path / "out"), **SETTINGS))
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "in"]


def test_lost_tokens_fail_loudly(tmp_path, monkeypatch):
    """A writer that loses a piece (or a truncation that sneaks back) is an error, not a log."""
    write_corpus(tmp_path / "docs.jsonl", documents=30)
    real = prepare_module._tokenize_item

    def drops_last_piece(*args, **kwargs):
        pieces = list(real(*args, **kwargs))
        yield from pieces[:-1]

    monkeypatch.setattr(prepare_module, "_tokenize_item", drops_last_piece)
    with pytest.raises(
        RuntimeError, match=r"prepare: (train|val): the shards hold .* tokens were lost"
    ):
        prepare(
            PrepareOptions(
                inputs=str(tmp_path / "docs.jsonl"), output_dir=str(tmp_path / "out"), **SETTINGS
            )
        )
    assert not (tmp_path / "out").exists()

    truncating = train_byte_level_bpe(["some words to learn"] * 8, vocab_size=280)
    truncating.enable_truncation(max_length=3)
    with pytest.raises(RuntimeError, match="truncated although truncation is off"):
        encode_texts(truncating, ["some words to learn from here"])


def _txt_folder(root: Path, count: int = 80) -> Path:
    root.mkdir(parents=True)
    for index in range(count):
        (root / f"file_{index:03d}.txt").write_text(f"document number {index} " * (5 + index % 7))
    return root


def _train_order(folder: Path, meta: dict) -> list[tuple[int, ...]]:
    return documents_of(split_tokens(folder / "train"), meta["eos_id"])


def test_neighbours_on_disk_are_spread_by_the_seed(tmp_path):
    # The document shuffle alone (whole documents stay readable in the stream).
    corpus = _txt_folder(tmp_path / "corpus")
    only_documents = {**SETTINGS, "shuffle_block_buffer": 1}
    first = prepare(
        PrepareOptions(inputs=str(corpus), output_dir=str(tmp_path / "a"), seed=1, **only_documents)
    )
    tokenizer = str(tmp_path / "a" / "tokenizer.json")
    settings = {**only_documents, "tokenizer": tokenizer}
    prepare(PrepareOptions(inputs=str(corpus), output_dir=str(tmp_path / "b"), seed=1, **settings))
    other = prepare(
        PrepareOptions(inputs=str(corpus), output_dir=str(tmp_path / "c"), seed=2, **settings)
    )
    assert first["shuffle_seed"] == 1 and other["shuffle_seed"] == 2
    assert _chunks(tmp_path / "a") == _chunks(tmp_path / "b")

    order_1 = _train_order(tmp_path / "a", first)
    order_2 = _train_order(tmp_path / "c", other)
    assert sorted(order_1) != sorted(order_2) or order_1 != order_2
    # On disk the files sit in name order; after mixing, few neighbours stay neighbours.
    tok = load_tokenizer(tokenizer)[0]
    on_disk = [tuple(encode_texts(tok, [p.read_text()])[0]) for p in sorted(corpus.iterdir())]
    position = {doc: i for i, doc in enumerate(order_1)}
    kept = [
        abs(position[a] - position[b]) == 1
        for a, b in itertools.pairwise(on_disk)
        if a in position and b in position
    ]
    assert sum(kept) < len(kept) / 4

    unmixed = prepare(
        PrepareOptions(
            inputs=str(corpus), output_dir=str(tmp_path / "d"), seed=1, shuffle=False, **settings
        )
    )
    assert unmixed["shuffle_seed"] is None
    assert _train_order(tmp_path / "d", unmixed) == [d for d in on_disk if d in position]
    shutil.rmtree(tmp_path / "d")


def _blocks(tokens: list[int], block: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + block]) for i in range(0, len(tokens), block)]


def test_blocks_are_shuffled_whole_and_a_long_document_spreads_over_chunks(tmp_path):
    # One document of digits as long as many chunks, among short documents of words.
    texts = write_corpus(tmp_path / "words.jsonl", documents=400, words=(20, 40))
    long_text = " ".join(str(n) for n in range(1500))
    with open(tmp_path / "docs.jsonl", "w") as handle:
        for text in [*texts[:200], long_text, *texts[200:]]:
            handle.write(json.dumps({"text": text}) + "\n")
    one_worker = {**SETTINGS, "num_workers": 1, "chunk_blocks": 8}
    prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"), output_dir=str(tmp_path / "mixed"), **one_worker
        )
    )
    tokenizer = str(tmp_path / "mixed" / "tokenizer.json")
    only_documents = {**one_worker, "tokenizer": tokenizer, "shuffle_block_buffer": 1}
    prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"), output_dir=str(tmp_path / "docs"), **only_documents
        )
    )

    # Only whole blocks move: the same blocks as the document-shuffled stream, in
    # another order, and the short last piece stays last.
    mixed = _blocks(split_tokens(tmp_path / "mixed" / "train"), 33)
    unmixed = _blocks(split_tokens(tmp_path / "docs" / "train"), 33)
    assert sorted(mixed) == sorted(unmixed) and mixed != unmixed
    assert mixed[-1] == unmixed[-1] and len(mixed[-1]) <= 33

    # The long document fills whole chunks without the block shuffle, not with it.
    tok = load_tokenizer(tokenizer)[0]
    digit_ids = {i for t, i in tok.get_vocab().items() if t.strip("Ġ").isdigit()}

    def digit_share_per_chunk(folder: Path) -> list[float]:
        tokens = split_tokens(folder / "train")
        chunk = 8 * 33
        pieces = [tokens[i : i + chunk] for i in range(0, len(tokens), chunk)]
        return [sum(t in digit_ids for t in piece) / len(piece) for piece in pieces]

    assert max(digit_share_per_chunk(tmp_path / "docs")) > 0.9
    assert max(digit_share_per_chunk(tmp_path / "mixed")) < 0.75


def test_auto_chunks_give_a_small_corpus_many_chunks(tmp_path):
    write_corpus(tmp_path / "docs.jsonl", documents=300, words=(60, 120))
    meta = prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"), output_dir=str(tmp_path / "out"), **SETTINGS
        )
    )
    assert meta["splits"]["train"]["chunks"] >= 32
    assert (
        meta["chunk_blocks"] == prepare_module.auto_chunk_blocks(1, 33) or meta["chunk_blocks"] >= 8
    )


def test_bpe_trains_on_a_bounded_sample(tmp_path):
    write_corpus(tmp_path / "docs.jsonl", documents=100)
    meta = prepare(
        PrepareOptions(
            inputs=str(tmp_path / "docs.jsonl"),
            output_dir=str(tmp_path / "out"),
            bpe_sample_bytes=2_000,
            **SETTINGS,
        )
    )
    sample = meta["bpe_sample"]
    assert sample["max_bytes"] == 2_000 and 0 < sample["characters"] <= 2_000
    assert sample["every_nth_document"] > 1
