"""Checksum cost: CRC64NVME (hoist/stores/checksum.py) against reading the file alone.

A 1 GiB file, page cache warm, read in 8 MiB chunks into one buffer (the
floor), and read and hashed with :class:`hoist.stores.checksum.StreamHasher`;
alternated. The share of upload time: hoist hashes each byte twice on a
non-AWS endpoint (once on the way up, once reading it back to verify), so the
share is two hashing passes over the S3 1 GiB end-to-end time that
:mod:`benchmarks.throughput` measured in this run.
"""

from __future__ import annotations

import os

from benchmarks.config import RunConfig
from benchmarks.files import MIB, label, write_source
from benchmarks.report import Figure, Report, median
from benchmarks.services import Lab
from benchmarks.timing import alternate
from hoist.stores.checksum import CHUNK_SIZE, StreamHasher

NAME = "checksum"


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    size = cfg.gib
    path = write_source(os.path.join(lab.root, "checksum.bin"), size)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)

    def read_only(r: int) -> None:
        with open(path, "rb", buffering=0) as raw:
            while raw.readinto(buffer):
                pass

    def read_and_hash(r: int) -> None:
        hasher = StreamHasher()
        with open(path, "rb", buffering=0) as raw:
            while n := raw.readinto(buffer):
                hasher.update(view[:n])

    samples = alternate({"read": read_only, "crc64nvme": read_and_hash}, cfg.repeats, warmup=1)
    os.unlink(path)
    rates = {k: [size / MIB / s for s in v] for k, v in samples.items()}
    report.add(
        Figure(
            NAME,
            f"CRC64NVME over {label(size)} (read + hash)",
            "MiB/s",
            median(rates["crc64nvme"]),
            median(rates["read"]),
            "read alone (floor)",
            higher_is_better=True,
            samples=rates,
            note=cfg.repeats_note(cfg.repeats),
        )
    )
    hash_seconds = median(samples["crc64nvme"]) - median(samples["read"])
    upload = report.details.get("s3_1gib_hoist_seconds")
    if upload:
        share = 2 * max(hash_seconds, 0.0) * (report.details["s3_1gib_bytes"] / size) / upload
        report.note(
            NAME,
            f"hashing is {share:.1%} of hoist's S3 1 GiB end-to-end time "
            f"(2 passes x {hash_seconds * 1e3:.0f} ms over {upload:.2f} s)",
        )
        report.details["checksum_share_of_upload"] = share
    else:
        report.note(NAME, "share of upload time not computed: run with the throughput benchmark")
