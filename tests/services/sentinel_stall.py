"""What waiting for a replica costs ``file_artifact``: the 1 KiB stall with and without one.

Usage: ``.venv/bin/python -m tests.services.sentinel_stall [CALLS_PER_BLOCK] [BLOCKS]``

Three loggers on loopback, measured in alternating blocks (so a busy moment
of a shared machine falls on all three alike), each the median of its
blocks' medians:

- ``no replica``: a Redis of its own, ``redis://`` (no ``WAIT``);
- ``replica, redis://``: the master of a master, a replica and three
  sentinels (:mod:`tests.services.sentinel`), named directly (``WAIT 1``);
- ``replica, sentinel://``: the same master through the sentinels.

No workers run: the stall is the rank's own (stage, record, hand over).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import redis

from hoist import LogLevel, ObjectStoreLogger
from hoist.settings import RankSettings, SentinelSettings
from tests.services.keys import FLEET_KEY
from tests.services.redis import RedisServer
from tests.services.sentinel import SENTINEL_PASSWORD, SentinelGroup

ONE_RANK = {"rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_rank": 0}


def _logger(root: Path, name: str, url: str) -> ObjectStoreLogger:
    settings = RankSettings(broker_url=url, sentinel=SentinelSettings(password=SENTINEL_PASSWORD))
    (root / "store" / "artifacts").mkdir(parents=True, exist_ok=True)
    return ObjectStoreLogger(
        provider="local",
        container="artifacts",
        provider_kwargs={"key": str(root / "store")},
        upload_staging_folder=str(root / "staging"),
        run_name=f"stall-{name}-{time.time_ns()}",
        fleet_key=FLEET_KEY,
        wait_on_close=False,
        store_check=False,  # no worker runs to answer it
        settings=settings,
        **ONE_RANK,
    )


def main(calls: int = 200, blocks: int = 5) -> dict[str, float]:
    """The median 1 KiB ``file_artifact`` stall of each logger, in milliseconds."""
    root = Path(tempfile.mkdtemp(prefix="hoist-stall-"))
    source = root / "one-kib.bin"
    source.write_bytes(os.urandom(1024))
    solo = RedisServer(root / "solo")
    group = SentinelGroup(root / "group")
    solo.start()
    group.start()
    try:
        loggers = {
            "no replica": _logger(root / "a", "solo", solo.url),
            "replica, redis://": _logger(root / "b", "direct", group.master.url),
            "replica, sentinel://": _logger(root / "c", "sentinel", group.url),
        }
        samples: dict[str, list[float]] = {name: [] for name in loggers}
        count = 0
        for block in range(blocks + 1):  # the first block warms up and is not counted
            for name, logger in loggers.items():
                times = []
                for _ in range(calls):
                    count += 1
                    started = time.perf_counter()
                    logger.file_artifact(LogLevel.EPOCH, f"a{count}.bin", source, overwrite=True)
                    times.append(time.perf_counter() - started)
                if block:
                    samples[name].append(median(times) * 1000)
        for logger in loggers.values():
            logger.close()
        stats = redis.Redis.from_url(group.master.url).info("commandstats")
        waits = int(stats.get("cmdstat_wait", {}).get("calls", 0))
        print(f"WAIT calls on the master: {waits} for {2 * (blocks + 1) * calls} record writes")
    finally:
        group.stop()
        solo.stop()
    return {name: median(values) for name, values in samples.items()}


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:3]]
    for name, ms in main(*args).items():
        print(f"{name:24} {ms:.3f} ms (median of {args[1] if len(args) > 1 else 5} blocks)")
