"""What hiredis buys: reading a run's records with hiredis against redis-py's own parser.

hoist depends on ``redis[hiredis]``: redis-py then parses replies in C. The
figure is the read that grows with a run, :meth:`Records.run_artifacts`
(``hoist status --run`` reads a run's records with it, ``hoist wait --run``
every half second, ``hoist verify`` and ``hoist retry`` once), over 5,000
finished records written the way ranks and workers write them (``create``,
``claim``, ``settle`` with an upload's fields), on a private Redis. Each
sample is a fresh process that reads the run 5 times and reports its fastest
read; the peer is the same process with hiredis hidden
(``sys.modules["hiredis"] = None`` before redis-py is imported, which makes
it fall back to its Python parser), alternating.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from benchmarks.config import RunConfig
from benchmarks.report import Figure, Report, median
from benchmarks.services import Lab, private_redis
from benchmarks.signing import sample_message
from benchmarks.timing import alternate
from hoist.keys import FleetKeys, new_fleet_key
from hoist.protocol.messages import UPLOAD_TASK, order_key
from hoist.state.records import Records
from hoist.state.states import State
from hoist.stores.spec import StoreSpec

NAME = "redis_parser"
RECORDS = 5000
RUN = "bert-large"
TOKEN = "bench-token"
"""The claiming task's token, as a worker's claim and settle give it."""

READ = """
import sys, time
if sys.argv[2] == "python":
    sys.modules["hiredis"] = None  # redis-py falls back to its own parser
import redis.connection
from hoist.state.records import Records
parser = redis.connection.DefaultParser.__name__
assert (parser == "_HiredisParser") == (sys.argv[2] == "hiredis"), parser
records = Records.from_url(sys.argv[1])
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    found = records.run_artifacts(sys.argv[3])
    best = min(best, time.perf_counter() - start)
assert len(found) == int(sys.argv[4]), len(found)
print(best)
"""


def write_records(records: Records, count: int) -> None:
    """``count`` finished upload records of one run, through the scripts that write them."""
    keys = FleetKeys.parse(new_fleet_key())
    template = sample_message(keys)
    store_id = StoreSpec.from_json(template.store).store_id
    for seq in range(count):
        message = dataclasses.replace(
            template,
            id=f"hoist-{RUN}-r3-{seq}",
            seq=seq,
            order=order_key(3, seq),
            artifact_name=f"logs/step-{seq:06d}.json",
            object_name=f"{RUN}/rank3/logs/step-{seq:06d}.json",
        )
        records.create(message, UPLOAD_TASK, store_id)
        records.claim(message, UPLOAD_TASK, TOKEN, 5)
        records.count_attempt(message.id, upload_started_at=1.0, bytes_sent=0)
        records.settle(
            message.id,
            TOKEN,
            State.DONE,
            uri=f"s3://ckpts/runs/{message.object_name}",
            size=65536,
            checksum="md5:0cc175b9c0f1b6a831c399e269772661",
            verified_by="etag-md5",
            seconds=0.012,
            already_present=0,
            upload_finished_at=2.0,
            error="",
        )


def read_once(url: str, parser: str, count: int) -> float:
    """Seconds of the fastest of 5 reads of the run, in a fresh process using ``parser``."""
    done = subprocess.run(
        [sys.executable, "-c", READ, url, parser, RUN, str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def run(lab: Lab, report: Report, cfg: RunConfig) -> None:
    count = cfg.count(RECORDS)
    with private_redis(os.path.join(lab.root, "redis-parser")) as url:
        write_records(Records.from_url(url), count)
        samples = alternate(
            {
                "hiredis": lambda r: read_once(url, "hiredis", count),
                "python": lambda r: read_once(url, "python", count),
            },
            cfg.repeats,
        )
    report.add(
        Figure(
            NAME,
            f"reading a run's {count} records (run_artifacts: hoist status, wait --run)",
            "s",
            median(samples["hiredis"]),
            median(samples["python"]),
            "redis-py's Python parser",
            samples=samples,
            note=f"fastest of 5 reads in each fresh process; median of {cfg.repeats} processes",
        )
    )
