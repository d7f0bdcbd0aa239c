"""Resume: downloading a checkpoint back, hoist against ``s5cmd cp`` and boto3 ``download_file``.

Each candidate runs as its own process, as a restarted job would run it, so
its start-up counts and its peak RSS is its own (GNU ``time``): ``hoist
download`` for one 1 GiB object, and ``download_artifact`` alone (``python
-c``) to show what the CLI's start-up adds; ``download_checkpoint`` (``python
-c``) for a 16 x 64 MiB sharded checkpoint, against ``s5cmd cp
's3://…/step/*'`` and a loop of boto3 ``download_file``. hoist verifies size
and CRC64NVME against the manifest for the checkpoint; ``rclone serve s3``
reports no checksum, so the 1 GiB object is checked for size only. The peers
verify nothing. Every destination is removed between runs, then ``sync``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from benchmarks import peers
from benchmarks.config import RunConfig
from benchmarks.files import MIB, label, warm, write_source
from benchmarks.report import Figure, Report, Target, median
from benchmarks.services import Lab
from benchmarks.timing import Candidate, alternate
from hoist.protocol.manifest import Manifest, ManifestFile
from hoist.stores.checksum import checksum_file

NAME = "resume"
MEMORY_LIMIT_MIB = 200
PEERS = ("s5cmd", "boto3")

_ARTIFACT = """
import sys
from hoist.download import download_artifact
download_artifact(sys.argv[1], sys.argv[2], store=sys.argv[3])
"""
_CHECKPOINT = """
import sys
from hoist.download import download_checkpoint
download_checkpoint(sys.argv[1], sys.argv[2], store=sys.argv[3])
"""
_BOTO3 = """
import sys, boto3
from botocore.config import Config
path_style = Config(s3={"addressing_style": "path"})
client = boto3.client("s3", endpoint_url=sys.argv[1], config=path_style)
for key, path in zip(sys.argv[3::2], sys.argv[4::2]):
    client.download_file(sys.argv[2], key, path)
"""


def _timed(argv: list[str], env: dict[str, str], scratch: str) -> tuple[float, float]:
    """Run ``argv`` to its end; wall seconds and its peak RSS in MiB.

    The peak is GNU time's (``%M``): a child forked from this Python process
    would count this process's own memory in its ``ru_maxrss``, which Linux
    carries over at fork and exec; ``time`` is a small process of its own.
    """
    report = os.path.join(scratch, "rss")
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", report, *argv], env=env, capture_output=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    with open(report) as kib:
        return seconds, int(kib.read().split()[-1]) / 1024


def _upload(lab: Lab, root: str, cfg: RunConfig) -> tuple[str, int, Manifest]:
    """One large object, and a 16-file step with its manifest, written with boto3 (untimed)."""
    client, bucket = lab.s3_client(), lab.s3().bucket
    big = write_source(os.path.join(root, "big.pt"), cfg.gib)
    client.upload_file(big, bucket, "resume/big.pt")
    prefix = "resume/run/checkpoints/step-00000100"
    files = []
    for i in range(16):
        path = write_source(os.path.join(root, f"shard-{i:02d}.distcp"), cfg.size(64 * MIB))
        name = f"{prefix}/{os.path.basename(path)}"
        client.upload_file(path, bucket, name)
        size, checksum = checksum_file(path)
        files.append(ManifestFile(os.path.basename(path), name, size, str(checksum), i))
        os.unlink(path)
    manifest = Manifest("run", 100, "checkpoints", prefix, 16, tuple(files))
    client.put_object(Bucket=bucket, Key=manifest.object_name, Body=manifest.to_bytes())
    size = os.path.getsize(big)
    os.unlink(big)
    return "resume/big.pt", size, manifest


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    root = os.path.join(lab.root, "resume")
    out = os.path.join(root, "out")
    os.makedirs(root)
    s3 = lab.s3()
    env = lab.s3_environment()
    key, size, manifest = _upload(lab, root, cfg)
    store = f"s3://{s3.bucket}?endpoint_url={s3.endpoint_url}"
    s5cmd = [peers._binary("s5cmd", "run `bash deploy/bootstrap.sh bench`")]
    s5cmd += ["--endpoint-url", s3.endpoint_url, "cp"]
    python = [sys.executable, "-c"]
    shards = [(item.object_name, os.path.join(out, item.path)) for item in manifest.files]
    flat = [part for pair in shards for part in pair]
    one = os.path.join(out, "big.pt")
    cases = {
        f"1 object of {label(size)}": {
            "hoist": [sys.executable, "-m", "hoist.cli", "download", key, one, "--store", store],
            # The library call alone: what the CLI's start-up adds is the difference.
            "download_artifact": [*python, _ARTIFACT, key, one, store],
            "s5cmd": [*s5cmd, f"s3://{s3.bucket}/{key}", one],
            "boto3": [*python, _BOTO3, s3.endpoint_url, s3.bucket, key, one],
        },
        f"checkpoint of 16 x {label(manifest.files[0].size)}": {
            "hoist": [*python, _CHECKPOINT, manifest.object_name, out, store],
            "s5cmd": [*s5cmd, f"s3://{s3.bucket}/{manifest.prefix}/*", out + "/"],
            "boto3": [*python, _BOTO3, s3.endpoint_url, s3.bucket, *flat],
        },
    }

    served = os.path.join(lab.root, "rclone", "data", s3.bucket, "resume")

    def settle() -> None:
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        os.sync()
        warm(served)  # every candidate reads from the server's page cache, none from its disk

    n = cfg.large_repeats
    for case, argvs in cases.items():
        peaks: dict[str, list[float]] = {name: [] for name in argvs}

        def candidate(
            name: str, argv: list[str], peaks: dict[str, list[float]] = peaks
        ) -> Candidate:
            def timed(_round: int) -> float:
                seconds, peak = _timed(argv, env, root)
                peaks[name].append(peak)
                return seconds

            return timed

        samples = alternate(
            {name: candidate(name, argv) for name, argv in argvs.items()},
            n,
            warmup=1,
            between=settle,
        )
        peak = max(max(values) for name, values in peaks.items() if name not in PEERS)
        for peer, peer_name in zip(PEERS, ("s5cmd cp", "boto3 download_file"), strict=True):
            if "download_artifact" in samples:
                report.add(
                    Figure(
                        NAME,
                        f"download_artifact {case}",
                        "s",
                        median(samples["download_artifact"]),
                        median(samples[peer]),
                        peer_name,
                        samples={"hoist": samples["download_artifact"], peer: samples[peer]},
                        note=f"python -c, peak RSS {max(peaks['download_artifact']):.0f} MiB",
                    )
                )
            figure = report.add(
                Figure(
                    NAME,
                    f"download {case}",
                    "s",
                    median(samples["hoist"]),
                    median(samples[peer]),
                    peer_name,
                    samples={"hoist": samples["hoist"], peer: samples[peer]},
                    note=f"hoist peak RSS {peak:.0f} MiB, {peer} {max(peaks[peer]):.0f} MiB; "
                    f"whole processes; {cfg.repeats_note(n)}",
                )
            )
            if peer == "s5cmd" and figure.ratio is not None:
                report.target(Target(f"download {case} vs {peer_name}", figure.ratio, 1.0, True))
        report.target(Target(f"download {case}: peak RSS MiB", peak, MEMORY_LIMIT_MIB, False))
    shutil.rmtree(root)
