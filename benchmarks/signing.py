"""What message authentication costs: signing on the rank, verifying on a worker.

One real upload message (a sealed S3 store spec, a staged path, ~0.8 KB of
JSON). Each sample times a batch of 2,000 calls and reports microseconds per
call, so that the timer's resolution and a noisy neighbour's moments average
out; candidates alternate batch by batch:

- ``sign``: :meth:`Message.signed`, what ``file_artifact`` adds on the
  training thread (the issue's goal: at most 20 µs more stall for a 1 KiB file).
- ``verify``: :func:`hoist.tasks.signing.verify`, what a worker adds before it
  reads a message.
- the peer, ``json.dumps``: the serialization of the same message that every
  send already pays (kombu's JSON serializer), so the ratio says how many such
  serializations signing is worth.
"""

from __future__ import annotations

import json
import time

from benchmarks.config import RunConfig
from benchmarks.report import Figure, Report, median
from benchmarks.services import Lab
from benchmarks.timing import alternate
from hoist.keys import FleetKeys, new_fleet_key
from hoist.stores.spec import StoreSpec
from hoist.tasks.messages import UploadRequest, order_key
from hoist.tasks.signing import verify

NAME = "signing"
CALLS = 2000


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
