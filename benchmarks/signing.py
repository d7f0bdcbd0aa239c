"""What message authentication costs: signing on the rank, verifying on a worker.

One real upload message (a sealed S3 store spec, a staged path, ~0.8 KB of
JSON). Each sample times a batch of 2,000 calls and reports microseconds per
call, so that the timer's resolution and a noisy neighbour's moments average
out; candidates alternate batch by batch:

- ``sign``: :meth:`Message.signed`, what ``file_artifact`` adds on the
  training thread (the issue's goal: at most 20 µs more stall for a 1 KiB file).
- ``verify``: :func:`hoist.protocol.signing.verify`, what a worker adds before it
  reads a message.
- the peer, ``json.dumps``: the serialization of the same message that every
  send already pays (kombu's JSON serializer), so the ratio says how many such
  serializations signing is worth.

Then the stall it adds: ``file_artifact`` of a 1 KiB file (copy staging, a
private Redis, no workers), signed as shipped against the same call with
:meth:`Message.signed` replaced by the identity, alternating in blocks of 5
calls, 300 blocks each (the median of each block is a sample). The difference of the medians
is what signing adds to a rank's stall.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from benchmarks.config import RunConfig
from benchmarks.report import Figure, Report, median
from benchmarks.services import Lab, private_redis
from benchmarks.timing import alternate
from hoist.keys import FleetKeys, new_fleet_key
from hoist.logger.levels import LogLevel
from hoist.logger.logger import ObjectStoreLogger
from hoist.protocol.messages import Message, UploadRequest, order_key
from hoist.protocol.signing import verify
from hoist.stores.spec import StoreSpec

NAME = "signing"
SINGLE_RANK = {"rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_rank": 0}
CALLS = 2000
BLOCKS, CALLS_PER_BLOCK = 300, 5
"""The stall comparison alternates often and long: a difference of ~20 µs in a call
of ~500 µs must not be drift (a neighbour's burst lasts longer than a block)."""


def sample_message(keys: FleetKeys) -> UploadRequest:
    spec = StoreSpec.describe(
        "s3",
        {
            "bucket": "ckpts",
            "prefix": "runs/",
            "endpoint_url": "http://minio.lan:9000",
            "aws_access_key_id": "AKIAEXAMPLE",
            "aws_secret_access_key": "example-secret-key",
        },
        keys,
    )
    return UploadRequest(
        id="hoist-bert-large-r3-1017",
        run_name="bert-large",
        rank=3,
        seq=1017,
        artifact_name="checkpoints/ep7-rank3.pt",
        object_name="bert-large/rank3/checkpoints/ep7-rank3.pt",
        order=order_key(3, 1017),
        store=spec.to_json(),
        staged_path="/staging/bert-large/rank3/00001017-checkpoints/ep7-rank3.pt",
        size=1024,
    )


def per_call(calls: int, action: object) -> float:
    """Microseconds per call of ``action`` over ``calls`` calls."""
    assert callable(action)
    start = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - start) / calls * 1e6


def stall_with_and_without(lab: Lab, blocks: int) -> dict[str, list[float]]:
    """Seconds of ``file_artifact`` (1 KiB), signed and with signing skipped, per block."""
    root = os.path.join(lab.root, "signing-stall")
    source = os.path.join(root, "one-kib.bin")
    os.makedirs(os.path.join(root, "store", "artifacts"), exist_ok=True)
    with open(source, "wb") as out:
        out.write(os.urandom(1024))
    shipped = Message.signed
    calls = itertools.count()
    with private_redis(os.path.join(root, "redis")) as url:
        logger = ObjectStoreLogger(
            provider="local",
            container="artifacts",
            provider_kwargs={"key": os.path.join(root, "store")},
            broker_url=url,
            upload_staging_folder=os.path.join(root, "staging"),
            run_name="signing-stall",
            wait_on_close=False,
            **SINGLE_RANK,
        )

        def block(signing: bool) -> float:
            # Swapped on the class for the block only: the measurement device,
            # never the shipped path.
            Message.signed = shipped if signing else _unsigned  # type: ignore[method-assign]
            try:
                times = []
                for _ in range(CALLS_PER_BLOCK):
                    name = f"a{next(calls)}.bin"
                    start = time.perf_counter()
                    logger.file_artifact(LogLevel.EPOCH, name, source, overwrite=True)
                    times.append(time.perf_counter() - start)
                return median(times)
            finally:
                Message.signed = shipped  # type: ignore[method-assign]

        samples = alternate(
            {"signed": lambda r: block(True), "unsigned": lambda r: block(False)},
            blocks,
            warmup=2,
        )
        logger.close()
    return samples


def _unsigned(message: Message, keys: FleetKeys) -> Message:
    return message


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    keys = FleetKeys.parse(new_fleet_key())
    message = sample_message(keys)
    signed = message.signed(keys).to_json()
    samples = alternate(
        {
            "sign": lambda r: per_call(CALLS, lambda: message.signed(keys)),
            "verify": lambda r: per_call(CALLS, lambda: verify(signed, keys)),
            "json.dumps": lambda r: per_call(CALLS, lambda: json.dumps(message.to_json())),
        },
        max(cfg.repeats, 5),
        warmup=1,
    )
    peer = median(samples["json.dumps"])
    for key, where in (("sign", "on the rank"), ("verify", "on a worker")):
        report.add(
            Figure(
                NAME,
                f"{key} one upload message ({where})",
                "µs",
                median(samples[key]),
                peer,
                "json.dumps of it (every send pays this)",
                higher_is_better=False,
                samples={k: samples[k] for k in (key, "json.dumps")},
                note=f"{len(json.dumps(signed))} bytes of JSON; {CALLS} calls a sample",
            )
        )
    stall = stall_with_and_without(lab, blocks=BLOCKS)
    signed_us, unsigned_us = (median(stall[k]) * 1e6 for k in ("signed", "unsigned"))
    report.add(
        Figure(
            NAME,
            "file_artifact 1 KiB, signed",
            "µs",
            signed_us,
            unsigned_us,
            "the same call, signing skipped",
            higher_is_better=False,
            samples={k: [x * 1e6 for x in v] for k, v in stall.items()},
            note=f"signing adds {signed_us - unsigned_us:.1f} µs (goal: at most 20 µs)",
        )
    )
