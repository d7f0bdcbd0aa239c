"""How the S3 store splits large files (:class:`S3TransferConfig`), validated once."""

from __future__ import annotations

from dataclasses import dataclass

from hoist.errors import ConfigurationError

MiB = 1024 * 1024


@dataclass(frozen=True)
class S3TransferConfig:
    """How large files are split.

    Parameters:
        multipart_threshold: files at least this large use multipart upload.
        part_size: bytes per part (grown automatically past 10,000 parts).
        max_concurrency: parts in flight at once; also the bound on memory,
            which is about ``max_concurrency * part_size`` (32 MiB by default:
            on loopback 4 x 8 MiB moved 1 GiB as fast as 8 x 16 MiB, measured
            in docs/benchmarks.md).
    """

    multipart_threshold: int = 16 * MiB
    part_size: int = 8 * MiB
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.part_size < 5 * MiB:
            raise ConfigurationError("S3 part_size must be at least 5 MiB (an S3 limit)")
        if self.max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
