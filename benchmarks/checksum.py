"""Checksum cost: what hoist hashes against reading the file alone.

A 1 GiB file, page cache warm, read in 8 MiB chunks into one buffer (the
floor); read and hashed with :class:`hoist.stores.checksum.StreamHasher`
(CRC64NVME, the checksum hoist records); read and hashed with MD5 (what a
non-AWS S3 endpoint is verified by: ``Content-MD5`` and the ETags);
alternated. The share of upload time: on a non-AWS endpoint hoist computes
both over every byte, one CPU pass each (MD5 in the part threads, in
parallel with sending), so the share is the two hashing times over the S3
1 GiB end-to-end time that :mod:`benchmarks.throughput` measured in this run.
"""

from __future__ import annotations

import hashlib
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

    def read_and_md5(r: int) -> None:
        md5 = hashlib.md5()
        with open(path, "rb", buffering=0) as raw:
            while n := raw.readinto(buffer):
                md5.update(view[:n])

    samples = alternate(
        {"read": read_only, "crc64nvme": read_and_hash, "md5": read_and_md5},
        cfg.repeats,
        warmup=1,
    )
    os.unlink(path)
    rates = {k: [size / MIB / s for s in v] for k, v in samples.items()}
    for key, name in (("crc64nvme", "CRC64NVME"), ("md5", "MD5")):
        report.add(
            Figure(
                NAME,
                f"{name} over {label(size)} (read + hash)",
                "MiB/s",
                median(rates[key]),
                median(rates["read"]),
                "read alone (floor)",
                higher_is_better=True,
                samples={k: rates[k] for k in (key, "read")},
                note=cfg.repeats_note(cfg.repeats),
            )
        )
    floor = median(samples["read"])
    crc_seconds = max(median(samples["crc64nvme"]) - floor, 0.0)
    md5_seconds = max(median(samples["md5"]) - floor, 0.0)
    upload = report.details.get("s3_1gib_hoist_seconds")
    if upload:
        scale = report.details["s3_1gib_bytes"] / size
        share = (crc_seconds + md5_seconds) * scale / upload
        report.note(
            NAME,
            f"hashing is {share:.1%} of hoist's S3 1 GiB end-to-end time in CPU "
            f"(CRC64NVME {crc_seconds * 1e3:.0f} ms + MD5 {md5_seconds * 1e3:.0f} ms over "
            f"{upload:.2f} s; MD5 runs in the part threads, beside the sending)",
        )
        report.details["checksum_share_of_upload"] = share
    else:
        report.note(NAME, "share of upload time not computed: run with the throughput benchmark")
