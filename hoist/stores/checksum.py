"""Whole-object checksums, computed in the same pass as the transfer.

hoist uses CRC64NVME everywhere: it is the checksum S3 computes for every object
by default (so an S3 server can report it for multipart uploads as a
``FULL_OBJECT`` checksum), and awscrt computes it at memory speed (6.8 GB/s
here, against 1.4 GB/s for SHA-256; see ../shared/FACTS.md). It guards against
corruption, not against an adversary who can write to the store.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from awscrt.checksums import crc64nvme

ALGORITHM = "crc64nvme"
CHUNK_SIZE = 8 * 1024 * 1024

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@dataclass(frozen=True)
class Checksum:
    """A whole-object checksum.

    Parameters:
        algorithm: the algorithm's name; always ``"crc64nvme"`` today.
        value: the checksum as 16 lowercase hex digits.

    Example:
        >>> Checksum.of(b"hello")
        Checksum(algorithm='crc64nvme', value='3377857006524257')
    """

    algorithm: str
    value: str

    @classmethod
    def of(cls, data: bytes) -> Checksum:
        return cls.from_int(crc64nvme(data))

    @classmethod
    def from_int(cls, crc: int) -> Checksum:
        return cls(ALGORITHM, f"{crc:016x}")

    @classmethod
    def from_base64(cls, encoded: str) -> Checksum:
        """Parse the big-endian base64 form that S3 uses in headers."""
        return cls(ALGORITHM, base64.b64decode(encoded).hex())

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Parse ``"crc64nvme:<hex>"``, the form :meth:`__str__` prints."""
        algorithm, _, value = text.partition(":")
        return cls(algorithm, value)

    def to_base64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.value)).decode("ascii")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"


class StreamHasher:
    """Accumulates size and CRC64NVME over bytes seen in order.

    Parameters:
        progress: optional callback told of every chunk's length.
    """

    def __init__(self, progress: Progress | None = None) -> None:
        self._crc = 0
        self.size = 0
        self._progress = progress

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = crc64nvme(data, self._crc)
        self.size += len(data)
        if self._progress is not None and len(data):
            self._progress(len(data))

    @property
    def checksum(self) -> Checksum:
        return Checksum.from_int(self._crc)


class HashingReader:
    """A read-only file wrapper that hashes what passes through it.

    Stores whose client libraries read from a file object (paramiko, Libcloud)
    get this in place of the file, so the checksum costs no second pass.

    Parameters:
        raw: the file object to read from.
        progress: optional callback told of every chunk's length.
    """

    def __init__(self, raw: BinaryIO, progress: Progress | None = None) -> None:
        self._raw = raw
        self.hasher = StreamHasher(progress)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hasher.update(data)
        return data

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        while data := self.read(chunk_size):
            yield data


def checksum_file(path: str, progress: Progress | None = None) -> tuple[int, Checksum]:
    """Return the size and checksum of a local file, reading it once."""
    with open(path, "rb") as raw:
        reader = HashingReader(raw, progress)
        for _ in reader.chunks():
            pass
    return reader.hasher.size, reader.hasher.checksum


class SentBytes(io.BytesIO):
    """Bytes to send, telling ``progress`` of each block the HTTP client reads to send.

    A client library that sends a file-like body reads it a block at a time
    as the socket takes it (http.client: 8 KiB, or urllib3's block size), so
    the counts follow the bytes on the wire. A rewind (botocore retrying the
    request) counts the bytes again; readers clamp to the size.
    """

    def __init__(self, data: bytes, progress: Progress) -> None:
        super().__init__(data)
        self._progress = progress

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if data:
            self._progress(len(data))
        return data
