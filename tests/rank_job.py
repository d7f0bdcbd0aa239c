"""One training rank, run as its own process by the end-to-end tests.

Usage: python -m tests.rank_job JOB.json  (rank facts come from the
environment, as torchrun sets them). Prints one JSON line: for each artifact
name, its object name and the SHA-256 of the bytes logged last under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import UploadFailedError


def main() -> int:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    rank = int(os.environ["RANK"])
    source_dir = tempfile.mkdtemp(prefix=f"rank{rank}-")
    logged: dict[str, dict[str, str]] = {}
    kwargs = dict(job["logger"])
    if "object_store_cls" in kwargs:
        import hoist

        kwargs["object_store_cls"] = getattr(hoist, kwargs["object_store_cls"])
    logger = ObjectStoreLogger(**kwargs)
    blocked: list[float] = []
    for step, action in enumerate(job["actions"]):
        kind = action[0]
        if kind == "file":
            _, name, size, overwrite = action
            path = os.path.join(source_dir, f"{step}.bin")
            data = random.Random(f"{rank}-{step}-{name}").randbytes(size)
            with open(path, "wb") as out:
                out.write(data)
            started = time.perf_counter()
            logger.file_artifact(LogLevel.BATCH, name.format(rank=rank), path, overwrite=overwrite)
            blocked.append(time.perf_counter() - started)
            logged[name.format(rank=rank)] = {
                "object": logger.get_uri_for_artifact(name.format(rank=rank)),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        elif kind == "sleep":  # a training step between two artifacts
            time.sleep(action[1])
        elif kind == "symlink":
            _, target, name = action
            logger.symlink_artifact(target.format(rank=rank), name.format(rank=rank))
    result: dict[str, object] = {"rank": rank, "logged": logged, "blocked": blocked}
    try:
        logger.wait(timeout=job.get("timeout", 120))
        result["failures"] = []
    except UploadFailedError as exc:
        result["failures"] = [list(f) for f in exc.failures]
        result["error"] = str(exc)
    logger.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
