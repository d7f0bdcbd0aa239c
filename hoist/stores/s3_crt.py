"""Downloads and small PUTs through awscrt's ``S3Client``: requests in C, bytes hashed in order.

Why: a restarted job's GPUs wait while each rank fetches its checkpoint, and
boto3 moves every byte of a GET through Python (urllib3's reads under the
GIL). awscrt, already a dependency for CRC64NVME, splits a GET into ranged
part requests, runs them on its own event-loop threads and hands the body
back as buffers. Measured against ``rclone serve s3`` on the 2-core machine,
1 GiB, alternating in one process (docs/benchmarks.md): awscrt 1.23 s,
boto3 ranged GETs (:mod:`hoist.stores.s3_download`) 1.73 s, ``s5cmd cp`` 1.28 s.

Each buffer is written at its offset and hashed as it arrives; the pieces'
CRCs are combined in offset order (``combine_crc64nvme``), so the
whole-object checksum costs no second pass and does not depend on the order
awscrt delivers them in. Memory is awscrt's part buffers: about 70 MiB peak
RSS with 2 connections, 120 MiB with 4 (the store's ``max_concurrency``).

Small PUTs (bodies under 1 MiB: small files, pointers, manifests) go the
same way: a PutObject through boto3 cost 1.6-1.75 ms of CPU against 0.55-0.7
ms through this client, 64 KiB bodies to ``rclone serve s3`` (1,000 in a row,
three runs, docs/benchmarks.md), and a small file's upload is mostly that
request. Larger files keep boto3's multipart upload, whose parts are proved
by the server's MD5s (:mod:`hoist.stores.s3_multipart`).

awscrt's client does not use ``HTTPS_PROXY`` or boto3's configuration files:
with a proxy in the environment for the server (:func:`proxied`) the store
takes the boto3 path, as ``S3ObjectStore(downloader="boto3",
small_requests="boto3")`` does.
Credentials come from the store's boto3 client on every request, so a
refreshed session token is used as boto3 would.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.exceptions as boto_errors
from awscrt import auth, http, s3
from awscrt import io as crt_io
from awscrt.checksums import combine_crc64nvme, crc64nvme
from awscrt.exceptions import AwsCrtError

from hoist.errors import ChecksumMismatchError
from hoist.stores.checksum import Checksum, Progress
from hoist.stores.file_writes import write_at

Credentials = Callable[[], Any]
"""Returns botocore ``Credentials`` (or None): the store's client's, read per request."""

_LOOPS: dict[int, crt_io.ClientBootstrap] = {}
_LOOPS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_LOOPS_LOCK._at_fork_reinit)  # type: ignore[attr-defined]


def _bootstrap() -> crt_io.ClientBootstrap:
    """One event-loop group per process: awscrt's threads do not survive a fork."""
    with _LOOPS_LOCK:
        pid = os.getpid()
        if pid not in _LOOPS:
            _LOOPS.clear()
            group = crt_io.EventLoopGroup(2)  # two cores here; the GETs wait on the network
            _LOOPS[pid] = crt_io.ClientBootstrap(group, crt_io.DefaultHostResolver(group))
        return _LOOPS[pid]


@dataclass(frozen=True)
class Address:
    """Where an object's GET goes: the ``Host`` header, the request path, and TLS or not.

    Example:
        >>> Address.of("ckpts", "run 1/ep1.pt", "http://127.0.0.1:9000", "us-east-1")
        Address(host='127.0.0.1:9000', path='/ckpts/run%201/ep1.pt', tls=False)
        >>> Address.of("ckpts", "ep1.pt", None, "eu-west-1")
        Address(host='ckpts.s3.eu-west-1.amazonaws.com', path='/ep1.pt', tls=True)
    """

    host: str
    path: str
    tls: bool

    @classmethod
    def of(cls, bucket: str, key: str, endpoint_url: str | None, region: str) -> Address:
        quoted = quote(key, safe="/~")
        if endpoint_url is None:
            if "." in bucket:  # a dotted name breaks the TLS certificate's wildcard
                return cls(f"s3.{region}.amazonaws.com", f"/{bucket}/{quoted}", True)
            return cls(f"{bucket}.s3.{region}.amazonaws.com", f"/{quoted}", True)
        # A server of its own: path-style, as the boto3 client is configured.
        parts = urlsplit(endpoint_url)
        base = parts.path.rstrip("/")
        return cls(parts.netloc, f"{base}/{bucket}/{quoted}", parts.scheme == "https")


def is_aws(endpoint_url: str | None) -> bool:
    """Whether ``endpoint_url`` is AWS S3 itself (None is).

    Example:
        >>> is_aws("https://s3.eu-west-1.amazonaws.com"), is_aws("http://127.0.0.1:9000")
        (True, False)
    """
    if endpoint_url is None:
        return True
    return (urlsplit(endpoint_url).hostname or "").endswith(".amazonaws.com")


def proxied(endpoint_url: str) -> bool:
    """Whether the environment sends requests to ``endpoint_url`` through a proxy, as
    boto3 reads it (``HTTPS_PROXY`` or ``HTTP_PROXY`` by the URL's scheme, unless
    ``NO_PROXY`` names the host; botocore ignores ``ALL_PROXY``): awscrt's client would
    go around it (tested in tests/test_store_s3.py).
    """
    parts = urlsplit(endpoint_url)
    wanted = parts.scheme in urllib.request.getproxies()
    return wanted and not urllib.request.proxy_bypass(parts.hostname or "")


def bucket_region(client: Any, bucket: str, endpoint_url: str | None) -> str:
    """The region to sign for: on AWS the bucket's own (boto3 follows S3's redirect
    to it, awscrt does not), as a HEAD's header names it; else the client's."""
    region = str(client.meta.region_name or "us-east-1")
    if endpoint_url is not None:
        return region
    try:
        answer = client.head_bucket(Bucket=bucket)
    except boto_errors.ClientError as exc:  # a 403 still names the region
        answer = exc.response
    except boto_errors.BotoCoreError:
        return region
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return str(headers.get("x-amz-bucket-region") or region)


class CrtClient:
    """awscrt's S3 client for one store, used for its downloads and small PUTs.

    Parameters:
        bucket: the bucket.
        endpoint_url: the server, or None for AWS.
        region: the region requests are signed for.
        credentials: the store's boto3 credentials (see :data:`Credentials`).
        part_size: bytes per ranged GET.
        connections: connections at once, the bound on memory.
        attempts: tries of each part request, as boto3's ``max_attempts``.
        connect_timeout: seconds to open a connection.

    Example (tested in tests/test_resume.py against moto and rclone):
        >>> endpoint = "http://127.0.0.1:9000"
        >>> crt = CrtClient("b", endpoint, "us-east-1", creds, 8 << 20, 4)  # doctest: +SKIP
        >>> crt.download("k", "s3://b/k", size, fd)  # doctest: +SKIP
        Checksum(algorithm='crc64nvme', value='...')
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        credentials: Credentials,
        part_size: int,
        connections: int,
        attempts: int = 3,
        connect_timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = credentials
        self._credentials_error: Exception | None = None
        provider = auth.AwsCredentialsProvider.new_delegate(self._crt_credentials)
        tls = Address.of(bucket, "k", endpoint_url, region).tls
        self._client = s3.S3Client(
            bootstrap=_bootstrap(),
            region=region,
            signing_config=s3.create_default_s3_signing_config(
                region=region, credential_provider=provider
            ),
            tls_mode=s3.S3RequestTlsMode.ENABLED if tls else s3.S3RequestTlsMode.DISABLED,
            part_size=part_size,
            max_active_connections_override=connections,
            # Only a hint for its connection count, which the override caps anyway.
            throughput_target_gbps=1.0,
            retry_config=_retries(attempts),
            connect_timeout_ms=max(1, int(connect_timeout * 1000)),
        )

    def _crt_credentials(self) -> auth.AwsCredentials:
        try:
            held = self._credentials()
            if held is None:
                raise boto_errors.NoCredentialsError()
            frozen = held.get_frozen_credentials()
        except Exception as exc:
            # awscrt reports only "the delegate failed": the request raises this instead.
            self._credentials_error = exc
            raise
        return auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

    def download(
        self, key: str, where: str, size: int, fd: int, progress: Progress | None = None
    ) -> Checksum:
        """Write the object ``key`` (``size`` bytes) into ``fd``; return its CRC64NVME.

        Raises:
            ChecksumMismatchError: the object is not ``size`` bytes (it changed
                since its size was read).
            botocore.exceptions.ClientError: the server refused (the store
                translates it as every S3 error, :mod:`hoist.stores.s3_errors`).
            ConnectionError: the server could not be reached or the transfer broke.
        """
        body = _Body(fd, size, where, progress)
        self._finish("GET", key, [], on_body=body.receive, failure=lambda: body.failure)
        return body.checksum()

    def put(self, key: str, data: bytes, headers: list[tuple[str, str]], timeout: float) -> str:
        """Write ``data`` as the object ``key`` in one PutObject; return the ETag answered.

        Parameters:
            headers: the request's own headers (``Content-MD5``, the checksum,
                ``If-None-Match``); ``Host`` and ``Content-Length`` are added.
            timeout: seconds the whole request may take (see :meth:`head`).

        Raises:
            botocore.exceptions.ClientError: the server refused (a 412 for a
                name an ``If-None-Match: *`` found taken).
            ConnectionError, TimeoutError: no answer.
        """
        fields = [("Content-Length", str(len(data))), *headers]
        answer = self._finish("PUT", key, fields, timeout, body=io.BytesIO(data))
        if "etag" not in answer:  # a web server's 200, not S3's: as boto3 says it (s3_errors)
            raise KeyError("ETag")
        return answer["etag"]

    def head(self, key: str, timeout: float) -> dict[str, str]:
        """The answer's headers (names in lower case) to a HeadObject of ``key``,
        asking for its checksum.

        ``timeout`` bounds the whole request: awscrt has no read timeout of its
        own, and a request this small that takes longer has stalled.

        Raises:
            botocore.exceptions.ClientError: the server refused (a 404 for a missing object).
            ConnectionError, TimeoutError: no answer.
        """
        return self._finish("HEAD", key, [("x-amz-checksum-mode", "ENABLED")], timeout)

    def _finish(
        self,
        method: str,
        key: str,
        headers: list[tuple[str, str]],
        timeout: float | None = None,
        body: io.BytesIO | None = None,
        on_body: Callable[..., None] | None = None,
        failure: Callable[[], Exception | None] = lambda: None,
    ) -> dict[str, str]:
        """Make one request and wait for its end; return the answer's headers.

        awscrt's errors are raised as boto3's would be, so the store maps them as
        every S3 error; ``failure`` is an error our own ``on_body`` stopped the
        transfer with.
        """
        if self._credentials() is None:  # said here, not from inside awscrt's callback
            raise boto_errors.NoCredentialsError()
        address = Address.of(self.bucket, key, self.endpoint_url, self.region)
        fields = http.HttpHeaders([("Host", address.host), *headers])
        answer: dict[str, str] = {}

        def on_headers(headers: list[tuple[str, str]], **_: Any) -> None:
            answer.update((name.lower(), value) for name, value in headers)

        transfer = self._client.make_request(
            type=s3.S3RequestType.GET_OBJECT if method == "GET" else s3.S3RequestType.DEFAULT,
            operation_name=_OPERATIONS[method],
            request=http.HttpRequest(method, address.path, fields, body),
            on_headers=on_headers,
            on_body=on_body,
        )
        try:
            transfer.finished_future.result(timeout=timeout)
        except s3.S3ResponseError as exc:
            raise _client_error(exc) from None
        except AwsCrtError as exc:
            if (stopped := failure()) is not None:
                raise stopped from None
            if self._credentials_error is not None and "CREDENTIALS" in exc.name:
                raise self._credentials_error from None
            raise ConnectionError(f"{exc.name}: {exc.message}") from None
        except BaseException as exc:
            # Interrupted (Ctrl-C) or timed out: awscrt's threads must stop using
            # the request's buffers and descriptors before the caller lets them go.
            transfer.cancel()
            with contextlib.suppress(BaseException):
                transfer.finished_future.result(timeout=30)
            if isinstance(exc, FutureTimeout):
                raise TimeoutError(
                    f"no answer within {timeout} s to {method} {address.path}"
                ) from None
            raise
        return answer


class _Body:
    """The response body of one GET: written at its offsets, each piece hashed."""

    def __init__(self, fd: int, size: int, where: str, progress: Progress | None) -> None:
        self.fd = fd
        self.size = size
        self.where = where
        self.progress = progress
        self.pieces: list[tuple[int, int, int]] = []  # offset, length, crc
        self.failure: ChecksumMismatchError | None = None

    def receive(self, chunk: Any, offset: int, **_: Any) -> None:
        if self.failure is not None:
            return
        view = memoryview(chunk)
        if offset + len(view) > self.size:
            self.failure = self._changed(f"more than {self.size} bytes")
            raise self.failure  # awscrt cancels the transfer on an exception here
        write_at(self.fd, view, offset)
        self.pieces.append((offset, len(view), crc64nvme(view)))
        if self.progress is not None:
            self.progress(len(view))

    def checksum(self) -> Checksum:
        crc, end = 0, 0
        for offset, length, piece in sorted(self.pieces):
            if offset != end:
                raise self._changed(f"no bytes at offset {end}")
            crc, end = combine_crc64nvme(crc, piece, length), end + length
        if end != self.size:
            raise self._changed(f"{end} bytes")
        return Checksum.from_int(crc)

    def _changed(self, what: str) -> ChecksumMismatchError:
        return ChecksumMismatchError(
            f"{self.where} changed while it was downloaded: it came as {what}, "
            f"expected {self.size} bytes"
        )


_OPERATIONS = {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject"}
"""The S3 operation of each method hoist sends (awscrt names it in its errors)."""


def _retries(attempts: int) -> s3.S3RetryConfig:
    # 0 retries means "awscrt's default of 5" to awscrt: no retries is a mode.
    if attempts <= 1:
        return s3.S3RetryConfig(retry_mode=s3.S3RetryMode.NONE)
    return s3.S3RetryConfig(max_retries=attempts - 1)


def _client_error(exc: s3.S3ResponseError) -> boto_errors.ClientError:
    """The S3 error answer as boto3 would raise it, so one module decides what it means."""
    code, message = "", ""
    if exc.body:
        try:
            root = ElementTree.fromstring(exc.body)
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = exc.body[:200].decode("utf-8", "replace")
    status = int(exc.status_code or 0)
    return boto_errors.ClientError(
        {
            "Error": {"Code": code or str(status), "Message": message or exc.message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        exc.operation_name or "GetObject",
    )
