"""S3ObjectStore against real S3 servers on loopback (moto and rclone)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from botocore.exceptions import NoCredentialsError

from hoist.errors import (
    ChecksumMismatchError,
    ContainerNotFoundError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    SourceFileError,
    StoreAuthError,
    StoreConnectionError,
)
from hoist.stores import s3_crt, s3_session
from hoist.stores.base import Verification
from hoist.stores.checksum import Checksum, checksum_file
from hoist.stores.s3 import S3ObjectStore, S3TransferConfig
from hoist.stores.s3_crt import CrtClient
from hoist.stores.s3_errors import translate_s3_error
from tests.services.faultproxy import FaultProxy
from tests.services.process import free_port
from tests.services.s3 import S3Server

MiB = 1024 * 1024


def make_store(server: S3Server, **kwargs: object) -> S3ObjectStore:
    options: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "transfer_config": S3TransferConfig(multipart_threshold=8 * MiB, part_size=8 * MiB),
    }
    options.update(kwargs)
    bucket = str(options.pop("bucket", server.bucket))
    return S3ObjectStore(bucket, "tests/", **options)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def store(s3_server: S3Server):  # type: ignore[no-untyped-def]
    with make_store(s3_server) as s:
        yield s


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 20 * MiB + 3])
def test_round_trip(store: S3ObjectStore, make_file, tmp_path: Path, size: int) -> None:  # type: ignore[no-untyped-def]
    source = make_file(size)
    name = f"round-trip/{size}.bin"
    result = store.upload_file(name, source)

    local_size, local_checksum = checksum_file(str(source))
    assert (result.size, result.checksum) == (local_size, local_checksum)
    assert result.uri == f"s3://{store.bucket}/tests/{name}"
    # The server-side view, through a raw client rather than hoist's own code.
    assert store.stat(name).size == size
    target = tmp_path / "out" / "copy.bin"
    downloaded = store.download_file(name, target)
    assert sha256(target) == sha256(source)
    assert downloaded.checksum == local_checksum


@pytest.mark.slow
def test_200_mib_multipart_against_raw_client(s3_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    source = make_file(200 * MiB)
    with make_store(s3_server, transfer_config=S3TransferConfig()) as store:
        started = time.monotonic()
        parts: list[int] = []
        result = store.upload_file("big/200mib.bin", source, progress=parts.append)
        seconds = time.monotonic() - started
    print(
        f"\n{s3_server.name}: 200 MiB upload+verify {seconds:.2f} s, "
        f"{200 * MiB / seconds / 1e6:.0f} MB/s ({result.verified_by.value})"
    )
    raw = s3_server.client()
    head = raw.head_object(Bucket=s3_server.bucket, Key="tests/big/200mib.bin")
    assert head["ContentLength"] == 200 * MiB
    assert sorted(parts, reverse=True) == [8 * MiB] * 25, "expected 25 parts"
    digest = hashlib.sha256()
    for chunk in raw.get_object(Bucket=s3_server.bucket, Key="tests/big/200mib.bin")[
        "Body"
    ].iter_chunks(MiB):
        digest.update(chunk)
    assert digest.hexdigest() == sha256(source)
    assert result.checksum == checksum_file(str(source))[1]


def test_moto_full_object_checksum_is_used_when_trusted(moto_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    """moto computes the multipart FULL_OBJECT CRC64NVME from the bytes it holds."""
    source = make_file(20 * MiB)
    with make_store(moto_server, verify="checksum") as store:
        result = store.upload_file("trusted/obj.bin", source)
        assert result.verified_by is Verification.STORE_CHECKSUM
        assert store.stat("trusted/obj.bin").checksum == checksum_file(str(source))[1]


@pytest.mark.parametrize("size", [1000, 20 * MiB])
def test_non_aws_endpoints_verify_by_the_servers_md5_by_default(
    store: S3ObjectStore, make_file, size: int
) -> None:  # type: ignore[no-untyped-def]
    """Each request's ETag is the MD5 the server computed; no read-back is needed."""
    source = make_file(size)
    result = store.upload_file(f"auto/{size}.bin", source)
    assert result.verified_by is Verification.STORE_MD5
    assert store.read_back(f"auto/{size}.bin").checksum == checksum_file(str(source))[1]


def test_read_back_on_request(s3_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    with make_store(s3_server, verify="read-back") as store:
        assert (
            store.upload_file("rb/obj.bin", make_file(1000)).verified_by is Verification.READ_BACK
        )
        assert store.put_bytes("rb/p.symlink", b"x").verified_by is Verification.READ_BACK


def test_an_etag_that_is_no_md5_falls_back_to_a_read_back(moto_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    """Servers that encrypt objects answer with an ETag that is not an MD5."""
    proxy = FaultProxy(moto_server.endpoint_url, rate=0, opaque_etags=True)
    with proxy, make_store(moto_server, endpoint_url=proxy.url) as store:
        result = store.upload_file("opaque/obj.bin", make_file(1000))
        assert result.verified_by is Verification.READ_BACK
        assert store.put_bytes("opaque/p.symlink", b"x").verified_by is Verification.READ_BACK


def test_a_multipart_object_is_proved_by_the_composite_etag(
    moto_server: S3Server, make_file
) -> None:  # type: ignore[no-untyped-def]
    """Complete's ETag must be the MD5 of our parts' MD5s; if it has another form, a HEAD
    checks the size; if it has that form but another value, the parts were not ours."""
    source = make_file(20 * MiB)  # three 8 MiB parts
    plain = FaultProxy(moto_server.endpoint_url, rate=0, complete_etag='"' + "0" * 32 + '"')
    with plain, make_store(moto_server, endpoint_url=plain.url) as store:
        assert store.upload_file("mp/plain.bin", source).verified_by is Verification.STORE_MD5
    wrong = FaultProxy(moto_server.endpoint_url, rate=0, complete_etag='"' + "0" * 32 + '-3"')
    with wrong, make_store(moto_server, endpoint_url=wrong.url) as store:
        with pytest.raises(ChecksumMismatchError, match="assembled from other parts"):
            store.upload_file("mp/wrong.bin", source)
        assert not store.exists("mp/wrong.bin"), "the unproved object must not stay"


SMALL_REQUESTS = pytest.mark.parametrize("small_requests", ["crt", "boto3"])
"""Both clients a PUT under 1 MiB may go through (awscrt's is the default)."""


@SMALL_REQUESTS
def test_bytes_the_server_received_wrong_are_caught_by_its_md5(
    moto_server: S3Server, make_file, small_requests: str
) -> None:  # type: ignore[no-untyped-def]
    """moto accepts a body that does not match Content-MD5; its ETag still gives it away."""
    script = [("PUT", "", "corrupt_upload")]
    proxy = FaultProxy(moto_server.endpoint_url, rate=0, script=script)
    options = {"endpoint_url": proxy.url, "small_requests": small_requests}
    with proxy, make_store(moto_server, **options) as store:
        with pytest.raises(ChecksumMismatchError, match="MD5"):
            store.upload_file("corrupt/obj.bin", make_file(1000))
        assert proxy.stats.faults == {"corrupt_upload": 1}
        assert not store.exists("corrupt/obj.bin"), "the bad object must not stay"


@pytest.mark.parametrize("method", ["PUT", "HEAD"])
def test_a_small_request_whose_answer_stalls_times_out(moto_server: S3Server, method: str) -> None:
    """awscrt has no read timeout: hoist bounds a small PUT or a HEAD by ``read_timeout``
    itself, so a server that never answers costs a retry, not a worker slot for ever."""
    proxy = FaultProxy(moto_server.endpoint_url, rate=0, script=[(method, "", "stall")])
    proxy.stall_seconds = 30.0
    options = {"read_timeout": 1.0, "max_attempts": 1, "small_requests": "crt"}
    with proxy, make_store(moto_server, endpoint_url=proxy.url, **options) as store:
        started = time.monotonic()
        expected = f"no answer within 1.0 s to {method}"
        with pytest.raises(StoreConnectionError, match=expected) as caught:
            if method == "PUT":
                store.put_bytes("stalled/pointer.symlink", b"runs/r1/ep1.pt")
            else:
                store.stat("stalled/anything.bin")
        assert time.monotonic() - started < 10
        assert caught.value.retryable
        assert proxy.stats.faults == {"stall": 1}


def test_echoed_checksum_is_not_trusted_by_default(moto_server: S3Server) -> None:
    """A server that stores a wrong checksum unchecked must not fool verification."""
    raw = moto_server.client()
    wrong = Checksum.from_int(12345).to_base64()
    raw.put_object(
        Bucket=moto_server.bucket, Key="tests/lie.bin", Body=b"abc", ChecksumCRC64NVME=wrong
    )
    with make_store(moto_server) as store:
        assert store.verify("lie.bin", 3, Checksum.of(b"abc")) is Verification.READ_BACK


def test_put_get_bytes(store: S3ObjectStore) -> None:
    result = store.put_bytes("links/latest.pt.symlink", b"runs/r1/ep3.pt")
    assert result.checksum == Checksum.of(b"runs/r1/ep3.pt")
    assert store.get_bytes("links/latest.pt.symlink") == b"runs/r1/ep3.pt"
    store.put_bytes("links/latest.pt.symlink", b"runs/r1/ep4.pt")
    assert store.get_bytes("links/latest.pt.symlink") == b"runs/r1/ep4.pt"
    with pytest.raises(ObjectExistsError):
        store.put_bytes("links/latest.pt.symlink", b"x", overwrite=False)


def test_overwrite_rules(store: S3ObjectStore, make_file) -> None:  # type: ignore[no-untyped-def]
    first = make_file(100, "first.bin")
    second = make_file(100, "second.bin")
    store.upload_file("ow/obj.bin", first)
    with pytest.raises(ObjectExistsError, match="overwrite=True"):
        store.upload_file("ow/obj.bin", second)
    assert store.get_bytes("ow/obj.bin") == first.read_bytes()
    again = store.upload_file("ow/obj.bin", first)
    assert again.already_present
    store.upload_file("ow/obj.bin", second, overwrite=True)
    assert store.get_bytes("ow/obj.bin") == second.read_bytes()


@SMALL_REQUESTS
def test_conditional_writes_take_one_request_and_keep_the_overwrite_rules(
    moto_server: S3Server,
    make_file,  # type: ignore[no-untyped-def]
    small_requests: str,
) -> None:
    """moto honours ``If-None-Match: *`` as AWS does: no HEAD before a write to a free name."""
    first = make_file(100, "first.bin")
    second = make_file(100, "second.bin")
    proxy = FaultProxy(moto_server.endpoint_url, rate=0)
    options = {"conditional_writes": True, "small_requests": small_requests}
    with proxy, make_store(moto_server, endpoint_url=proxy.url, **options) as store:
        written = store.upload_file(f"cond-{small_requests}/obj.bin", first)
        assert not written.already_present and written.verified_by is Verification.STORE_MD5
        methods = [e.split()[1] for e in proxy.stats.events]
        assert methods == ["PUT"], proxy.stats.events  # the write alone
        # A taken name is then judged as before: same bytes accepted, others refused.
        assert store.upload_file(f"cond-{small_requests}/obj.bin", first).already_present
        with pytest.raises(ObjectExistsError, match="overwrite=True"):
            store.upload_file(f"cond-{small_requests}/obj.bin", second)
        assert store.get_bytes(f"cond-{small_requests}/obj.bin") == first.read_bytes()
        # An earlier attempt's own leftover is still replaced.
        store.upload_file(f"cond-{small_requests}/obj.bin", second, replace_own_leftover=True)
        assert store.get_bytes(f"cond-{small_requests}/obj.bin") == second.read_bytes()
        seen: list[int] = []
        store.upload_file(f"cond-{small_requests}/counted.bin", first, progress=seen.append)
        assert seen == [100]  # told once written, never before a refused condition


def test_servers_that_may_ignore_the_condition_get_a_head_first(
    rclone_server: S3Server,
    make_file,  # type: ignore[no-untyped-def]
) -> None:
    """rclone answers 200 to a conditional PUT on a taken name and overwrites: off by default."""
    first = make_file(100, "first.bin")
    proxy = FaultProxy(rclone_server.endpoint_url, rate=0)
    with proxy, make_store(rclone_server, endpoint_url=proxy.url) as store:
        assert not store.conditional_writes
        store.upload_file("cond/obj.bin", first)
        assert [e.split()[1] for e in proxy.stats.events] == ["HEAD", "PUT"]


def test_exists_delete_missing(store: S3ObjectStore, tmp_path: Path) -> None:
    assert not store.exists("nothing/here")
    with pytest.raises(ObjectNotFoundError):
        store.stat("nothing/here")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("nothing/here")
    target = tmp_path / "never.bin"
    with pytest.raises(ObjectNotFoundError):
        store.download_file("nothing/here", target)
    assert list(tmp_path.iterdir()) == []
    store.put_bytes("gone.txt", b"x")
    assert store.exists("gone.txt")
    store.delete("gone.txt")
    assert not store.exists("gone.txt")
    store.delete("gone.txt")


def test_progress_counts_every_byte(store: S3ObjectStore, make_file) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    store.upload_file("progress.bin", make_file(20 * MiB), progress=seen.append)
    assert sum(seen) == 20 * MiB


@pytest.mark.parametrize("name", ["", "/", "a/../b", "..", "x\x00y"])
def test_bad_object_names_fail_before_any_request(name: str, make_file) -> None:  # type: ignore[no-untyped-def]
    dead = S3ObjectStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        max_attempts=1,
    )
    with pytest.raises(InvalidObjectNameError):
        dead.upload_file(name, make_file(1))
    with pytest.raises(ValueError):
        dead.put_bytes(name, b"")


def test_source_must_be_a_file(store: S3ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="not a regular file"):
        store.upload_file("dir.bin", tmp_path)
    with pytest.raises(SourceFileError, match="no such file"):
        store.upload_file("missing.bin", tmp_path / "missing")


def test_missing_bucket(s3_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    with make_store(s3_server, bucket="no-such-bucket") as store:
        with pytest.raises(ContainerNotFoundError, match="no-such-bucket"):
            store.check()
        with pytest.raises(ContainerNotFoundError):
            store.upload_file("x.bin", make_file(10), overwrite=True)


def test_wrong_credentials(rclone_server: S3Server, make_file) -> None:  # type: ignore[no-untyped-def]
    with make_store(rclone_server, aws_secret_access_key="wrong-secret") as store:
        with pytest.raises(StoreAuthError, match="credentials"):
            store.check()
        with pytest.raises(StoreAuthError):
            store.upload_file("x.bin", make_file(10))
        with pytest.raises(StoreAuthError):
            store.exists("x.bin")  # a 403 is never "absent"


def test_unreachable_endpoint(make_file) -> None:  # type: ignore[no-untyped-def]
    store = S3ObjectStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        max_attempts=1,
    )
    with pytest.raises(StoreConnectionError, match="cannot reach"):
        store.check()
    with pytest.raises(StoreConnectionError):
        store.upload_file("x.bin", make_file(10))


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3ObjectStore("bucket/with/slash")
    with pytest.raises(ValueError, match="5 MiB"):
        S3TransferConfig(part_size=MiB)


def test_missing_credentials_say_the_workers_environment_is_what_counts() -> None:
    """Exporting AWS_* in the training shell does not reach running workers; the error says so."""
    error = translate_s3_error(
        NoCredentialsError(), bucket="ckpts", where="s3://ckpts/ep1.pt", endpoint="AWS S3",
        for_object=True,
    )  # fmt: skip
    assert isinstance(error, StoreAuthError)
    text = str(error)
    assert text.startswith("no AWS credentials for s3://ckpts/ep1.pt: this process found none")
    assert "environment it was started with" in text and "restart them" in text
    assert "aws_access_key_id" in text


def test_a_proxy_in_the_environment_chooses_boto3_for_every_request(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """awscrt's client does not use ``HTTPS_PROXY``: a store whose server is behind one
    takes the boto3 path for everything, unless told otherwise or ``NO_PROXY`` says so."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with make_store(s3_server) as store:
        assert (store.downloader, store.small_requests) == ("crt", "crt")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.invalid:3128")  # botocore ignores it
    with make_store(s3_server) as store:
        assert (store.downloader, store.small_requests) == ("crt", "crt")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with make_store(s3_server) as store:
        assert (store.downloader, store.small_requests) == ("boto3", "boto3")
    with make_store(s3_server, small_requests="crt") as store:
        assert (store.downloader, store.small_requests) == ("boto3", "crt")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with make_store(s3_server) as store:
        assert (store.downloader, store.small_requests) == ("crt", "crt")


def test_the_boto3_path_makes_no_awscrt_request(
    s3_server: S3Server, make_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """With ``downloader`` and ``small_requests`` set to boto3, a small upload, its
    check, a stat and a download all go through boto3 (awscrt's requests would raise)."""

    def refused(*_: object, **__: object) -> None:
        raise AssertionError("awscrt's client was used")

    monkeypatch.setattr(CrtClient, "_finish", refused)
    options = {"downloader": "boto3", "small_requests": "boto3"}
    with make_store(s3_server, **options) as store:
        source = make_file(1000)
        assert store.upload_file("boto3-only/obj.bin", source).size == 1000
        assert store.stat("boto3-only/obj.bin").size == 1000
        store.download_file("boto3-only/obj.bin", tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()


def test_a_child_forked_while_a_store_is_being_built_can_build_its_own() -> None:
    """Celery forks pool children while the worker's main process may be building a
    store (the resender's prunes): the child must not inherit the session lock held."""
    with s3_session.SESSIONS_LOCK, s3_crt._LOOPS_LOCK:
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if both locks are free in it
            sessions, loops = s3_session.SESSIONS_LOCK, s3_crt._LOOPS_LOCK
            free = sessions.acquire(timeout=2) and loops.acquire(timeout=2)
            os._exit(0 if free else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
