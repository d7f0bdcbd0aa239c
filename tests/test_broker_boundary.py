"""The broker boundary and Celery's remote control, attacked through a real broker.

Real processes only: a private ``redis-server``, two ``hoist worker``
processes, the real logger. The attacker can write to the broker: it pushes
raw envelopes onto the upload queue (as kombu's ``LPUSH``), one deviation
each from the envelope Celery sends, and broadcasts remote-control
commands. Every end-to-end test asserts that the attack fails (the
boundary's own log line; for a message, no "received" line from Celery for
its id) and that nothing legitimate broke: every worker process is still
running, and an upload logged after the attack by a real
:class:`~hoist.ObjectStoreLogger` lands. Before the boundary, the
compression bomb grew a worker by 1.5 GiB, the nested messages, the raw
bytes and the broken envelopes made the worker's main process exit, and a
broadcast ``shutdown`` or ``revoke`` stopped a worker or an upload
(:mod:`hoist.protocol.boundary`, :mod:`hoist.tasks.control`). The pure checks
get many examples at the end.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.transport import redis as kombu_redis

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import InvalidMessageError
from hoist.protocol.boundary import (
    MAX_ENVELOPE_BYTES,
    MAX_JSON_DEPTH,
    admit,
    refusal_line,
    too_deep,
)
from hoist.protocol.messages import UPLOAD_QUEUE, UPLOAD_TASK, artifact_id
from hoist.protocol.sending import sender
from hoist.state.records import Records
from hoist.state.states import State
from hoist.tasks.control import KEPT, read_only_panel
from tests.conftest import _serve, serve_fleet, single_rank_local_store
from tests.services.process import descendants
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until

KiB = 1024
MiB = 1024 * KiB
QUEUED_TIMEOUT = 3
"""The fleet's ``HOIST_QUEUED_TIMEOUT``, so that the watchdog test takes seconds."""
BOUNDARY = "at the broker boundary"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: broadcasts reach only this module's workers."""
    yield from _serve(RedisServer(tmp_path_factory.mktemp("boundary-redis")))


@pytest.fixture(scope="module")
def fleet(broker: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFleet]:
    """Two workers, so that a message that kills one would be redelivered to the other."""
    env = {"HOIST_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT)}
    yield from serve_fleet(
        tmp_path_factory, broker.url, "boundary", count=2, concurrency=1, env=env
    )


# --------------------------------------------------------------------------- helpers


def envelope(task_id: str, body: bytes, **changes: Any) -> dict[str, Any]:
    """A protocol-2 envelope as Celery 5.7 and kombu send a ``hoist.upload`` (base64 body).

    ``changes`` replaces top-level fields; ``headers=`` and ``properties=``
    are merged into Celery's own.
    """
    headers = {
        "lang": "py",
        "task": UPLOAD_TASK,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        **changes.pop("headers", {}),
    }
    properties = {
        "correlation_id": task_id,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": UPLOAD_QUEUE},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
        **changes.pop("properties", {}),
    }
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
        **changes,
    }


def task_body(message: Any) -> bytes:
    """Celery's protocol-2 body for ``hoist.upload(message=...)``."""
    return json.dumps([[], {"message": message}, {"callbacks": None, "errbacks": None}]).encode()


def push(broker: RedisServer, raw: dict[str, Any] | bytes) -> None:
    """Put ``raw`` on the upload queue as kombu's publish does; the workers BRPOP it."""
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    redis.Redis.from_url(broker.url).lpush(UPLOAD_QUEUE, data)


def new_id(kind: str) -> str:
    return f"attack-{kind}-{time.time_ns()}"


def said(fleet: WorkerFleet, *fragments: str) -> bool:
    return any(all(f in line for f in fragments) for line in fleet.logs().splitlines())


def refused(fleet: WorkerFleet, *fragments: str) -> None:
    """Wait for the boundary's refusal naming ``fragments``."""
    wait_until(lambda: said(fleet, "refused a malformed", BOUNDARY, *fragments), timeout=30)


def received(fleet: WorkerFleet, task_id: str) -> bool:
    """Whether Celery took the message in (its "Task NAME[ID] received" line)."""
    return f"[{task_id}] received" in fleet.logs()


def assert_alive(fleet: WorkerFleet) -> None:
    for worker in fleet.workers:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    assert "Unrecoverable error" not in fleet.logs()


def assert_gone(broker: RedisServer, task_id: str) -> None:
    """Neither queued again nor held in kombu's unacknowledged set."""
    client = redis.Redis.from_url(broker.url)
    held = [*client.lrange(UPLOAD_QUEUE, 0, -1), *client.hvals("unacked")]
    assert not any(task_id.encode() in item for item in held)


def upload_lands(fleet: WorkerFleet, tmp_path: Path, **logger: Any) -> str:
    """Log one file with a real logger (signed, batched as ranks do); it must land."""
    run = f"good-{time.time_ns()}"
    store = tmp_path / f"store-{run}"
    (store / "artifacts").mkdir(parents=True)
    payload = os.urandom(2 * KiB)
    source = tmp_path / f"{run}.bin"
    source.write_bytes(payload)
    arguments = {**single_rank_local_store(fleet, store), **logger}
    with ObjectStoreLogger(
        object_name="{run_name}/{artifact_name}", run_name=run, **arguments
    ) as log:
        artifact = log.file_artifact(LogLevel.BATCH, "good.bin", source)
        log.wait(timeout=60)
    assert (store / "artifacts" / run / "good.bin").read_bytes() == payload
    assert_alive(fleet)
    return artifact


def rss_bytes(fleet: WorkerFleet) -> int:
    """Resident memory of every worker process: main processes and their pools."""
    total = 0
    for worker in fleet.workers:
        assert worker.proc is not None
        for pid in [worker.proc.pid, *descendants(worker.proc.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            total += int(kib) * KiB
    return total


def zlib_bomb(inflated: int) -> bytes:
    """A task body holding ``inflated`` zeros, compressed as kombu's gzip (zlib)."""
    packer = zlib.compressobj(9)
    parts = [packer.compress(b'[[], {"message": {"padding": "')]
    chunk = b"0" * (4 * MiB)
    parts += [packer.compress(chunk) for _ in range(inflated // len(chunk))]
    parts += [packer.compress(b'"}}, {}]'), packer.flush()]
    return b"".join(parts)


def inflated_size(data: bytes) -> int:
    """How large ``data`` inflates, counted 16 MiB at a time."""
    unpacker, total = zlib.decompressobj(), 0
    while data:
        total += len(unpacker.decompress(data, 16 * MiB))
        data = unpacker.unconsumed_tail
    return total


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --------------------------------------------------------------------------- messages


def test_an_envelope_like_ours_reaches_celery(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    """The control for every message attack below: the hand-made envelope passes the
    boundary, so what the attacks change is what the boundary refuses."""
    task_id = new_id("control")
    push(broker, envelope(task_id, task_body({"id": task_id})))
    wait_until(lambda: received(fleet, task_id), timeout=30)
    # hoist's own check refuses the body after decoding (it is no message of a rank).
    wait_until(lambda: said(fleet, "refused", task_id), timeout=30)
    assert not said(fleet, BOUNDARY, task_id)
    upload_lands(fleet, tmp_path)


def test_a_compression_bomb_is_refused_before_it_inflates(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    bomb = zlib_bomb(340 * MiB)
    assert len(bomb) < 400 * KiB and inflated_size(bomb) > 340 * MiB  # the bomb works
    task_id = new_id("gzip")
    before = rss_bytes(fleet)
    push(broker, envelope(task_id, bomb, headers={"compression": "application/x-gzip"}))
    refused(fleet, repr(task_id), "compression header")
    upload_lands(fleet, tmp_path)
    grown = rss_bytes(fleet) - before
    assert grown < 100 * MiB, f"the workers grew by {grown / MiB:.0f} MiB"
    assert not received(fleet, task_id)
    assert_gone(broker, task_id)
    print(f"\n[compression bomb] {len(bomb) / KiB:.0f} KiB; workers grew {grown / MiB:.1f} MiB")


def test_an_oversized_envelope_is_refused_unread(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    task_id = new_id("large")
    body = task_body({"id": task_id, "padding": "x" * MAX_ENVELOPE_BYTES})
    push(broker, envelope(task_id, body))
    # Too large to parse for the log line: its names are found by a bounded scan.
    refused(
        fleet, f"{UPLOAD_TASK} message (task id {task_id!r})", f"more than the {MAX_ENVELOPE_BYTES}"
    )
    upload_lands(fleet, tmp_path)
    assert not received(fleet, task_id)
    assert_gone(broker, task_id)


@pytest.mark.parametrize("where", ["body", "header"])
def test_a_message_nested_900_deep_is_refused_and_no_worker_dies(
    where: str, fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    """Once, a main process exited at pickling it, and every worker after it in turn."""
    task_id = new_id(f"deep-{where}")
    if where == "body":
        raw = envelope(task_id, task_body({"id": task_id, "x": nested(900)}))
        reason = "the body is nested deeper than 32 levels"
    else:
        raw = envelope(task_id, task_body({"id": task_id}), headers={"root_id": nested(900)})
        reason = "the envelope is nested deeper than 32 levels"
    assert len(json.dumps(raw)) < 8 * KiB
    push(broker, raw)
    refused(fleet, repr(task_id), reason)
    upload_lands(fleet, tmp_path)
    assert not received(fleet, task_id)
    assert_gone(broker, task_id)


def _with(**parts: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A change to our envelope: ``headers`` and ``properties`` objects are merged into
    Celery's, anything else replaces the field."""

    def change(raw: dict[str, Any]) -> dict[str, Any]:
        merged = dict(raw)
        for key, value in parts.items():
            mergeable = key in ("headers", "properties") and isinstance(value, dict)
            merged[key] = {**raw[key], **value} if mergeable else value
        return merged

    return change


def _without(field: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: {key: value for key, value in raw.items() if key != field}


MALFORMED: dict[str, tuple[bytes | Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    # case: (raw bytes, or a change to our envelope; what the refusal says)
    "raw bytes, no JSON": (b"not json at all", "the envelope is not JSON"),
    "not UTF-8": (b'\xff\xfe{"body": ""}', "the envelope is not JSON"),
    "a JSON list": (b"[1, 2, 3]", "the envelope is a JSON list, not an object"),
    "no properties": (_without("properties"), "lacks its field 'properties'"),
    "a list as delivery tag": (_with(properties={"delivery_tag": [1]}), "'delivery_tag' is a list"),
    "no delivery info": (_with(properties={"delivery_info": None}), "lacks its property"),
    "bad base64": (_with(body="!!! no base64 !!!"), "the body is not valid base64"),
    "unknown body encoding": (_with(properties={"body_encoding": "rot13"}), "'rot13'"),
    "a list as task name": (_with(headers={"task": [UPLOAD_TASK]}), "'task' is a list"),
    "a string as time limit": (_with(headers={"timelimit": "x"}), "'timelimit' is a str"),
    "time limits no numbers": (_with(headers={"timelimit": ["a", "b"]}), "'timelimit' is not"),
    "headers a list": (_with(headers=["task"]), "'headers' is a list"),
}


def test_malformed_envelopes_are_refused_and_no_worker_dies(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    """Each of these made a main process exit (or its consumer restart) before."""
    ids = {}
    for case, (change, _) in MALFORMED.items():
        task_id = ids[case] = new_id("malformed")
        good = envelope(task_id, task_body({"id": task_id}))
        push(broker, change if isinstance(change, bytes) else change(good))
    for case, (_, reason) in MALFORMED.items():
        try:
            refused(fleet, reason)
        except TimeoutError:
            pytest.fail(f"{case}: no refusal saying {reason!r}")
    upload_lands(fleet, tmp_path)
    for case, task_id in ids.items():
        assert not received(fleet, task_id), case
        assert_gone(broker, task_id)


# --------------------------------------------------------------------------- remote control


def replies_disabled(replies: list[dict[str, Any]] | None, fleet: WorkerFleet) -> None:
    """Every worker answered, each with "… is disabled on hoist workers"."""
    assert replies is not None and len(replies) == len(fleet.workers), replies
    for reply in replies:
        (answer,) = reply.values()
        assert "is disabled on hoist workers" in answer.get("error", ""), reply


def test_a_broadcast_shutdown_stops_no_worker(fleet: WorkerFleet, tmp_path: Path) -> None:
    control = sender(fleet.broker_url).control
    replies_disabled(control.shutdown(reply=True, timeout=5, limit=2), fleet)
    control.shutdown()  # and once without asking for a reply
    wait_until(lambda: fleet.logs().count("command 'shutdown' from the broker ignored") >= 4)
    time.sleep(1)  # a worker obeying would be on its way out by now
    upload_lands(fleet, tmp_path)


def test_a_revoke_before_logging_does_not_stop_the_upload(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    """A rank's first artifact id is predictable; revoking it used to discard the upload
    at every delivery, so it stayed queued for ever."""
    run = f"revoked-{time.time_ns()}"
    victim = artifact_id(run, 0, 1)
    control = sender(fleet.broker_url).control
    replies_disabled(control.revoke(victim, reply=True, timeout=5, limit=2), fleet)
    replies_disabled(control.revoke(victim, terminate=True, reply=True, timeout=5, limit=2), fleet)
    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    source = tmp_path / "model.pt"
    source.write_bytes(b"not revoked")
    arguments = single_rank_local_store(fleet, store)
    with ObjectStoreLogger(
        object_name="{run_name}/{artifact_name}", run_name=run, **arguments
    ) as log:
        assert log.file_artifact(LogLevel.EPOCH, "model.pt", source) == victim
        log.wait(timeout=60)
    assert (store / "artifacts" / run / "model.pt").read_bytes() == b"not revoked"
    assert "Discarding revoked task" not in fleet.logs()
    revoked = control.inspect(timeout=5, limit=2).revoked()
    assert revoked is not None and all(ids == [] for ids in revoked.values())
    assert_alive(fleet)


ACTING_COMMANDS: dict[str, dict[str, Any]] = {
    "terminate": {"task_id": "hoist-x-r0-1", "signal": "SIGKILL"},
    "revoke_by_stamped_headers": {"headers": {"run": "x"}},
    "pool_grow": {"n": 4},
    "pool_shrink": {"n": 1},
    "pool_restart": {},
    "autoscale": {"max": 8, "min": 0},
    "add_consumer": {"queue": "attacker.queue"},
    "cancel_consumer": {"queue": UPLOAD_QUEUE},
    "rate_limit": {"task_name": UPLOAD_TASK, "rate_limit": "1/h"},
    "time_limit": {"task_name": UPLOAD_TASK, "soft": 1, "hard": 1},
    "disable_events": {},
    "enable_events": {},
    "heartbeat": {},
    "election": {"id": "x", "topic": "y"},
    "hello": {"from_node": "attacker@host", "revoked": ["hoist-x-r0-2"]},
    "memdump": {},
    "objgraph": {},
    "report": {},
    "query_task": {"ids": ["hoist-x-r0-1"]},
    "clock": {},
    "no_such_command\nforged log line": {},
}


def test_commands_that_act_do_nothing_and_flower_still_sees_the_fleet(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    control = sender(fleet.broker_url).control
    for command, arguments in ACTING_COMMANDS.items():
        replies = control.broadcast(
            command, arguments=arguments, reply=True, timeout=5, limit=len(fleet.workers)
        )
        try:
            replies_disabled(replies, fleet)
        except AssertionError as exc:
            raise AssertionError(f"{command}: {exc}") from None
    assert "forged log line" not in fleet.logs().replace("\\nforged log line", "")
    # What Flower asks for still answers, from every worker.
    inspector = control.inspect(timeout=5, limit=len(fleet.workers))
    names = sorted(f"w{i}" for i in range(len(fleet.workers)))
    for method in ("ping", "stats", "active_queues", "registered", "conf", "active"):
        answers = getattr(inspector, method)()
        assert answers is not None, method
        assert sorted(name.split("@")[0] for name in answers) == names, (method, answers)
    for queues in inspector.active_queues().values():  # cancel_consumer did nothing
        assert {queue["name"] for queue in queues} == {UPLOAD_QUEUE, "hoist.symlinks"}
    for tasks in inspector.registered().values():
        assert UPLOAD_TASK in tasks
    for reserved in (inspector.reserved(), inspector.scheduled(), inspector.revoked()):
        assert reserved is not None and all(found == [] for found in reserved.values())
    upload_lands(fleet, tmp_path)  # rate_limit, time_limit, pool_shrink: all still as before


def test_a_message_the_broker_lost_is_sent_again_by_the_watchdog(
    fleet: WorkerFleet, broker: RedisServer, tmp_path: Path
) -> None:
    """What happens to an artifact whose message is dropped, revoked or lost: the rank
    publishes to a database no worker reads (the message is lost), its record sits in
    the fleet's; the watchdog sends it again after ``queued_timeout``."""
    lost_broker = broker.url.rsplit("/", 1)[0] + "/1"
    records = Records.from_url(broker.url)
    started = time.monotonic()
    artifact = upload_lands(fleet, tmp_path, broker_url=lost_broker, state_url=broker.url)
    assert records.get(artifact).state is State.DONE
    assert said(fleet, artifact, "no worker has claimed it; sending it again")
    assert redis.Redis.from_url(lost_broker).llen(UPLOAD_QUEUE) == 1  # the lost message
    print(f"\n[lost message] landed {time.monotonic() - started:.1f} s after logging")


# --------------------------------------------------------------------------- the pure checks


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(alphabet=st.sampled_from('[]{}"\\/,: ab\u00e9\n'), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3)
    ),
    max_leaves=60,
)


@settings(max_examples=400)
@given(value=json_values, ensure_ascii=st.booleans(), limit=st.integers(0, 12))
def test_the_depth_scan_is_exact_for_any_json(value: Any, ensure_ascii: bool, limit: int) -> None:
    """Brackets, quotes and backslashes inside strings never change the answer."""
    text = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert too_deep(text, limit) is (depth(value) > limit)


@pytest.mark.parametrize(
    "text",
    [b"[" * 100_000, b"[" * 40 + b"]" * 39, b'["]' + b"[" * 40, (b"[" * 40 + b"]" * 40) * 10],
    ids=["100,000 opening", "one too few closing", "an open string", "repeated deep"],
)
def test_the_depth_scan_refuses_what_does_not_balance_or_nests_too_deep(text: bytes) -> None:
    assert too_deep(text)


@settings(max_examples=300)
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_admit_refuses_anything_with_a_reason_and_never_raises_another_error(
    raw: bytes | str,
) -> None:
    try:
        admit(raw)
    except InvalidMessageError as exc:
        assert str(exc)


def test_admit_takes_what_celery_sends_single_and_in_a_batch(broker: RedisServer) -> None:
    """A real send and a real batch of 32 through Celery and kombu, read back raw."""
    from hoist.protocol.messages import UploadRequest, order_key
    from hoist.protocol.sending import send_batch

    queue = f"boundary-unit-{time.time_ns()}"
    members = [
        UploadRequest(
            id=artifact_id("unit", 0, seq),
            run_name="unit",
            rank=0,
            seq=seq,
            artifact_name=f"metrics/step-{seq:08d}/eval_results_shard_{seq:05d}.json",
            object_name=f"runs/unit/rank0/metrics/step-{seq:08d}/eval_{seq:05d}.json",
            order=order_key(0, seq),
            store={"kind": "s3", "kwargs": {"bucket": "ckpts"}, "sealed": "g" * 300},
            staged_path=f"/staging/unit/rank0/{seq:08d}-eval_results_shard_{seq:05d}.json",
            size=4096,
            queue=queue,
        )
        for seq in range(1, 33)
    ]
    app = sender(broker.url)
    send_batch(app, members)
    app.send_task(UPLOAD_TASK, kwargs={"message": members[0].to_json()}, queue=queue)
    client = redis.Redis.from_url(broker.url)
    raws = [client.rpop(queue) for _ in range(2)]
    assert all(raws)
    for raw in raws:
        assert raw is not None
        envelope, body = admit(raw)
        assert body is not None and body == base64.b64decode(envelope["body"])
        assert len(raw) < MAX_ENVELOPE_BYTES / 8
    assert not too_deep(base64.b64decode(json.loads(raws[0])["body"]), 7)  # 7 deep at most


def test_a_refusal_line_names_the_task_on_one_short_line() -> None:
    task_id = "hoist-run-r0-1"
    good = json.dumps(envelope(task_id, b"[]")).encode()
    line = refusal_line(good, UPLOAD_QUEUE, "why")
    assert line.startswith(f"refused a malformed {UPLOAD_TASK} message (task id {task_id!r})")
    assert f"{BOUNDARY}, from {UPLOAD_QUEUE}: why" in line
    hostile = envelope("x" * 10_000 + "\n", b"[]", headers={"task": "evil\nINFO forged"})
    line = refusal_line(json.dumps(hostile), UPLOAD_QUEUE, "why")
    assert "\n" not in line and len(line) < 400
    assert refusal_line(b"\xff" * 10, "q", "why").startswith(
        "refused a malformed (unreadable) message (task id (unreadable))"
    )
    # Too large or too deep to parse: the names are still found, by a bounded scan.
    for raw in (
        envelope(task_id, b"x" * MAX_ENVELOPE_BYTES),
        envelope(task_id, b"[]", headers={"root_id": nested(100)}),
    ):
        line = refusal_line(json.dumps(raw).encode(), UPLOAD_QUEUE, "why")
        assert line.startswith(f"refused a malformed {UPLOAD_TASK} message (task id {task_id!r})")


def test_the_panel_keeps_only_read_only_inspections() -> None:
    panel = read_only_panel()
    assert set(panel) == KEPT == {
        "stats", "active_queues", "registered", "conf", "active", "reserved", "scheduled",
        "revoked", "ping",
    }  # fmt: skip
    for name in ("shutdown", "revoke", "pool_restart", "anything"):
        assert panel[name](None) == {"error": f"{name!r} is disabled on hoist workers"}
    assert MAX_JSON_DEPTH == 32


def test_kombu_still_reads_messages_where_the_channel_checks_them() -> None:
    """RedisChannel._brpop_read and _get are kombu 5.7's with the check added: if kombu's
    change, ours must be compared with them again."""
    brpop = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert "self.connection._deliver(loads(bytes_to_str(item)), dest)" in brpop
    assert "self._flush_brpop_reauth()" in brpop
    assert "return loads(bytes_to_str(item))" in inspect.getsource(kombu_redis.Channel._get)
    assert "self._handle_message(c, response)" in inspect.getsource(
        kombu_redis.Channel._receive_one
    )
