"""Bad input to ``prepare``: one line naming the thing and the fix, nothing written or damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jreg_tools.data.prepare import PrepareOptions, prepare
from tests.corpora import write_corpus


def _refused(tmp_path: Path, error, match: str, **kwargs) -> str:
    """Run prepare into ``tmp_path/out``, expect ``error``, and check that nothing was written."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    kwargs.setdefault("output_dir", str(tmp_path / "out"))
    with pytest.raises(error, match=match) as caught:
        prepare(PrepareOptions(vocab_size=300, seq_len=16, num_workers=1, **kwargs))
    message = str(caught.value)
    assert "\n" not in message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    return message


def test_empty_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text('\n{"text": ""}\n{"text": "   "}\n')
    _refused(
        tmp_path,
        ValueError,
        r"inputs: no non-empty document",
        inputs=[str(tmp_path / "empty.jsonl")],
    )
    (tmp_path / "folder").mkdir()
    _refused(
        tmp_path, ValueError, r"inputs: no supported file found", inputs=[str(tmp_path / "folder")]
    )
    _refused(tmp_path, ValueError, r"inputs: no input given", inputs=[])


def test_missing_input_path(tmp_path):
    _refused(
        tmp_path,
        FileNotFoundError,
        r"inputs: .*nope.txt does not exist",
        inputs=[str(tmp_path / "nope.txt")],
    )


def test_non_utf8_file_fails_naming_it(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    message = _refused(
        tmp_path, ValueError, r"latin1.txt is not valid UTF-8", inputs=[str(tmp_path)]
    )
    assert "re-encode" in message


def test_unreadable_file(tmp_path, monkeypatch):
    import os

    path = tmp_path / "locked.txt"
    path.write_text("secret")
    # chmod 0 does not stop root (CI), so the permission check is made to fail instead.
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != path)
    message = _refused(tmp_path, PermissionError, r"cannot read .*locked.txt", inputs=[str(path)])
    assert "permission" in message


def test_missing_jsonl_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "text under another name"}) + "\n")
    message = _refused(tmp_path, ValueError, r"line 1 has no field 'text'", inputs=[str(path)])
    assert "--text_field" in message and "body" in message


def test_missing_parquet_column(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["a document"]}), tmp_path / "rows.parquet")
    _refused(
        tmp_path,
        ValueError,
        r"rows.parquet has no column 'content' .*--text_field",
        inputs=[str(tmp_path / "rows.parquet")],
        text_field="content",
    )


def test_missing_tokenizer_file(tmp_path):
    write_corpus(tmp_path / "docs.jsonl", documents=4)
    _refused(
        tmp_path,
        FileNotFoundError,
        r"tokenizer: .*missing.json does not exist",
        inputs=[str(tmp_path / "docs.jsonl")],
        tokenizer=str(tmp_path / "missing.json"),
    )


def test_output_dir_holding_other_data_is_refused(tmp_path):
    write_corpus(tmp_path / "docs.jsonl", documents=4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("precious")
    _refused(
        tmp_path,
        FileExistsError,
        r"output_dir: .* already holds data; pass --overwrite",
        inputs=[str(tmp_path / "docs.jsonl")],
    )
    assert (tmp_path / "out" / "results.csv").read_text() == "precious"
    # Even --overwrite never replaces a folder that holds the input itself.
    (tmp_path / "out" / "docs.jsonl").write_text((tmp_path / "docs.jsonl").read_text())
    _refused(
        tmp_path,
        ValueError,
        r"output_dir: .* contains the input",
        inputs=[str(tmp_path / "out" / "docs.jsonl")],
        overwrite=True,
    )


def test_vocab_too_large_for_the_dtype(tmp_path):
    from tokenizers import Tokenizer, models

    write_corpus(tmp_path / "docs.jsonl", documents=4)
    vocab = {f"w{i}": i for i in range(70_000)}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "big.json"))
    _refused(
        tmp_path,
        ValueError,
        r"dtype: vocab_size 70000 does not fit uint16 .*--dtype int32",
        inputs=[str(tmp_path / "docs.jsonl")],
        tokenizer=str(tmp_path / "big.json"),
        dtype="uint16",
    )


def test_bad_split_settings(tmp_path):
    write_corpus(tmp_path / "docs.jsonl", documents=4)
    _refused(
        tmp_path,
        ValueError,
        r"val_documents: 4 of 4 documents leaves none for training",
        inputs=[str(tmp_path / "docs.jsonl")],
        val_documents=4,
    )
