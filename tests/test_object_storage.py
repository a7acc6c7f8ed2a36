"""Shards on object storage, against a real S3-compatible server (``moto_server`` over TLS).

``prepare --output_dir s3://...`` writes the shards, ``meta.json`` and the tokenizer
into a bucket; ``fit`` / ``validate`` stream from it through a local cache; a fit
killed with SIGKILL resumes from the bucket bit for bit; bad URLs, a missing bucket,
refused credentials and an unreachable or plain-HTTP endpoint end in one line and
leave the bucket and the working folder as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jreg_tools.cli import main
from tests.corpora import write_corpus
from tests.s3_server import start_s3_server
from tests.test_reliability_resume import run_kill_and_resume

BUCKET = "jreg-shards"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A TLS ``moto_server`` with one bucket; its AWS variables set for this module."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    cache = tmp_path_factory.mktemp("litdata_cache")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**server.environment(), "LITDATA_CACHE_DIR": str(cache)}.items():
            patch.setenv(name, value)
        server.create_bucket(BUCKET)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_shards(s3, tmp_path_factory):
    """``cli.py prepare`` of a small corpus into ``s3://jreg-shards/small``; also a local copy."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "docs.jsonl"
    write_corpus(corpus, documents=80, words=(15, 45))
    common = [
        f"--inputs={corpus}", "--vocab_size=300", "--seq_len=32", "--chunk_blocks=8",
        "--val_documents=6", "--num_workers=1",
    ]  # fmt: skip
    main(["prepare", *common, f"--output_dir=s3://{BUCKET}/small"])
    main(["prepare", *common, f"--output_dir={root / 'local'}"])
    return f"s3://{BUCKET}/small", root / "local"


def _objects(prefix: str = "") -> list[tuple[str, int]]:
    import boto3

    client = boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(
        (item["Key"], item["Size"]) for page in pages for item in page.get("Contents", [])
    )


def _read_object(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_prepare_writes_shards_meta_and_tokenizer_to_the_bucket(s3_shards):
    url, local = s3_shards
    keys = [key for key, _ in _objects("small/")]
    assert {"small/meta.json", "small/tokenizer.json"} <= set(keys)
    assert {"small/train/index.json", "small/val/index.json"} <= set(keys)
    meta = json.loads(_read_object("small/meta.json"))
    local_meta = json.loads((local / "meta.json").read_text())
    assert meta["location"] == url
    # The same shards as a local prepare of the same corpus, token for token.
    assert meta["splits"] == local_meta["splits"]
    for split in ("train", "val"):
        remote = json.loads(_read_object(f"small/{split}/index.json"))["chunks"]
        assert remote == json.loads((local / split / "index.json").read_text())["chunks"]
    for path in sorted((local / "train").glob("*.bin")):
        assert _read_object(f"small/train/{path.name}") == path.read_bytes()
    assert not Path("s3:").exists(), "nothing is written to a local folder named after the URL"


@pytest.mark.slow
def test_fit_and_validate_stream_from_the_bucket(s3_shards, tmp_path, caplog):
    url, local = s3_shards
    run = tmp_path / "run"
    common = [
        "--config", "configs/tiny_jreg.yaml", f"--data.data_dir={url}", "--data.seq_len=32",
        "--data.batch_size=4", f"--data.cache_dir={tmp_path / 'cache'}",
        "--model.llama.vocab_size=300", "--model.llama.num_layers=2",
        "--model.llama.hidden_size=64", "--model.llama.intermediate_size=128",
        "--model.llama.max_position_embeddings=64", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run}", "--trainer.limit_val_batches=2",
    ]  # fmt: skip
    with caplog.at_level("INFO"):
        main(["fit", *common, "--trainer.max_steps=4", "--trainer.val_check_interval=4"])
    # The token accounting, read from the bucket's index.json files.
    tokens = json.loads((local / "meta.json").read_text())["splits"]["train"]["tokens"]
    assert f"data: train: {tokens:,} tokens in shards" in caplog.text
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # The chunks came through the local cache, one folder per split.
    assert any((tmp_path / "cache" / "train").rglob("*.bin"))
    main(["validate", *common, "--ckpt_path=last", "--trainer.logger=false"])
    report = json.loads((run / "validation_profile.json").read_text())
    assert report["loss"] > 0 and len(report["profile"]) == 2


@pytest.mark.slow
def test_sigkill_and_resume_from_the_bucket_is_bit_exact(s3_shards, tmp_path):
    url, _ = s3_shards
    run_kill_and_resume(tmp_path, url, ranks=1)


def _one_error_line(argv: list[str], capfd) -> str:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code not in (0, None)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _fit_from(url: str, tmp_path: Path) -> list[str]:
    return [
        "fit", "--config", "configs/tiny_jreg.yaml", f"--data.data_dir={url}",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_steps=2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://host/shards", ("data.data_dir", "ftp://", "s3://")),
        (f"s3://no-such-bucket/{'x'}", ("data.data_dir", "no-such-bucket", "does not exist")),
        (f"s3://{BUCKET}/nothing-here", ("data.data_dir", "index.json", "does not exist")),
    ],
    ids=["unsupported-scheme", "missing-bucket", "missing-prefix"],
)
def test_bad_data_url_gives_one_line_and_writes_nothing(s3, url, expected, tmp_path, capfd):
    before = _objects()
    line = _one_error_line(_fit_from(url, tmp_path), capfd)
    for text in expected:
        assert text in line, line
    assert _objects() == before
    assert not (tmp_path / "run").exists()


def test_prepare_over_data_in_the_bucket_is_refused_and_leaves_it(s3_shards, tmp_path, capfd):
    url, _ = s3_shards
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, documents=20)
    before = _objects()
    line = _one_error_line(["prepare", f"--inputs={corpus}", f"--output_dir={url}"], capfd)
    assert "output_dir" in line and "--overwrite" in line
    assert _objects() == before


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, ("plain HTTP", "SSL_CERT_FILE")),
        (
            {"AWS_ENDPOINT_URL": "https://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
            ("cannot reach", "AWS_ENDPOINT_URL"),
        ),
        ({"AWS_CA_BUNDLE": "", "SSL_CERT_FILE": ""}, ("TLS verification", "AWS_CA_BUNDLE")),
    ],
    ids=["plain-http-endpoint", "unreachable-endpoint", "untrusted-certificate"],
)
def test_endpoint_problems_give_one_line(s3, environment, expected, tmp_path, capfd, monkeypatch):
    for name, value in environment.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, documents=20)
    line = _one_error_line(
        ["prepare", f"--inputs={corpus}", f"--output_dir=s3://{BUCKET}/new"], capfd
    )
    for text in expected:
        assert text in line, line
    assert not list(tmp_path.glob("*/meta.json")), "nothing was prepared"


def test_refused_credentials_give_one_line(tmp_path, capfd, monkeypatch):
    # A second server that checks credentials: moto authenticates every request
    # against its IAM users when INITIAL_NO_AUTH_ACTION_COUNT is 0.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    server = start_s3_server(tmp_path / "auth")
    try:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
        line = _one_error_line(_fit_from(f"s3://{BUCKET}/small", tmp_path), capfd)
    finally:
        server.stop()
    assert "data.data_dir" in line and "credentials" in line, line
    assert os.environ["AWS_ACCESS_KEY_ID"] == "not-a-key"


def test_analysis_readers_take_the_url(s3_shards):
    from jreg_tools.analysis.text import shard_batches, shard_vocab_size

    url, local = s3_shards
    assert shard_vocab_size(url) == shard_vocab_size(local) is not None
    remote = list(shard_batches(url, "val", 32, 2, 3))
    assert remote and all(
        a.equal(b) for a, b in zip(remote, shard_batches(local, "val", 32, 2, 3), strict=True)
    )
