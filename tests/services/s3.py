"""Real S3-speaking servers on loopback.

Two are used, because they differ where hoist's verification must be right
(measured in ../shared/FACTS.md and again here):

- ``moto_server``: computes a true full-object CRC64NVME for multipart uploads
  (``ChecksumType=FULL_OBJECT``) but echoes whatever checksum a single PUT sent.
- ``rclone serve s3``: enforces credentials, keeps objects on disk, reports no
  checksum for multipart uploads and echoes a single PUT's checksum unchecked.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from tests.services.process import ServerProcess, find_binary, free_port, port_open

BUCKET = "hoist-test"
TEST_EXTRA_HINT = "run `bash deploy/bootstrap.sh test`, which installs the test extra"


class S3Server:
    """Base: an S3 server process with an access key pair and one bucket."""

    name = "s3"
    access_key = "hoist-test-access"
    secret_key = "hoist-test-secret-0123456789"

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.bucket = BUCKET
        self.process = ServerProcess(self.name, self.argv(), workdir / f"{self.name}.log", self._up)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def _up(self) -> bool:
        return port_open(self.port)

    def client(self, **overrides: str):  # type: ignore[no-untyped-def]
        """A raw boto3 client for the test's own checks (not hoist's code path)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=overrides.get("access_key", self.access_key),
            aws_secret_access_key=overrides.get("secret_key", self.secret_key),
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def start(self) -> None:
        self.process.start()
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        self.process.stop()


class MotoServer(S3Server):
    name = "moto_server"

    def argv(self) -> list[str]:
        binary = find_binary("moto_server", TEST_EXTRA_HINT)
        return [binary, "-H", "127.0.0.1", "-p", str(self.port)]

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=0.5):
                return True
        except OSError:
            return False


class RcloneServer(S3Server):
    name = "rclone"

    def argv(self) -> list[str]:
        binary = find_binary("rclone", TEST_EXTRA_HINT)
        root = self.workdir / "data"
        root.mkdir(exist_ok=True)
        return [
            binary, "serve", "s3", str(root),
            "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{self.access_key},{self.secret_key}",
            "--config", "/dev/null",
        ]  # fmt: skip
