"""``cli.py prepare``: shards, meta.json, token accounting, determinism, atomic output."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from tokenizers import Tokenizer

from jreg_lightning.data.shard_meta import chunk_tokens, read_index, token_dtype
from jreg_tools.data.sources import read_documents, scan_inputs
from tests.corpora import prepare_small, split_tokens, write_corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    texts = write_corpus(root / "corpus" / "docs.jsonl", documents=60)
    meta = prepare_small(root / "corpus" / "docs.jsonl", root / "out")
    return root, texts, meta


def _expected_tokens(tokenizer: Tokenizer, texts: list[str], eos: int) -> list[int]:
    out: list[int] = []
    for text in texts:
        out.extend(tokenizer.encode(text, add_special_tokens=False).ids)
        out.append(eos)
    return out


def test_prepare_writes_shards_tokenizer_and_meta(prepared):
    root, texts, meta = prepared
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train", "val"]
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["seq_len"] == 32
    assert meta["splits"]["train"]["documents"] == 54 and meta["splits"]["val"]["documents"] == 6
    assert meta["tokenizer"] == "tokenizer.json"
    assert meta["command"].startswith("python cli.py prepare ")
    assert f"--output_dir={out}" in meta["command"] and "--seq_len=32" in meta["command"]

    # Every document is written once, in order, with EOS after it: val and train together
    # hold exactly the tokenization of the corpus.
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos = meta["eos_id"]
    assert tokenizer.id_to_token(eos) == "<|endoftext|>"
    val_tokens = split_tokens(out / "val")
    train_tokens = split_tokens(out / "train")
    assert len(val_tokens) == meta["splits"]["val"]["tokens"]
    assert len(train_tokens) == meta["splits"]["train"]["tokens"]
    assert val_tokens.count(eos) == 6 and train_tokens.count(eos) == 54
    scan = scan_inputs([root / "corpus" / "docs.jsonl"])
    val_ids = [i for i in range(60) if i not in _train_ids(scan)]
    assert val_tokens == _expected_tokens(tokenizer, [texts[i] for i in val_ids], eos)
    # Training documents and then blocks are mixed before writing: the same tokens,
    # in another order (tests/test_prepare_real_inputs.py checks the two shuffles).
    train_texts = [t for i, t in enumerate(texts) if i not in val_ids]
    expected = _expected_tokens(tokenizer, train_texts, eos)
    assert Counter(train_tokens) == Counter(expected) and train_tokens != expected


def _train_ids(scan) -> set[int]:
    """The document numbers prepare put in train (re-derived as prepare does, seed 42)."""
    from jreg_tools.data.prepare import _held_out

    held = _held_out(scan.num_documents, 0.01, 6, 42)
    return {i for i in range(scan.num_documents) if i not in held}


def test_token_accounting_drops_less_than_a_block_per_chunk(prepared):
    root, _, meta = prepared
    for split in ("train", "val"):
        info = meta["splits"][split]
        per_chunk = chunk_tokens(read_index(root / "out" / split))
        assert sum(per_chunk) == info["tokens"]
        assert all(tokens <= 8 * 33 for tokens in per_chunk)
        assert 0 <= info["tokens"] - info["usable_tokens"] < 33 * info["chunks"]


def test_same_seed_same_shards_and_a_stale_partial_folder_is_replaced(prepared, tmp_path):
    root, _, meta = prepared
    out = tmp_path / "again"
    stale = tmp_path / ".again.partial"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"left by a killed run")
    again = prepare_small(root / "corpus" / "docs.jsonl", out)
    assert not stale.exists()
    assert again["splits"] == meta["splits"]
    for split in ("train", "val"):
        first = sorted((root / "out" / split).glob("chunk-*.bin"))
        second = sorted((out / split).glob("chunk-*.bin"))
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    # --overwrite swaps the new folder in whole; without it nothing is touched.
    (out / "note.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="output_dir: .* --overwrite"):
        prepare_small(root / "corpus" / "docs.jsonl", out, val_documents=3)
    assert (out / "note.txt").read_text() == "mine"
    replaced = prepare_small(
        root / "corpus" / "docs.jsonl",
        out,
        val_documents=3,
        tokenizer=str(out / "tokenizer.json"),
        overwrite=True,
    )
    assert replaced["splits"]["val"]["documents"] == 3
    assert not (out / "note.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_token_dtype_follows_the_vocabulary():
    assert token_dtype(8192) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "int32"
    assert token_dtype(128_256) == "int32"


def test_txt_folders_and_parquet_columns_are_read_in_sorted_order(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second file")
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "empty.txt").write_text("  \n")
    table = pa.table({"content": ["row one", "", "row three", None, "row five"]})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=2)
    scan = scan_inputs([tmp_path], text_field="content")
    texts = [text for rng in scan.ranges for _, text in read_documents(rng)]
    assert texts == ["first file", "second file", "row one", "row three", "row five"]
    assert scan.num_documents == 5 and scan.empty_documents == 3


def test_datasets_folder_is_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["alpha text", "beta text", " "]}).save_to_disk(
        str(tmp_path / "ds")
    )
    scan = scan_inputs([tmp_path / "ds"], text_field="body")
    texts = [text for rng in scan.ranges for _, text in read_documents(rng)]
    assert texts == ["alpha text", "beta text"] and scan.empty_documents == 1


def test_tokenizer_folder_names_its_eos(tmp_path):
    from jreg_lightning.data.tokenizer import eos_token_id, load_tokenizer, train_byte_level_bpe

    tokenizer = train_byte_level_bpe(["some text to learn from"] * 4, vocab_size=280)
    tokenizer.add_special_tokens(["</s>"])
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    loaded, configured = load_tokenizer(folder)
    assert configured == "</s>"
    assert eos_token_id(loaded, configured) == loaded.token_to_id("</s>") != 0
    assert eos_token_id(loaded, None) == 0  # <|endoftext|> comes first among known EOS tokens
    with pytest.raises(ValueError, match=r"eos_token: none of \['<eot>'\] .* --eos_token"):
        eos_token_id(loaded, "<eot>")
