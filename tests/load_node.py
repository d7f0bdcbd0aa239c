"""One simulated node of the load test: ``local_world_size`` ranks as threads.

Usage: python -m tests.load_node JOB.json NODE_RANK. Each thread is a rank
with its own ``ObjectStoreLogger`` and its own rank facts (rank =
node_rank * local_world_size + local_rank). A rank logs ``artifacts`` small
files in bursts of ``burst`` with a ``pause`` between bursts, then waits for
its uploads. Prints one JSON line: every rank's object names with the
SHA-256 of their bytes by URI, the seconds each ``file_artifact`` call blocked,
and any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from typing import Any

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import HoistError


def run_rank(job: dict[str, Any], node_rank: int, local_rank: int, out: dict[str, Any]) -> None:
    per_node = job["local_world_size"]
    rank = node_rank * per_node + local_rank
    source_dir = tempfile.mkdtemp(prefix=f"load-rank{rank}-")
    rng = random.Random(rank)
    logged: dict[str, str] = {}
    blocked: list[float] = []
    try:
        with ObjectStoreLogger(
            **job["logger"],
            rank=rank,
            local_rank=local_rank,
            world_size=job["nodes"] * per_node,
            local_world_size=per_node,
            node_rank=node_rank,
        ) as logger:
            for n in range(job["artifacts"]):
                if n and n % job["burst"] == 0:
                    time.sleep(job["pause"])
                data = rng.randbytes(rng.randint(1, job["max_bytes"]))
                path = os.path.join(source_dir, f"{n}.bin")
                with open(path, "wb") as f:
                    f.write(data)
                started = time.perf_counter()
                logger.file_artifact(LogLevel.BATCH, f"part-{n:03d}.bin", path, move=True)
                blocked.append(time.perf_counter() - started)
                uri = logger.get_uri_for_artifact(f"part-{n:03d}.bin")
                logged[uri] = hashlib.sha256(data).hexdigest()
            logger.wait(timeout=job["timeout"])
        out[str(rank)] = {"logged": logged, "blocked": blocked}
    except HoistError as exc:
        out[str(rank)] = {"logged": logged, "blocked": blocked, "error": str(exc)}


def main() -> int:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    node_rank = int(sys.argv[2])
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=run_rank, args=(job, node_rank, local_rank, results))
        for local_rank in range(job["local_world_size"])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
