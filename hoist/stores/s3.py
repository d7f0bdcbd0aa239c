"""Amazon S3 and S3-compatible servers, through boto3.

Uploads are hoist's own rather than boto3's ``upload_file``: s3transfer reads
parts through separate file handles, in no fixed order, so it cannot hash the
whole object in the same pass. Here the file is read once, in order; each part
is hashed into the running whole-object CRC64NVME and handed to a thread pool,
with at most ``max_concurrency`` parts in memory
(:mod:`hoist.stores.s3_multipart`). The multipart upload is created with
``ChecksumType=FULL_OBJECT`` so S3 checks the whole-object checksum we send at
completion and reports it back on ``HeadObject``. What boto3's errors mean is
decided in :mod:`hoist.stores.s3_errors`.

Verification (``verify=``):

- ``"checksum"`` (the ``"auto"`` choice on AWS): AWS validates the checksum a
  client sends and computes the full-object CRC64NVME itself, so the checksum
  ``HeadObject`` reports proves the bytes.
- ``"md5"`` (the ``"auto"`` choice elsewhere): every PUT and UploadPart carries
  ``Content-MD5``, and the ETag the server answers with, the MD5 it computed of
  the bytes it received, must equal ours. Servers that validate Content-MD5
  (rclone, MinIO, Ceph) refuse corrupted bytes outright; those that do not
  (moto) still answer with the MD5 of what they got, so the comparison catches
  them. A multipart object is then the parts the server vouched for, in the
  order we listed them; one ``HeadObject`` checks its assembled size. This is
  the integrity model of the AWS CLI and s5cmd, and it costs no second
  transfer: a read-back doubled the time of a large upload
  (docs/benchmarks.md). An ETag that is not an MD5 (SSE-KMS, some gateways)
  falls back to a read-back for that object.
- ``"read-back"``: stream the object back and hash it; for servers whose ETag
  is something else entirely.

Checksums echoed unchecked are never trusted: moto and ``rclone serve s3``
store whatever ``x-amz-checksum-*`` a PUT sends (../shared/FACTS.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import botocore.exceptions as boto_errors
from botocore.client import BaseClient
from botocore.config import Config

from hoist.errors import ChecksumMismatchError, ConfigurationError, HoistError
from hoist.stores.base import ObjectStat, ObjectStore, Verification
from hoist.stores.checksum import Checksum, HashingReader, Progress, SentBytes
from hoist.stores.file_writes import preallocate
from hoist.stores.leftovers import Leftover, s3_multipart_uploads
from hoist.stores.s3_config import S3TransferConfig
from hoist.stores.s3_crt import CrtClient, bucket_region, is_aws, proxied
from hoist.stores.s3_download import RangedDownload
from hoist.stores.s3_errors import http_status, translate_s3_error
from hoist.stores.s3_multipart import MultipartUpload
from hoist.stores.s3_session import SESSIONS_LOCK, credentials_of, session

MiB = 1024 * 1024
_MD5_HEX = re.compile("[0-9a-f]{32}")
_COMPOSITE_ETAG = re.compile("[0-9a-f]{32}-[0-9]+")


PROGRESS_BODY_BYTES = 1024 * 1024
"""Single PUTs of at least this many bytes report progress as they are sent;
smaller ones go through awscrt's client (``small_requests="crt"``)."""

_BOTO3_PARAMETERS = {
    "Content-MD5": "ContentMD5",
    "If-None-Match": "IfNoneMatch",
    "x-amz-checksum-crc64nvme": "ChecksumCRC64NVME",
}
"""The headers hoist sends on a PutObject, as boto3's ``put_object`` names them."""


class S3ObjectStore(ObjectStore):
    """A bucket in Amazon S3 or an S3-compatible server.

    Parameters:
        bucket: the bucket name.
        prefix: prepended to every object name (``"team/runs/"``).
        endpoint_url: an S3-compatible server (MinIO, Ceph, R2, ...); None for AWS.
        region_name: the bucket's region.
        aws_access_key_id, aws_secret_access_key, aws_session_token, profile_name:
            credentials; by default boto3's usual chain (environment, config
            files, instance role).
        transfer_config: part size and concurrency, see :class:`S3TransferConfig`.
        request_checksum_calculation: boto3's own request checksum mode.
            hoist sends its own checksum, so the default ``"when_required"``
            avoids a second hash pass and the ``aws-chunked`` encoding that
            many S3-compatible servers mishandle.
        verify: ``"auto"``, ``"checksum"``, ``"md5"`` or ``"read-back"`` (see the
            module docs).
        connect_timeout, read_timeout: seconds, per request.
        max_attempts: boto3's retries of one request, before hoist's own.
        downloader: ``"crt"`` (awscrt's S3 client: ranged GETs in C, about 1.4x
            faster than boto3's here, :mod:`hoist.stores.s3_crt`) or ``"boto3"``
            (ranged GETs on the boto3 client; :mod:`hoist.stores.s3_download`).
        small_requests: ``"crt"`` (HEADs and PUTs of bodies under 1 MiB
            through awscrt's client: about 1 ms less CPU each, which is most of a
            small file's upload) or ``"boto3"``. Both default to ``"crt"``
            unless the environment names a proxy for the server (``HTTPS_PROXY``
            and the like, which awscrt does not use); then to ``"boto3"``. Set
            ``"boto3"`` for boto3's configuration files' other settings. Through
            awscrt, ``read_timeout`` bounds each such request whole, its retries
            and its wait for one of the client's ``max_concurrency`` connections
            included (awscrt has no read timeout of its own).
        conditional_writes: with ``overwrite=False``, write a file below the
            multipart threshold with ``If-None-Match: *`` (the server refuses
            if the name is taken) instead of a HEAD first: one request per file
            instead of two. None (the default) is True on AWS only: set True
            for a server that honours it (MinIO, Ceph, R2, moto), never for one
            that ignores it (``rclone serve s3``), which would then overwrite.

    Example:
        >>> store = S3ObjectStore(  # doctest: +SKIP
        ...     "my-bucket", prefix="runs/", region_name="us-west-2"
        ... )
        >>> store.upload_file("run1/ep1.pt", "/tmp/ep1.pt").uri  # doctest: +SKIP
        's3://my-bucket/runs/run1/ep1.pt'
    """

    scheme = "s3"
    max_name_bytes = 1024  # S3's limit on a key

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        transfer_config: S3TransferConfig | dict[str, int] | None = None,
        request_checksum_calculation: Literal["when_required", "when_supported"] = "when_required",
        verify: Literal["auto", "checksum", "md5", "read-back"] = "auto",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        downloader: Literal["crt", "boto3"] | None = None,
        small_requests: Literal["crt", "boto3"] | None = None,
        conditional_writes: bool | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigurationError(
                f"bucket name {bucket!r} is invalid; give the bare bucket name"
            )
        if verify not in ("auto", "checksum", "md5", "read-back"):
            raise ConfigurationError(
                f"verify={verify!r}; use 'auto', 'checksum', 'md5' or 'read-back'"
            )
        for option, value in (("downloader", downloader), ("small_requests", small_requests)):
            if value not in (None, "crt", "boto3"):
                raise ConfigurationError(f"{option}={value!r}; use 'crt' or 'boto3'")
        self.bucket = bucket
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.prefix = prefix.lstrip("/")
        if isinstance(transfer_config, dict):  # as it arrives in a task message
            transfer_config = S3TransferConfig(**transfer_config)
        self.transfer = transfer_config or S3TransferConfig()
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=self.transfer.max_concurrency + 2,
            request_checksum_calculation=request_checksum_calculation,
            response_checksum_validation="when_required",
            # IP and localhost endpoints cannot take virtual-hosted bucket names.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self._profile_name, self._config, self._boto3 = profile_name, config, None
        self._keys = {
            "endpoint_url": endpoint_url,
            "region_name": region_name or ("us-east-1" if endpoint_url else None),
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        self._credentials = credentials_of(
            profile_name, aws_access_key_id, aws_secret_access_key, aws_session_token
        )
        # The server boto3 talks to: also AWS_ENDPOINT_URL(_S3) or a profile's endpoint_url,
        # which only its client knows; with endpoint_url given, no client is built yet.
        effective = endpoint_url or self._client.meta.endpoint_url
        self.endpoint_url = None if is_aws(effective) else effective
        # awscrt's client goes around proxies: with one for this server, boto3 does it all.
        either: Literal["crt", "boto3"] = "boto3" if proxied(effective) else "crt"
        self.downloader, self.small_requests = downloader or either, small_requests or either
        if verify == "auto":
            verify = "checksum" if self.endpoint_url is None else "md5"
        self.trusts_reported_checksum = verify == "checksum"
        self.checks_md5 = verify == "md5"
        # AWS has honoured If-None-Match on PutObject since 2024-08; rclone serve s3
        # ignores it, and an ignored condition would overwrite, so elsewhere only when told.
        self.conditional_writes = (
            self.endpoint_url is None if conditional_writes is None else conditional_writes
        )
        self._pool: ThreadPoolExecutor | None = None
        self._downloads: ThreadPoolExecutor | None = None
        self._crt: CrtClient | None = None

    def get_uri(self, object_name: str) -> str:
        return f"s3://{self.bucket}/{self._key(object_name)}"

    def close(self) -> None:
        for pool in (self._pool, self._downloads):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._downloads = None
        self._crt = None  # awscrt frees its client once unreferenced
        if self._boto3 is not None:
            self._boto3.close()

    @property
    def _client(self) -> BaseClient:
        """boto3's client, built at first use (a download through awscrt never needs it)."""
        with SESSIONS_LOCK:  # a boto3 session may not make clients in two threads at once
            if self._boto3 is None:
                self._boto3 = session(self._profile_name).client(
                    "s3", config=self._config, **self._keys
                )
        return self._boto3

    # ----- primitives -------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _writes_if_absent(self, size: int) -> bool:
        # Multipart uploads keep their HEAD: one per large file costs nothing worth a second path.
        return self.conditional_writes and size < self.transfer.multipart_threshold

    def _put_file_if_absent(
        self, name: str, path: str, size: int, progress: Progress | None
    ) -> tuple[Checksum, Verification] | None:
        try:
            return self._put_file(name, path, size, progress, if_absent=True)
        except _NameTaken:
            return None

    def _put_file(
        self, name: str, path: str, size: int, progress: Progress | None, if_absent: bool = False
    ) -> tuple[Checksum, Verification]:
        try:
            checksum, proved = self._send_file(name, path, size, progress, if_absent)
        except ChecksumMismatchError:
            self._delete_unverified(name)
            raise
        if proved is not None:
            return checksum, proved
        try:
            return checksum, self.verify(name, size, checksum)
        except HoistError:
            self._delete_unverified(name)
            raise

    def _send_file(
        self, name: str, path: str, size: int, progress: Progress | None, if_absent: bool
    ) -> tuple[Checksum, Verification | None]:
        """Write the object; return its checksum and, when the server's MD5s proved
        the bytes, STORE_MD5."""
        with open(path, "rb") as raw:
            if size < self.transfer.multipart_threshold:
                reader = HashingReader(raw)
                data = reader.read()
                checksum = reader.hasher.checksum
                return checksum, self._put_object(name, data, checksum, progress, if_absent)
            upload = MultipartUpload(self, name, size, progress)
            checksum = upload.run(raw)
        return checksum, self._assembled_proof(name, size, upload)

    def _delete_unverified(self, name: str) -> None:
        # A bad object should not stay under the name. If deleting it fails
        # too, the verification's error is still the one to report; the next
        # attempt replaces the object (see replace_own_leftover).
        with contextlib.suppress(boto_errors.BotoCoreError, boto_errors.ClientError):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def _put_object(
        self,
        name: str,
        data: bytes,
        checksum: Checksum,
        progress: Progress | None = None,
        if_absent: bool = False,
    ) -> Verification | None:
        """One PutObject; returns STORE_MD5 when the server's ETag proved the bytes.

        With ``progress``, a body of :data:`PROGRESS_BODY_BYTES` or more is told
        to it as the HTTP client reads it to send, so a slow single PUT shows
        its bytes moving (counting them while reading the file showed 100% before
        a byte was sent). A smaller body goes in one piece, told just before:
        a few more sends per file cost the small-file rate more than its
        progress is worth. ``if_absent`` sends ``If-None-Match: *``, and a
        server's 412 raises :class:`_NameTaken`.
        """
        md5_hex, md5_header = self._content_md5(data)
        headers = {"x-amz-checksum-crc64nvme": checksum.to_base64()}
        if md5_header is not None:
            headers["Content-MD5"] = md5_header
        small = len(data) < PROGRESS_BODY_BYTES
        if if_absent:
            # Told only once written: the upload job takes the first bytes for
            # the start of a write, whose leftover a later attempt may replace,
            # and a refused condition wrote nothing (nor does a lost answer
            # leave other bytes than ours, which a retry then finds in place).
            headers["If-None-Match"] = "*"
        elif progress is not None and small:
            # Told before the request goes out: the upload job marks the first
            # bytes as the start of a write (an attempt that fails after it may
            # leave its object under the name, for the next one to replace).
            progress(len(data))
        try:
            if small and self.small_requests == "crt":
                etag = self._crt_client().put(
                    self._key(name), data, list(headers.items()), self.read_timeout
                )
            else:
                body: bytes | SentBytes = data
                if progress is not None and not (if_absent or small):
                    body = SentBytes(data, progress)
                params = {_BOTO3_PARAMETERS[header]: value for header, value in headers.items()}
                etag = self._client.put_object(
                    Bucket=self.bucket, Key=self._key(name), Body=body, **params
                )["ETag"]
        except boto_errors.ClientError as exc:
            if if_absent and http_status(exc) == 412:
                raise _NameTaken from None
            raise
        if if_absent and progress is not None:
            progress(len(data))
        if md5_hex is not None and self._etag_matches(name, etag, md5_hex):
            return Verification.STORE_MD5
        return None

    def _content_md5(self, data: bytes) -> tuple[str, str] | tuple[None, None]:
        """The MD5 to compare with the ETag (hex) and to send as ``Content-MD5``
        (base64); none unless ``verify="md5"``: MD5 runs at 0.7 GB/s, worth it
        only in place of a read-back."""
        if not self.checks_md5:
            return None, None
        digest = hashlib.md5(data).digest()
        return digest.hex(), base64.b64encode(digest).decode()

    def _etag_matches(self, name: str, etag: str, md5_hex: str) -> bool:
        """Whether ``etag`` is the MD5 we sent; False when it is no MD5 at all.

        Raises:
            ChecksumMismatchError: the server computed another MD5 than ours,
                so it received other bytes.
        """
        held = etag.strip('"').lower()
        if not _MD5_HEX.fullmatch(held):
            return False  # an encrypted object's or a gateway's ETag: read back instead
        if held != md5_hex:
            raise ChecksumMismatchError(
                f"{self.get_uri(name)} received other bytes than were sent: the server's "
                f"MD5 (ETag) is {held}, expected {md5_hex}; if this keeps failing, the server "
                "may answer ETags that are no MD5 (encrypted objects): use verify='read-back'"
            )
        return True

    def _assembled_proof(
        self, name: str, size: int, upload: MultipartUpload
    ) -> Verification | None:
        """STORE_MD5 when every part's ETag matched and the object is those parts.

        S3 and the servers measured (rclone, moto) answer CompleteMultipartUpload
        with the MD5 of the parts' MD5s, suffixed ``-<parts>``: equal to ours, it
        proves the object was assembled from exactly the parts we sent, in our
        order. A server that answers otherwise gets a HeadObject for the size
        (on rclone a HEAD costs a full MD5 pass over the file: 1 s per GiB).
        """
        if not upload.proved_by_md5:
            return None
        expected = upload.composite_etag()
        held = upload.complete_etag.strip('"').lower()
        if held == expected:
            return Verification.STORE_MD5
        if _COMPOSITE_ETAG.fullmatch(held):
            raise ChecksumMismatchError(
                f"{self.get_uri(name)} was assembled from other parts than were sent: the "
                f"server's multipart ETag is {held}, expected {expected}"
            )
        self._compare(name, "size", size, self._stat(name).size)
        return Verification.STORE_MD5

    def _put_bytes(self, name: str, data: bytes) -> Verification | None:
        return self._put_object(name, data, Checksum.of(data))

    def _download_into(
        self, name: str, fd: int, expected: ObjectStat | None, progress: Progress | None
    ) -> ObjectStat:
        # The size a record or a HEAD gave: every part's answer must agree with it.
        size = expected.size if expected is not None else self._stat(name).size
        preallocate(fd, size)  # the file's blocks at once: no growth per write, ENOSPC first
        where = self.get_uri(name)
        if self.downloader == "crt" and size > 0:  # an empty object has no range to ask for
            crt = self._crt_client()
            return ObjectStat(name, size, crt.download(self._key(name), where, size, fd, progress))
        download = RangedDownload(
            self._client, self.bucket, self._key(name), where, size,
            self.transfer.part_size, self._download_pool(),
        )  # fmt: skip
        return ObjectStat(name, size, download.run(fd, progress))

    def _read_chunks(self, name: str) -> Iterator[bytes]:
        response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        yield from response["Body"].iter_chunks(chunk_size=MiB)

    def _stat(self, name: str) -> ObjectStat:
        if self.small_requests == "crt":
            answer = self._crt_client().head(self._key(name), self.read_timeout)
            size = answer["content-length"]
            reported = answer.get("x-amz-checksum-crc64nvme")
            kind = answer.get("x-amz-checksum-type")
        else:
            head = self._client.head_object(
                Bucket=self.bucket, Key=self._key(name), ChecksumMode="ENABLED"
            )
            size, reported, kind = (
                head["ContentLength"], head.get("ChecksumCRC64NVME"), head.get("ChecksumType")
            )  # fmt: skip
        # CRC64NVME exists only as a full-object checksum; a COMPOSITE type
        # would mean a checksum of part checksums, which proves nothing here.
        usable = reported if kind != "COMPOSITE" else None
        return ObjectStat(name, int(size), Checksum.from_base64(usable) if usable else None)

    def _delete(self, name: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def _check(self) -> None:
        self._client.head_bucket(Bucket=self.bucket)

    def _leftovers(self, before: float) -> list[Leftover]:
        return s3_multipart_uploads(self._client, self.bucket, self.prefix, before)

    def _discard(self, leftover: Leftover) -> None:
        self._client.abort_multipart_upload(
            Bucket=self.bucket, Key=leftover.key, UploadId=leftover.handle
        )

    def _translate(self, exc: Exception, name: str | None) -> HoistError | None:
        where = self.get_uri(name) if name else f"s3://{self.bucket}"
        return translate_s3_error(
            exc,
            bucket=self.bucket,
            where=where,
            endpoint=self.endpoint_url or "AWS S3",
            for_object=name is not None,
        )

    def _download_pool(self) -> ThreadPoolExecutor:
        # Apart from the upload pool: a part GET never waits behind an upload's part.
        with SESSIONS_LOCK:  # two threads downloading at once must share one pool
            if self._downloads is None:
                self._downloads = ThreadPoolExecutor(
                    self.transfer.max_concurrency, thread_name_prefix="hoist-s3-get"
                )
        return self._downloads

    def _crt_client(self) -> CrtClient:
        if self._crt is None:
            # A server named by endpoint_url (not AWS) signs for the region given, as boto3 does;
            # on AWS the region is a HEAD, asked outside the process-wide lock.
            named = self._keys["endpoint_url"] and self.endpoint_url is not None
            given = self._keys["region_name"] if named else None
            region = given or bucket_region(self._client, self.bucket, self.endpoint_url)
            with SESSIONS_LOCK:  # one awscrt client per store, however many threads use it
                if self._crt is None:
                    self._crt = CrtClient(
                        self.bucket,
                        self.endpoint_url,
                        region,
                        self._credentials,  # boto3's chain, refreshed as boto3 does
                        self.transfer.part_size,
                        self.transfer.max_concurrency,
                        attempts=self.max_attempts,
                        connect_timeout=self.connect_timeout,
                    )
        return self._crt

    def _parts_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.transfer.max_concurrency, thread_name_prefix="hoist-s3-part"
            )
        return self._pool


class _NameTaken(Exception):
    """A conditional PUT found the name taken (never seen outside this module)."""
