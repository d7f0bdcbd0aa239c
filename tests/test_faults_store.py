"""Object-store faults end to end: real workers, a real S3 server, our own fault proxy.

1. Transient faults. :class:`~tests.services.faultproxy.FaultProxy` sits
   between the ``hoist worker`` processes and ``moto_server`` and spoils about
   a fifth of the requests: 500/503/SlowDown answers, connections reset
   mid-request or mid-answer, answers held past the client's read timeout, and
   flipped bytes in uploaded bodies (so the server stores wrong bytes) and in
   read-back answers. Every artifact must land with exactly its bytes (checked
   with raw boto3 straight against the server, not through the proxy), within
   a bounded number of attempts that back off, and no corrupted upload may be
   recorded as done.
2. Permanent faults. Bad credentials (rclone enforces them), a missing
   bucket, SFTP permission denied (sshd's read-only port: the tests run as
   root, which ignores file modes) and a full SFTP disk (a 1 MiB tmpfs) fail
   after one attempt, within seconds, from ``logger.wait()`` and from
   ``hoist wait --run``, with a message that says what to fix.

Run with ``-s`` to see the figures (requests, faults by kind, attempts, times).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hoist import LogLevel, ObjectStoreLogger, S3ObjectStore, SFTPObjectStore
from hoist.errors import UploadFailedError
from hoist.state.records import ArtifactStatus, Records
from hoist.state.states import State
from tests.services.faultproxy import FAULT_KINDS, FaultProxy
from tests.services.keys import FLEET_KEY
from tests.services.redis import RedisServer
from tests.services.s3 import S3Server
from tests.services.sshd import SshServer
from tests.services.tmpfs import small_tmpfs
from tests.services.workers import WorkerFleet, clean_environment

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent

# The workers' retry policy (hoist's own, above boto3's per-request retries).
MAX_RETRIES = 8
BACKOFF_BASE = 0.2
BACKOFF_MAX = 2.0
# Short client timeouts, so that stalls cost seconds; the stall outlasts them.
READ_TIMEOUT = 2.0
STALL_SECONDS = READ_TIMEOUT + 1.5
PART = 5 * MiB  # S3's smallest part, so a multipart upload stays small


@pytest.fixture(scope="module")
def staging_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("staging")


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, staging_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    from tests.conftest import _serve

    workers = WorkerFleet(
        tmp_path_factory.mktemp("workers"),
        redis_server.url,
        staging_root,
        count=2,
        concurrency=2,
        env={
            "HOIST_FLEET_KEY": FLEET_KEY,
            "HOIST_MAX_RETRIES": str(MAX_RETRIES),
            "HOIST_BACKOFF_BASE": str(BACKOFF_BASE),
            "HOIST_BACKOFF_MAX": str(BACKOFF_MAX),
        },
    )
    yield from _serve(workers)


def make_logger(fleet: WorkerFleet, run_name: str, **store: Any) -> ObjectStoreLogger:
    return ObjectStoreLogger(
        run_name=run_name,
        broker_url=fleet.broker_url,
        upload_staging_folder=str(fleet.staging_root),
        object_name="{run_name}/{artifact_name}",
        fleet_key=FLEET_KEY,
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        node_rank=0,
        **store,
    )


def s3_store(server: S3Server, endpoint_url: str, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bucket": server.bucket,
        "endpoint_url": endpoint_url,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "transfer_config": {"multipart_threshold": PART, "part_size": PART, "max_concurrency": 2},
        "connect_timeout": 1.0,
        "read_timeout": READ_TIMEOUT,
        **overrides,
    }
    return {"object_store_cls": S3ObjectStore, "object_store_kwargs": kwargs}


# ----- 1. transient faults through the proxy ------------------------------------


def batch_sizes(count: int, seed: int) -> list[int]:
    """Mixed sizes: mostly small files, some of a few MiB, every eighth multipart."""
    rng = random.Random(seed)
    sizes = []
    for i in range(count):
        if i % 8 == 7:
            sizes.append(2 * PART + rng.randrange(1, PART))  # three parts
        elif i % 4 == 3:
            sizes.append(rng.randrange(MiB, 3 * MiB))
        elif i == 0:
            sizes.append(0)
        else:
            sizes.append(rng.randrange(1, 300_000))
    return sizes


@dataclass
class BatchRun:
    run_name: str
    sources: dict[str, Path]
    seconds: float
    records: list[ArtifactStatus]


def upload_batch(
    fleet: WorkerFleet,
    redis_server: RedisServer,
    store: dict[str, Any],
    run_name: str,
    sizes: list[int],
    source_dir: Path,
    proxy: FaultProxy | None = None,
) -> BatchRun:
    """Log one file per size and wait until all are verified; time from first log to done."""
    sources = {}
    for i, size in enumerate(sizes):
        path = source_dir / f"{run_name}-{i}.bin"
        path.write_bytes(os.urandom(size))
        sources[f"a{i:03d}-{size}.bin"] = path
    logger = make_logger(fleet, run_name, num_concurrent_uploads=4, **store)
    started = time.monotonic()
    for name, path in sources.items():
        logger.file_artifact(LogLevel.BATCH, name, path)
    try:
        logger.wait(timeout=600)
    except UploadFailedError as failed:  # say what happened to each, request by request
        keys = [obj for _, obj, _ in failed.failures]
        events = [e for e in (proxy.stats.events if proxy else []) if any(k in e for k in keys)]
        history = [line for line in fleet.logs().splitlines() if any(k in line for k in keys)]
        raise AssertionError("\n".join([str(failed), *events, *history])) from failed
    seconds = time.monotonic() - started
    logger.close()
    return BatchRun(
        run_name, sources, seconds, Records.from_url(redis_server.url).run_artifacts(run_name)
    )


RETRY_LINE = re.compile(
    r"(?P<id>hoist-\S+): attempt (?P<n>\d+) failed \((?P<error>.*)\); again in (?P<delay>[\d.]+) s"
)


def retry_lines(logs: str, run_name: str) -> dict[str, list[tuple[int, str, float]]]:
    """The workers' retry lines of one run: artifact id -> [(attempt, error, delay)]."""
    found: dict[str, list[tuple[int, str, float]]] = {}
    for match in RETRY_LINE.finditer(logs):
        if match["id"].startswith(f"hoist-{run_name}-"):
            entry = (int(match["n"]), match["error"], float(match["delay"]))
            found.setdefault(match["id"], []).append(entry)
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("artifacts", "verify"),
    [(24, "md5"), (24, "read-back"), pytest.param(160, "md5", marks=pytest.mark.long)],
    ids=lambda v: f"{v}-artifacts" if isinstance(v, int) else v,
)
def test_transient_faults_every_artifact_lands_verified(
    artifacts: int,
    verify: str,
    moto_server: S3Server,
    redis_server: RedisServer,
    fleet: WorkerFleet,
    tmp_path: Path,
) -> None:
    # HOIST_FAULT_SEED replays another sequence of faults (the seed is printed).
    seed = int(os.environ.get("HOIST_FAULT_SEED", 20261123 + artifacts))
    sizes = batch_sizes(artifacts, seed)
    stamp = int(time.time() * 1000)
    with FaultProxy(moto_server.endpoint_url, rate=0.0, seed=seed) as clean_proxy:
        clean = upload_batch(
            fleet,
            redis_server,
            s3_store(moto_server, clean_proxy.url, verify=verify),
            f"clean-{artifacts}-{stamp}",
            sizes,
            tmp_path,
        )
    # Each kind's first fault lands on the first request it applies to, and the
    # first upload through the proxy is usually the logger's store check
    # (hoist-store-check-...), not an artifact. So one artifact's first PUT is
    # corrupted by script: a run where the random draws spare every artifact
    # still proves that verification catches stored wrong bytes.
    faulty_run = f"faults-{artifacts}-{stamp}"
    script = [("PUT", f"/{faulty_run}/a001-", "corrupt_upload")]
    with FaultProxy(
        moto_server.endpoint_url,
        rate=0.2,
        seed=seed,
        stall_seconds=STALL_SECONDS,
        script=script,
    ) as proxy:
        faulty = upload_batch(
            fleet,
            redis_server,
            s3_store(moto_server, proxy.url, verify=verify),
            faulty_run,
            sizes,
            tmp_path,
            proxy,
        )
    stats = proxy.stats
    if os.environ.get("HOIST_FAULT_EVENTS"):  # for studying a run: every request, in order
        Path(os.environ["HOIST_FAULT_EVENTS"]).write_text("\n".join(stats.events))
    # With MD5 verification nothing is read back unless a retry finds an object.
    expected = [k for k in FAULT_KINDS if verify == "read-back" or k != "corrupt_read"]
    assert all(stats.faults[kind] >= 1 for kind in expected), stats.summary()
    raw = moto_server.client()  # straight to the server, not through the proxy

    # Everything landed, with exactly its bytes.
    for run in (clean, faulty):
        assert {r.state for r in run.records} == {State.DONE}, [
            (r.artifact_name, r.state, r.error) for r in run.records if r.state is not State.DONE
        ]
        for name, source in run.sources.items():
            key = f"{run.run_name}/{name}"
            held = raw.get_object(Bucket=moto_server.bucket, Key=key)
            assert sha256(held["Body"].read()) == sha256(source.read_bytes()), (
                name,
                [r.fields for r in run.records if r.artifact_name == name],
                [e for e in stats.events if key in e],
                [line for line in fleet.logs().splitlines() if key in line],
            )
        assert list((fleet.staging_root / run.run_name).rglob("*.bin")) == []

    # Retries are bounded and back off: every failed attempt has its line, with
    # a delay of min(max, base * 2**(n-1)) times a factor in [0.5, 1].
    lines = retry_lines(fleet.logs(), faulty.run_name)
    attempts = {r.id: int(r.fields["attempts"]) for r in faulty.records}
    for artifact, count in attempts.items():
        assert 1 <= count <= MAX_RETRIES + 1, (artifact, count)
        logged = sorted(lines.get(artifact, []))  # two workers' logs: not in time order
        assert [n for n, _, _ in logged] == list(range(1, count)), (artifact, count, logged)
        for n, _, delay in logged:
            ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (n - 1))
            assert 0.5 * ceiling - 0.01 <= delay <= ceiling + 0.01, (artifact, n, delay)

    # A corrupted upload is never recorded as done: every artifact whose object
    # the server stored with flipped bytes went through a failed attempt and a
    # retry, and verification is what caught it.
    ids = {
        f"{moto_server.bucket}/{faulty.run_name}/{r.artifact_name}": r.id for r in faulty.records
    }
    corrupted = [ids[key] for key in stats.corrupted_objects if key in ids]
    caught = [
        a for a in corrupted if any("ChecksumMismatchError" in e for _, e, _ in lines.get(a, []))
    ]
    assert corrupted, (
        f"no corrupted artifact was stored, so nothing was proved: {stats.summary()}; "
        f"corrupted objects: {sorted(stats.corrupted_objects)}"
    )
    for artifact in corrupted:
        assert attempts[artifact] >= 2, artifact
    # Another fault may end an attempt before its verification; most are caught by it.
    assert caught, "no corrupted object was caught by verification"

    clean_attempts = [int(r.fields["attempts"]) for r in clean.records]
    assert clean_attempts == [1] * artifacts  # the proxy itself does no harm
    rewritten = [ids[key] for key, n in stats.writes.items() if key in ids and n > 1]
    # Written again by a later attempt (the earlier copy failed verification), or by
    # boto3 resending a PUT/Complete whose answer the proxy lost (same bytes).
    by_hoist = sum(attempts[a] > 1 for a in rewritten)
    counts = list(attempts.values())
    causes = Counter(error.split(":")[0] for v in lines.values() for _, error, _ in v)
    multipart = [attempts[r.id] for r in faulty.records if int(r.fields["size"]) >= PART]
    print(
        f"\n[store faults, seed {seed}, {artifacts} artifacts, {sum(sizes) / MiB:.1f} MiB, "
        f"{sum(s >= PART for s in sizes)} multipart] proxy: {stats.summary()}\n"
        f"  attempts per artifact: max {max(counts)}, mean {sum(counts) / len(counts):.2f}; "
        f"{sum(c > 1 for c in counts)} artifacts retried by hoist, "
        f"{sum(len(v) for v in lines.values())} retry lines "
        f"({', '.join(f'{k} {n}' for k, n in causes.most_common())}); multipart artifacts: "
        f"max {max(multipart)}, mean {sum(multipart) / len(multipart):.2f}\n"
        f"  corrupted objects stored by the server: {len(corrupted)}, caught by checksum "
        f"mismatch: {len(caught)}, all retried\n"
        f"  objects written more than once: {len(rewritten)} ({by_hoist} by a retry after a "
        f"failed attempt, {len(rewritten) - by_hoist} by boto3 resending an unanswered write)\n"
        f"  time to all verified: {faulty.seconds:.1f} s with faults, {clean.seconds:.1f} s "
        f"clean (same batch through the proxy with no faults); artifacts lost: 0"
    )


# ----- 2. permanent faults fail fast ------------------------------------------------


@dataclass
class PermanentCase:
    """A store that refuses for good, and what the failure must tell the user."""

    store: dict[str, Any]
    hint: str
    size: int = 1000


def sftp_store(server: SshServer, cwd: Path, port: int) -> dict[str, Any]:
    kwargs = {
        "host": server.host,
        "port": port,
        "username": server.username,
        "key_filename": server.key_filename,
        "known_hosts": server.known_hosts,
        "cwd": str(cwd),
        "connect_timeout": 5.0,
    }
    return {"object_store_cls": SFTPObjectStore, "object_store_kwargs": kwargs}


@pytest.fixture
def permanent_case(request: pytest.FixtureRequest) -> Iterator[PermanentCase]:
    kind = request.param
    if kind == "bad-credentials":
        rclone: S3Server = request.getfixturevalue("rclone_server")
        store = s3_store(rclone, rclone.endpoint_url, aws_secret_access_key="not-the-secret")
        yield PermanentCase(store, "check the credentials")
    elif kind == "missing-bucket":
        moto: S3Server = request.getfixturevalue("moto_server")
        store = s3_store(moto, moto.endpoint_url, bucket="hoist-no-such-bucket")
        yield PermanentCase(store, "create it or fix the name")
    elif kind == "sftp-permission-denied":
        sshd: SshServer = request.getfixturevalue("sshd_server")
        cwd = Path(tempfile.mkdtemp(prefix="ro-", dir=sshd.root))
        # Root ignores file modes; internal-sftp -R refuses every write for real.
        yield PermanentCase(sftp_store(sshd, cwd, sshd.read_only_port), "check the remote user")
    else:
        sshd = request.getfixturevalue("sshd_server")
        cwd = Path(tempfile.mkdtemp(prefix="full-", dir=sshd.root))
        with small_tmpfs(cwd / "disk", "1m") as disk:
            yield PermanentCase(sftp_store(sshd, disk, sshd.port), "free space", size=2 * MiB)


def hoist_wait(fleet: WorkerFleet, run_name: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``hoist wait --run NAME`` as a job epilogue runs it: its own process."""
    env = {**clean_environment(), "HOIST_BROKER_URL": fleet.broker_url, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "hoist.cli", "--home", str(home), "wait", "--run", run_name,
         "--timeout", "60"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "permanent_case",
    ["bad-credentials", "missing-bucket", "sftp-permission-denied", "sftp-disk-full"],
    indirect=True,
)
def test_permanent_store_errors_fail_fast_and_say_what_to_fix(
    permanent_case: PermanentCase,
    redis_server: RedisServer,
    fleet: WorkerFleet,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    case_id = request.node.callspec.id
    run_name = f"permanent-{case_id}-{int(time.time() * 1000)}"
    source = tmp_path / "ckpt.pt"
    data = os.urandom(permanent_case.size)
    source.write_bytes(data)
    logger = make_logger(fleet, run_name, **permanent_case.store)

    started = time.monotonic()
    logger.file_artifact(LogLevel.EPOCH, "ckpt.pt", source)
    with pytest.raises(UploadFailedError) as raised:
        logger.wait(timeout=120)
    surfaced = time.monotonic() - started
    logger.close()

    [(artifact, object_name, error)] = raised.value.failures
    assert (artifact, object_name) == ("ckpt.pt", f"{run_name}/ckpt.pt")
    assert permanent_case.hint in error, error
    assert "ckpt.pt" in str(raised.value) and permanent_case.hint in str(raised.value)
    [record] = Records.from_url(redis_server.url).run_artifacts(run_name)
    assert record.state is State.FAILED
    assert record.fields["attempts"] == "1", record.fields  # not retried
    assert retry_lines(fleet.logs(), run_name) == {}
    [staged] = list((fleet.staging_root / run_name).rglob("*ckpt.pt"))
    assert staged.read_bytes() == data  # kept for `hoist retry` once fixed

    waited = hoist_wait(fleet, run_name, tmp_path / "home")
    assert waited.returncode == 1, waited
    # The error cell of the table wraps; read it without the borders.
    text = re.sub(r"\s+", " ", (waited.stdout + waited.stderr).replace("│", " "))
    assert "ckpt.pt" in text and "hoist retry" in text, text
    assert permanent_case.hint in text, text
    print(
        f"\n[permanent: {case_id}] failed after {record.fields['attempts']} attempt, "
        f"{surfaced:.2f} s from file_artifact to UploadFailedError: {error}"
    )


# ----- 3. one exact sequence: a corrupted object the failed attempt could not delete ----


def test_corrupted_leftover_of_a_failed_attempt_is_replaced(
    moto_server: S3Server, redis_server: RedisServer, fleet: WorkerFleet, tmp_path: Path
) -> None:
    """The upload is corrupted, verification catches it, and deleting the bad object fails.

    The next attempt finds an object with other bytes under the name. It is
    this artifact's own unverified write, not someone else's object, so it must
    be replaced, not refused as "exists with other bytes".
    """
    run_name = f"leftover-{int(time.time() * 1000)}"
    key = f"{run_name}/ckpt.pt"
    script = [("PUT", key, "corrupt_upload"), ("DELETE", key, "error500")]
    source = tmp_path / "ckpt.pt"
    data = os.urandom(200_000)
    source.write_bytes(data)
    with FaultProxy(moto_server.endpoint_url, rate=0.0, script=script) as proxy:
        # No boto3 retries (max_attempts counts retries), so the scripted 500 fails the delete.
        store = s3_store(moto_server, proxy.url, max_attempts=0)
        logger = make_logger(fleet, run_name, **store)
        logger.file_artifact(LogLevel.EPOCH, "ckpt.pt", source)
        logger.wait(timeout=120)
        logger.close()
    assert proxy.stats.faults == {"corrupt_upload": 1, "error500": 1}, proxy.stats.summary()
    assert dict(proxy.stats.corrupted_objects) == {f"{moto_server.bucket}/{key}": 1}
    held = moto_server.client().get_object(Bucket=moto_server.bucket, Key=key)["Body"].read()
    assert held == data
    [record] = Records.from_url(redis_server.url).run_artifacts(run_name)
    assert record.fields["attempts"] == "2", record.fields
    [(n, error, _)] = retry_lines(fleet.logs(), run_name)[record.id]
    assert n == 1 and "ChecksumMismatchError" in error, error  # the cause, not the delete's 500
