"""Where prepared data lives: a local folder or an object-store URL (``s3://``, ``gs://``...).

The shards themselves are read and written by litdata; this module does the rest:
it joins paths, reads the small files beside the shards (``meta.json``,
``index.json``) and uploads a prepared folder. ``s3://`` goes through boto3, which
takes the endpoint, credentials and CA from the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_CA_BUNDLE``) plus ``storage_options`` (boto3 client
arguments). litdata streams chunks through obstore, which trusts the CA of
``SSL_CERT_FILE`` and refuses plain-HTTP endpoints (litdata 0.2.76 gives it no
``allow_http``): an ``http://`` endpoint is refused here in one line. ``gs://``
and ``r2://`` go through litdata's own file providers, other schemes that litdata
streams (``az://``...) through its downloaders; only ``s3://`` is tested.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from jreg_lightning.errors import ConfigError, InputNotFoundError

Location = str | Path
# What litdata 0.2.76 streams from, and what its providers can write to.
READABLE_SCHEMES = ("s3", "gs", "r2", "az", "azure", "hf")
WRITABLE_SCHEMES = ("s3", "gs", "r2")
TLS_SETUP = (
    "serve it over https and trust its CA with AWS_CA_BUNDLE (boto3) and SSL_CERT_FILE "
    "(litdata's obstore); see docs/data.md, Object storage"
)


def is_remote(location: Location) -> bool:
    """True for a URL (``scheme://...``), False for a local path."""
    return "://" in str(location)


def join(location: Location, *parts: str) -> Location:
    """``location/part/...``: a ``Path`` for a local folder, a string for a URL."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return Path(location, *parts)


def as_location(value: Location) -> Location:
    """A URL stays a string (``Path`` would fold ``s3://b`` into ``s3:/b``); else a ``Path``."""
    return str(value) if is_remote(value) else Path(value)


def check_url(url: str, field: str, write: bool = False) -> None:
    """A supported scheme (one line naming ``field`` otherwise), and no plain-HTTP S3 endpoint."""
    scheme = urlparse(url).scheme
    schemes = WRITABLE_SCHEMES if write else READABLE_SCHEMES
    if scheme not in schemes:
        action = "writes to" if write else "reads from"
        raise ConfigError(
            f"{field}: {url} has scheme {scheme}://, which litdata {action} only as "
            f"{', '.join(s + '://' for s in schemes)}; use one of those or a local folder"
        )
    if not urlparse(url).netloc:
        raise ConfigError(f"{field}: {url} names no bucket; write {scheme}://BUCKET/PATH")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if scheme == "s3" and endpoint.startswith("http://"):
        raise ConfigError(
            f"{field}: AWS_ENDPOINT_URL={endpoint} is plain HTTP, which litdata's chunk "
            f"transfer (obstore) refuses; {TLS_SETUP}"
        )


def _s3_client(storage_options: dict | None):
    import boto3

    return boto3.client("s3", **(storage_options or {}))


def _bucket_and_key(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_error(error: Exception, url: str, field: str) -> ConfigError:
    """One line for what an S3 call said, naming ``field`` and the fix."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        SSLError,
    )

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the AWS default endpoint")
    bucket, _ = _bucket_and_key(url)
    if isinstance(error, NoCredentialsError):
        return ConfigError(
            f"{field}: no credentials for {url}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or an AWS profile)"
        )
    if isinstance(error, SSLError):
        return ConfigError(f"{field}: TLS verification of {endpoint} failed; {TLS_SETUP}")
    if isinstance(error, EndpointConnectionError):
        return ConfigError(
            f"{field}: cannot reach {endpoint} for {url}; check AWS_ENDPOINT_URL and the network"
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        missing_bucket = code == "NoSuchBucket" or (
            code == "404" and error.operation_name == "HeadBucket"
        )
        if missing_bucket:
            return ConfigError(
                f"{field}: bucket {bucket} does not exist at {endpoint}; create it or fix the URL"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return ConfigError(
                f"{field}: {endpoint} refused the credentials for {url} ({code}); check "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        return ConfigError(f"{field}: {url}: {code or error}")
    return ConfigError(f"{field}: {url}: {type(error).__name__}: {error}")


def read_text(location: Location, field: str, storage_options: dict | None = None) -> str | None:
    """The text of a small file (``meta.json``, ``index.json``), or None if it does not exist."""
    if not is_remote(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    url = str(location)
    check_url(url, field)
    if urlparse(url).scheme == "s3":
        client = _s3_client(storage_options)
        bucket, key = _bucket_and_key(url)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            return None
        except Exception as error:
            raise _s3_error(error, url, field) from None
    return _read_with_litdata(url, field, storage_options)


def _read_with_litdata(url: str, field: str, storage_options: dict | None) -> str | None:
    from litdata.streaming.downloader import get_downloader

    with tempfile.TemporaryDirectory() as cache:
        local = os.path.join(cache, os.path.basename(url))
        parent = url.rsplit("/", 1)[0]
        try:
            get_downloader(parent, cache, [], storage_options).download_file(url, local)
        except FileNotFoundError:
            return None
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            raise ConfigError(f"{field}: cannot read {url}: {reason}") from None
        return Path(local).read_text() if os.path.isfile(local) else None


def check_destination(url: str, overwrite: bool, field: str, storage_options: dict | None) -> bool:
    """Before any work: the bucket is reachable and writable-looking, and the prefix is free.

    Returns:
        True when the prefix already holds objects (only allowed with ``overwrite``).
    """
    check_url(url, field, write=True)
    if urlparse(url).scheme != "s3":
        return False
    client = _s3_client(storage_options)
    bucket, key = _bucket_and_key(url)
    try:
        client.head_bucket(Bucket=bucket)
        listing = client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    except Exception as error:
        raise _s3_error(error, url, field) from None
    occupied = listing.get("KeyCount", 0) > 0
    if occupied and not overwrite:
        from jreg_lightning.errors import OutputExistsError

        raise OutputExistsError(
            f"{field}: {url} already holds data; pass --overwrite to replace it or choose "
            "another URL"
        )
    return occupied


def upload_folder(
    folder: Path, url: str, field: str, storage_options: dict | None = None, replace: bool = False
) -> int:
    """Upload every file of ``folder`` under ``url``; ``meta.json`` last, so it marks completion.

    With ``replace``, the objects already under ``url`` are deleted first (only after the
    local folder is complete). Returns the number of files uploaded.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # Chunks, then each split's index.json, then meta.json: a reader that sees meta.json
    # sees a complete dataset.
    files.sort(key=lambda p: (p.name == "meta.json", p.name == "index.json"))
    if urlparse(url).scheme == "s3":
        client = _s3_client(storage_options)
        bucket, key = _bucket_and_key(url)
        try:
            if replace:
                _delete_prefix(client, bucket, key.rstrip("/") + "/")
            for path in files:
                remote_key = "/".join([key.rstrip("/"), *path.relative_to(folder).parts])
                client.upload_file(str(path), bucket, remote_key)
        except Exception as error:
            raise _s3_error(error, url, field) from None
        return len(files)
    from litdata.streaming.fs_provider import GCPFsProvider, R2FsProvider

    provider = {"gs": GCPFsProvider, "r2": R2FsProvider}[urlparse(url).scheme](storage_options)
    if replace:
        provider.delete_file_or_directory(url)
    for path in files:
        provider.upload_file(str(path), str(join(url, *path.relative_to(folder).parts)))
    return len(files)


def _delete_prefix(client, bucket: str, prefix: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def require_local(location: Location, field: str) -> Path:
    """``location`` as a local ``Path``, or one line saying this command needs a local folder."""
    if is_remote(location):
        raise InputNotFoundError(
            f"{field}: {location} is a URL; this command reads a local folder (copy the data "
            "down, e.g. with `aws s3 sync`)"
        )
    return Path(location)
