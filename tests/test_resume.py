"""Resume: parallel ranged downloads, verified while streaming, against real S3 servers.

Every download here goes through hoist's own path (``download_artifact``,
``download_checkpoint``, ``ObjectStore.download_file``) to moto or ``rclone
serve s3``; corruption is made by the fault proxy flipping a byte of a GET
answer, or by overwriting an object behind the manifest's back, since neither
server checks checksums itself (../shared/FACTS.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hoist.checkpoints import fetch_checkpoint
from hoist.download import download_artifact, download_checkpoint
from hoist.errors import (
    CheckpointError,
    ChecksumMismatchError,
    ObjectNotFoundError,
    StoreAuthError,
    StoreConnectionError,
)
from hoist.protocol.manifest import Manifest, ManifestFile
from hoist.stores import s3_session
from hoist.stores.base import ObjectStat
from hoist.stores.checksum import Checksum
from hoist.stores.s3 import S3ObjectStore, S3TransferConfig
from tests.services.faultproxy import FaultProxy
from tests.services.process import free_port
from tests.services.s3 import S3Server

MiB = 1024 * 1024
SMALL_PARTS = S3TransferConfig(multipart_threshold=5 * MiB, part_size=5 * MiB, max_concurrency=3)


def make_store(
    server: S3Server, endpoint_url: str | None = None, downloader: str = "crt"
) -> S3ObjectStore:
    return S3ObjectStore(
        server.bucket,
        "resume/",
        endpoint_url=endpoint_url or server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        transfer_config=SMALL_PARTS,
        max_attempts=1,  # a corrupted answer must reach hoist's check, not a retry
        downloader=downloader,  # type: ignore[arg-type]
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("downloader", ["crt", "boto3"])
def test_a_multipart_download_is_byte_identical_and_fetched_in_parallel(
    downloader: str, s3_server: S3Server, tmp_path: Path
) -> None:
    data = os.urandom(11 * MiB + 7)  # 3 parts, the last one short (the proxy relays in Python)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="resume/big.bin", Body=data)
    seen: list[int] = []
    with (
        FaultProxy(s3_server.endpoint_url, rate=0) as proxy,
        make_store(s3_server, proxy.url, downloader) as store,
    ):
        held = store.download_file("big.bin", tmp_path / "big.bin", progress=seen.append)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert (held.size, held.checksum) == (len(data), Checksum.of(data))
    assert sum(seen) == len(data)
    gets = [e for e in proxy.stats.events if " GET " in e]
    assert len(gets) >= 3, proxy.stats.events  # one ranged GET per part at least
    assert proxy.stats.most_connections >= 2, proxy.stats.events  # and several at once
    assert leftovers(tmp_path) == ["big.bin"]
    # A store given its endpoint builds boto3's client only if a request needs it
    # (0.11 s of a download's start-up): awscrt's path, the HEAD included, never does.
    assert (store._boto3 is None) == (downloader == "crt")


def test_download_artifact_checks_the_checksum_the_store_reports(
    moto_server: S3Server, tmp_path: Path
) -> None:
    source = tmp_path / "ep1.pt"
    source.write_bytes(os.urandom(12 * MiB + 3))
    with make_store(moto_server) as store:
        store.upload_file("ep1.pt", source, overwrite=True)  # moto keeps its CRC64NVME
        assert store.stat("ep1.pt").checksum == Checksum.of(source.read_bytes())
        out = tmp_path / "out"
        out.mkdir()
        # One byte flipped in one ranged GET's answer, on its way to hoist.
        script = [("GET", "resume/ep1.pt", "corrupt_read")]
        with (
            FaultProxy(moto_server.endpoint_url, rate=0, script=script) as proxy,
            make_store(moto_server, proxy.url) as through,
            pytest.raises(ChecksumMismatchError, match="arrived as other bytes"),
        ):
            download_artifact("ep1.pt", out, store=through)
        assert proxy.stats.faults["corrupt_read"] == 1
        assert leftovers(out) == []  # neither the file nor its temporary sibling
        got = download_artifact("ep1.pt", out, store=store)  # the clean path still works
        assert Path(got.path).read_bytes() == source.read_bytes()


def test_a_short_object_fails_and_leaves_no_file(s3_server: S3Server, tmp_path: Path) -> None:
    data = os.urandom(11 * MiB)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="resume/short.bin", Body=data)
    target = tmp_path / "short.bin"
    with make_store(s3_server) as store:
        # What a record says was uploaded, one byte longer than what the store holds.
        expected = ObjectStat("short.bin", len(data) + 1, Checksum.of(data + b"x"))
        with pytest.raises(ChecksumMismatchError, match="changed while it was downloaded"):
            store.download_file("short.bin", target, expected=expected)
        same_size = ObjectStat("short.bin", len(data), Checksum.of(b"y" + data[1:]))
        with pytest.raises(ChecksumMismatchError, match="short.bin was not written"):
            store.download_file("short.bin", target, expected=same_size)
    assert leftovers(tmp_path) == []


class TimedStore(S3ObjectStore):
    """The real S3 store, recording when each file's download ran (to see overlap)."""

    spans: list[tuple[str, float, float]]

    def download_file(self, object_name, path, **kwargs):  # type: ignore[no-untyped-def,override]
        started = time.monotonic()
        try:
            return super().download_file(object_name, path, **kwargs)
        finally:
            self.spans.append((object_name, started, time.monotonic()))


def _write_checkpoint(server: S3Server, shards: int, size: int) -> tuple[Manifest, list[bytes]]:
    client = server.client()
    prefix = "run-r/checkpoints/step-00000007"
    blobs = [os.urandom(size + i) for i in range(shards)]
    files = []
    for i, blob in enumerate(blobs):
        name = f"{prefix}/__{i}_0.distcp"
        client.put_object(Bucket=server.bucket, Key=f"resume/{name}", Body=blob)
        files.append(ManifestFile(f"__{i}_0.distcp", name, len(blob), str(Checksum.of(blob)), i))
    manifest = Manifest("run-r", 7, "checkpoints", prefix, shards, tuple(files))
    client.put_object(
        Bucket=server.bucket, Key=f"resume/{manifest.object_name}", Body=manifest.to_bytes()
    )
    return manifest, blobs


def test_a_checkpoint_step_downloads_in_parallel_and_verifies(
    s3_server: S3Server, tmp_path: Path
) -> None:
    manifest, blobs = _write_checkpoint(s3_server, shards=6, size=6 * MiB)
    store = TimedStore(
        s3_server.bucket,
        "resume/",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        transfer_config=SMALL_PARTS,
    )
    store.spans = []
    with store:
        got = download_checkpoint(manifest.object_name, tmp_path / "resume", store=store)
    assert got.manifest == manifest
    for item, blob in zip(manifest.files, blobs, strict=True):
        assert (tmp_path / "resume" / item.path).read_bytes() == blob
    assert leftovers(tmp_path / "resume") == sorted(item.path for item in manifest.files)
    # Parallel across files: some file's download began before another's ended.
    spans = sorted(store.spans, key=lambda span: span[1])
    assert len(spans) == len(blobs)
    pairs = zip(spans, spans[1:], strict=False)
    assert any(later[1] < earlier[2] for earlier, later in pairs), spans


def test_a_shard_changed_after_its_commit_fails_against_the_manifest(
    s3_server: S3Server, tmp_path: Path
) -> None:
    manifest, blobs = _write_checkpoint(s3_server, shards=3, size=6 * MiB)
    changed = manifest.files[1]
    tampered = bytearray(blobs[1])
    tampered[len(tampered) // 2] ^= 0xFF  # same size, other bytes
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"resume/{changed.object_name}", Body=bytes(tampered)
    )
    dest = tmp_path / "resume"
    with (
        make_store(s3_server) as store,
        pytest.raises(CheckpointError, match="does not match the manifest of step 7") as err,
    ):
        fetch_checkpoint(store, manifest.object_name, str(dest))
    assert isinstance(err.value.__cause__, ChecksumMismatchError)
    assert changed.path not in leftovers(dest)  # the mismatching file was never renamed in
    assert not [name for name in leftovers(dest) if name.startswith(".hoist-download-")]


def test_awscrt_answers_are_translated_as_boto3_ones(s3_server: S3Server, tmp_path: Path) -> None:
    """A record's size skips the HEAD, so each failure below comes from awscrt's GET."""
    data = os.urandom(6 * MiB)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="resume/there.bin", Body=data)
    held = ObjectStat("x", len(data), Checksum.of(data))
    target = tmp_path / "out.bin"
    with make_store(s3_server) as store, pytest.raises(ObjectNotFoundError, match="gone.bin"):
        store.download_file("gone.bin", target, expected=held)
    wrong = S3ObjectStore(
        s3_server.bucket,
        "resume/",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        max_attempts=1,
    )
    if s3_server.name == "rclone":  # moto takes any secret
        with wrong, pytest.raises(StoreAuthError, match="denied"):
            wrong.download_file("there.bin", target, expected=held)
    unreachable = make_store(s3_server, f"http://127.0.0.1:{free_port()}")
    with unreachable, pytest.raises(StoreConnectionError, match="cannot reach"):
        unreachable.download_file("there.bin", target, expected=held)
    assert leftovers(tmp_path) == []


def test_an_endpoint_from_the_environment_is_the_server_downloads_and_writes_use(
    rclone_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 takes AWS_ENDPOINT_URL_S3 too: awscrt must go there, not to AWS, and a
    server that may ignore If-None-Match must not get conditional writes."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", rclone_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    data = os.urandom(6 * MiB + 1)
    rclone_server.client().put_object(Bucket=rclone_server.bucket, Key="env/e.bin", Body=data)
    with S3ObjectStore(
        rclone_server.bucket,
        "env/",
        aws_access_key_id=rclone_server.access_key,
        aws_secret_access_key=rclone_server.secret_key,
    ) as store:
        assert store.endpoint_url == rclone_server.endpoint_url
        assert not store.conditional_writes and store.checks_md5
        held = store.download_file("e.bin", tmp_path / "e.bin")
    assert held.checksum == Checksum.of(data)
    assert (tmp_path / "e.bin").read_bytes() == data


def test_no_credentials_on_the_awscrt_path_say_so(
    rclone_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A fresh boto3 session: the shared one keeps credentials an earlier test gave it.
    monkeypatch.setattr(s3_session, "SESSIONS", {})
    held = ObjectStat("x", 10, Checksum.of(b"0123456789"))
    with (
        S3ObjectStore(rclone_server.bucket, endpoint_url=rclone_server.endpoint_url) as store,
        pytest.raises(StoreAuthError, match="no AWS credentials"),
    ):
        store.download_file("x.bin", tmp_path / "x.bin", expected=held)  # no HEAD first
    assert leftovers(tmp_path) == []
