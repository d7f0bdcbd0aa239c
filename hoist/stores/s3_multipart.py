"""One S3 multipart upload: the file read once, in order, its parts sent in parallel.

Each part is hashed into the running whole-object CRC64NVME as it is read and
handed to the store's thread pool, with at most ``max_concurrency`` parts in
memory. The upload is created with ``ChecksumType=FULL_OBJECT`` so that S3
checks the whole-object checksum sent at completion.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, BinaryIO

import botocore.exceptions as boto_errors
from awscrt.checksums import crc64nvme

from hoist.stores.checksum import Checksum, Progress

if TYPE_CHECKING:
    # Only for annotations: the store imports this module to run its uploads.
    from hoist.stores.s3 import S3ObjectStore

MAX_PARTS = 10_000
"""S3's limit on the parts of one upload; the part size grows to stay below it."""


class MultipartUpload:
    """One multipart upload: read parts in order, send them in parallel, complete.

    Parameters:
        store: the store whose client and transfer settings to use.
        name: the object name.
        size: the file's size, to choose the part size.
        progress: told of each part's bytes once the part is stored.
    """

    def __init__(
        self, store: S3ObjectStore, name: str, size: int, progress: Progress | None
    ) -> None:
        self.store = store
        self.client = store._client
        self.name = name
        self.key = store._key(name)
        self.part_size = max(store.transfer.part_size, math.ceil(size / MAX_PARTS))
        self.progress = progress
        self.in_flight = threading.BoundedSemaphore(store.transfer.max_concurrency)
        self.failed = threading.Event()
        self.proved_by_md5 = store.checks_md5
        """Stays True while every part's ETag is the MD5 we computed."""
        self.part_md5s: dict[int, str] = {}
        self.complete_etag = ""

    def composite_etag(self) -> str:
        """S3's ETag of a multipart object: the MD5 of the parts' MD5s, then ``-<parts>``."""
        digests = b"".join(bytes.fromhex(self.part_md5s[n]) for n in sorted(self.part_md5s))
        return f"{hashlib.md5(digests).hexdigest()}-{len(self.part_md5s)}"

    def run(self, raw: BinaryIO) -> Checksum:
        """Upload ``raw`` from its current position to its end; return the whole object's checksum.

        On any failure the upload is aborted and the error raised.
        """
        upload_id = self.client.create_multipart_upload(
            Bucket=self.store.bucket,
            Key=self.key,
            ChecksumAlgorithm="CRC64NVME",
            ChecksumType="FULL_OBJECT",
        )["UploadId"]
        futures: list[Future[dict[str, Any]]] = []
        try:
            whole = 0
            number = 0
            while True:
                self.in_flight.acquire()  # bounds memory to max_concurrency parts
                if self.failed.is_set():  # stop reading; the failed part's error is raised below
                    self.in_flight.release()
                    break
                data = raw.read(self.part_size)
                if not data and number > 0:
                    self.in_flight.release()
                    break
                number += 1
                whole = crc64nvme(data, whole)
                futures.append(self.store._parts_pool().submit(self._send, upload_id, number, data))
                if len(data) < self.part_size:
                    break
            parts = [future.result() for future in futures]
            checksum = Checksum.from_int(whole)
            self.complete_etag = self.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                ChecksumCRC64NVME=checksum.to_base64(),
                ChecksumType="FULL_OBJECT",
            ).get("ETag", "")
            return checksum
        except BaseException:
            for future in futures:
                future.cancel()
            self._abort(upload_id)
            raise

    def _send(self, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        try:
            md5_hex, md5_header = self.store._content_md5(data)
            headers = {} if md5_header is None else {"ContentMD5": md5_header}
            if self.store.trusts_reported_checksum:  # a server that validates it (AWS)
                headers["ChecksumCRC64NVME"] = Checksum.of(data).to_base64()
            response = self.client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                **headers,
            )
            if md5_hex is not None and not self.store._etag_matches(
                self.name, response["ETag"], md5_hex
            ):
                self.proved_by_md5 = False
            elif md5_hex is not None:
                self.part_md5s[number] = md5_hex
            if self.progress is not None:
                self.progress(len(data))
            return {"ETag": response["ETag"], "PartNumber": number}
        except BaseException:
            self.failed.set()
            raise
        finally:
            self.in_flight.release()

    def _abort(self, upload_id: str) -> None:
        # The original error matters more; a bucket lifecycle rule reaps what is left.
        with contextlib.suppress(boto_errors.BotoCoreError, boto_errors.ClientError):
            self.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
            )
