"""A real S3-compatible server for tests: ``moto_server`` over TLS on 127.0.0.1.

litdata moves chunks through obstore, which refuses plain HTTP endpoints, so the
server speaks TLS with a certificate for 127.0.0.1 signed by a throwaway CA made
here with ``openssl``. Clients trust that CA through ``AWS_CA_BUNDLE`` (boto3) and
``SSL_CERT_FILE`` (obstore); ``S3Server.environment()`` gives those variables and
the endpoint and credentials in the standard AWS names.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for IP 127.0.0.1 signed by it: ``(ca, cert, key)``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, request, cert = (
        folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    extensions = folder / "server.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    commands = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", ca, "-days", "2", "-subj", "/CN=jreg-test-ca"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
         "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return ca, cert, key


@dataclass
class S3Server:
    """A running ``moto_server`` and what a client needs to reach it."""

    endpoint: str
    ca_bundle: Path
    process: subprocess.Popen

    def environment(self) -> dict[str, str]:
        """The standard AWS variables (and the CA for obstore) that point clients here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CA_BUNDLE": str(self.ca_bundle),
            "SSL_CERT_FILE": str(self.ca_bundle),
        }

    def create_bucket(self, name: str) -> None:
        """Create ``name`` through boto3 (the same client litdata uses for indexes)."""
        import boto3

        env = self.environment()
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            verify=str(self.ca_bundle),
        )
        client.create_bucket(Bucket=name)

    def stop(self) -> None:
        """Stop the server and its process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_s3_server(folder: Path, timeout: float = 30.0) -> S3Server:
    """Start ``moto_server`` over TLS on a free port of 127.0.0.1; wait until it answers."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if server is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]' (the dev extra)")
    ca, cert, key = make_certificates(folder)
    port = _free_port()
    log = (folder / "moto_server.log").open("w")
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited; see {folder / 'moto_server.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("moto_server did not start listening in time")
    return S3Server(f"https://127.0.0.1:{port}", ca, process)
