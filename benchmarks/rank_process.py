"""A training rank in its own process, for the benchmarks that need several or a clean one.

Run as ``python -m benchmarks.rank_process '<json>'``. The JSON gives the
logger's arguments (``logger``: keywords for ``ObjectStoreLogger`` with the
store as ``kind`` and ``kwargs``), the files to log (``files``) and ``measure``:

- ``"throughput"``: print ``ready``, wait for a line on stdin (the start
  signal, so all ranks begin together), log every file, ``wait()``, then print
  one JSON line: ``start``, ``enqueued``, ``done`` (``time.time()`` stamps) and
  ``count``.
- ``"memory"``: print one JSON line of RSS in KiB after ``import hoist``
  (``imported``), after constructing the logger (``constructed``) and after
  logging every file and waiting (``used``).
- ``"stream"``: print ``ready``, then give away (``move=True``) each file
  named by a line on stdin as it comes; at the end of stdin ``wait()``, then
  print one JSON line with ``count``. The training loop's baseline uses it to
  keep the fleet uploading the loop's checkpoints without hoist in the loop.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    before_import = _rss_kib()
    from hoist.logger.levels import LogLevel
    from hoist.logger.logger import ObjectStoreLogger
    from hoist.stores.spec import store_class

    imported = _rss_kib()
    options = dict(spec["logger"])
    store = options.pop("store")
    logger = ObjectStoreLogger(
        object_store_cls=store_class(store["kind"]), object_store_kwargs=store["kwargs"], **options
    )
    constructed = _rss_kib()
    files = spec["files"]
    if spec["measure"] == "stream":
        print("ready", flush=True)
        count = 0
        for line in sys.stdin:
            path = line.rstrip("\n")
            logger.file_artifact(LogLevel.BATCH, os.path.basename(path), path, move=True)
            count += 1
        logger.wait(poll_interval=0.05)
        logger.close()
        print(json.dumps({"count": count}), flush=True)
        return 0
    if spec["measure"] == "throughput":
        print("ready", flush=True)
        sys.stdin.readline()
    overwrite = bool(spec.get("overwrite", False))
    start = time.time()
    for path in files:
        logger.file_artifact(LogLevel.BATCH, os.path.basename(path), path, overwrite=overwrite)
    enqueued = time.time()
    # 50 ms: a finished upload is seen within 50 ms (about 1% of the shortest
    # measured run), and asking 100 times a second took 15% of a rank's CPU.
    logger.wait(poll_interval=0.05)
    done = time.time()
    logger.close()
    if spec["measure"] == "memory":
        result = {
            "before_import": before_import,
            "imported": imported,
            "constructed": constructed,
            "used": _rss_kib(),
            "count": len(files),
        }
    else:
        result = {"start": start, "enqueued": enqueued, "done": done, "count": len(files)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
