"""The durable record of every artifact, kept in Redis.

The broker is not a database: Celery does not deduplicate task ids, a message
can be delivered twice (a killed worker, a visibility timeout), and ETA tasks
sit unacknowledged in worker memory. So every task first consults the
artifact's record, and every outcome is written there. The record is what
``wait()``, ``hoist status`` and ``hoist retry`` read.

Keys (all under ``hoist:``):

==============================  ==================================================
``artifact:<id>``               hash: the message, state, attempts, result or error
``owner:<id>``                  the token of the task working on it (expires)
``run:<run>``                   sorted set of the run's artifact ids, by log time
``runs``                        sorted set of run names, by last activity
``latest:<store>:<object>``     order key of the newest version logged of a name
``pointer:<store>:<object>``    order key of the pointer version last written
``deferred``                    sorted set: artifact id -> when to send it again
``ckpt:<run>:<checkpoint>``     hash: each rank's artifact ids of a sharded checkpoint
==============================  ==================================================

Nothing is kept for ever: a record that reaches a terminal state, the run's
index and the name markers expire :func:`retention_seconds` after their last
write (``HOIST_RETENTION_DAYS``, 14 by default), so Redis holds the last two
weeks of artifacts, not every artifact since the fleet started.

``deferred`` is also the watchdog of every unfinished artifact:

- a claimed artifact sits there with a due time a little past its owner's
  lease, pushed forward by the owner's heartbeat. If the worker dies, the
  entry falls due and the task is sent again, without waiting for the
  broker's visibility timeout.
- a newly logged artifact is put there by the rank, due
  :data:`FIRST_LOOK_SECONDS` later (most are claimed by then, which moves
  the entry, so the resender need not read them). While its record stays
  ``queued`` (sent, never claimed), the resender looks at it again every
  ``queued_timeout`` and, past that, sends it again. This covers
  a message the broker no longer holds or will only hand back after its
  visibility timeout (2 h): a worker killed between taking the message and
  claiming it, or a Redis restart under a message taken but not claimed
  (measured in ``tests/test_faults_fleet.py``: without this the artifact
  stayed queued and its rank's ``wait()`` timed out). A copy sent while the
  first still waits in a long queue is harmless: the claim stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import redis
from redis.typing import EncodableT

from hoist.errors import ConfigurationError
from hoist.protocol.messages import Message

PREFIX = "hoist:"
DEFERRED = f"{PREFIX}deferred"
REFUSED = f"{PREFIX}refused"
RETENTION_DAYS = 14.0
FIRST_LOOK_SECONDS = 5.0
"""When the watchdog first looks at a newly logged artifact (see above). Due at
once, as it was, the resender read and rescheduled every artifact a moment
after it was logged: three round trips per artifact in the worker's main
process, which a burst of small files pays for in throughput."""


def retention_seconds() -> int:
    """How long finished records and markers are kept (``HOIST_RETENTION_DAYS``, default 14).

    Ranks and workers read it from their own environment; it only needs to
    be roughly the same on both sides.
    """
    raw = os.environ.get("HOIST_RETENTION_DAYS") or RETENTION_DAYS
    try:
        days = float(raw)
    except ValueError:
        raise ConfigurationError(f"HOIST_RETENTION_DAYS={raw!r} is not a number of days") from None
    return max(1, int(days * 86400))


class State(str, Enum):
    QUEUED = "queued"
    """Staged and sent to the broker."""
    WAITING = "waiting"
    """Held back for a concurrency lease, a name lock or a pointer's target."""
    UPLOADING = "uploading"
    RETRYING = "retrying"
    """A transient error; sent again after a backoff."""
    DONE = "done"
    """Uploaded and verified (or, for a pointer, written)."""
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A newer version of the same name was logged; this one was skipped."""

    @property
    def terminal(self) -> bool:
        return self in (State.DONE, State.FAILED, State.SUPERSEDED)


class Claim(str, Enum):
    CLAIMED = "claimed"
    BUSY = "busy"
    """Another live task owns it: this delivery is a duplicate."""
    FINISHED = "finished"
    """Already in a terminal state: nothing to do."""
    POISON = "poison"
    """Delivered too often without an outcome; marked failed."""
    MISMATCH = "mismatch"
    """The record holds another message under this id: this one is not acted on."""


# Claim an artifact for one task. KEYS: record, owner, deferred.
# ARGV: token, lease ms, max deliveries, now (s), watchdog due (ms), message, task, id
# A worker acts only on the very message its record holds: another message
# under a known id (even a signed one) touches nothing.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'message', ARGV[6], 'task', ARGV[7],
             'enqueued_at', ARGV[4], 'attempts', 0, 'deliveries', 0)
  state = 'queued'
else
  local held = redis.call('HMGET', KEYS[1], 'message', 'task')
  if held[1] ~= ARGV[6] or held[2] ~= ARGV[7] then return 'mismatch' end
end
if state == 'done' or state == 'failed' or state == 'superseded' then return 'finished' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy' end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[4], 'error',
    'the worker was lost ' .. (deliveries - 1) .. ' times while handling this artifact ' ..
    '(killed, out of memory?); see the workers\\' logs, then `hoist retry`')
  redis.call('ZREM', KEYS[3], ARGV[8])
  return 'poison'
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'uploading', 'started_at', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
return 'claimed'
"""

# Keep a claim alive. KEYS: owner, deferred. ARGV: token, lease ms, watchdog due, id
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4])
return 1
"""

# Record an outcome and let go. KEYS: record, owner, deferred, then leases to
# release. ARGV: token, id, due (ms, or '' to leave deferred), retention (s, or
# '' to keep), then field/value pairs
_SETTLE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
redis.call('HSET', KEYS[1], 'deliveries', 0, unpack(ARGV, 5))
if ARGV[4] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# Raise a sorted marker only upward; 1 if raised. Shared by the scripts below.
_RAISE_MARKER = """
local function raise_marker(key, value, retention)
  local current = redis.call('GET', key)
  if current and current >= value then return 0 end
  redis.call('SET', key, value, 'EX', retention)
  return 1
end
"""

# KEYS: marker. ARGV: value, retention (s)
_RAISE = _RAISE_MARKER + "return raise_marker(KEYS[1], ARGV[1], ARGV[2])\n"

# Look at a queued artifact again later, unless a worker claimed it meanwhile
# (the claim set its own due time). KEYS: record, deferred. ARGV: due (ms), id
_RECHECK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# Reset a failed record for `hoist retry`. KEYS: record. ARGV: now (s)
_RESET = """
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'deliveries', 0, 'error', '',
           'retried_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_at')
return 1
"""

# Register a rank's files of a checkpoint. KEYS: checkpoint hash.
# ARGV: rank, ids (JSON), world size, retention (s).
# Returns the number of ranks registered, or -1 if the world size disagrees.
_REGISTER = """
local ws = redis.call('HGET', KEYS[1], 'world_size')
if ws and ws ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], 'world_size', ARGV[3], 'rank:' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('HLEN', KEYS[1]) - 1
"""

# Create a record and index it, in one call: the rank's file_artifact waits
# for it. KEYS: record, run index, run list, deferred, then optionally the
# name's latest marker. ARGV: id, run, now (s), now (ms), retention (s),
# once ('1': only if no record is pending or done), marker value, then
# field/value pairs. Returns 1 if created.
_CREATE = (
    _RAISE_MARKER
    + """
if ARGV[6] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state and state ~= 'failed' then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[5]))
-- The watchdog of an artifact not yet claimed (see the module's docstring).
redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[1])
if KEYS[5] then raise_marker(KEYS[5], ARGV[7], ARGV[5]) end
return 1
"""
)

# Fail a record whose message never reached the broker, unless a worker has it
# already (a send can fail after the broker took the message). KEYS: record.
# ARGV: now (s), error
_FAIL_QUEUED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[1], 'error', ARGV[2])
return 1
"""

# Take due entries of `deferred`, pushing each a little into the future so a
# sender that dies before sending does not lose it. KEYS: deferred.
# ARGV: now (ms), limit, guard due (ms)
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return due
"""

# The state of each record (false where there is none). KEYS: records.
_STATES = """
local states = {}
for i, key in ipairs(KEYS) do states[i] = redis.call('HGET', key, 'state') end
return states
"""


@dataclass(frozen=True)
class ArtifactStatus:
    """What the record says about one artifact.

    Parameters:
        id: the artifact id.
        state: its :class:`State`.
        fields: every field of the record, decoded.
    """

    id: str
    state: State
    fields: dict[str, str]

    @property
    def artifact_name(self) -> str:
        return self.message.get("artifact_name", "")

    @property
    def message(self) -> dict[str, Any]:
        return json.loads(self.fields.get("message", "{}"))

    @property
    def error(self) -> str:
        return self.fields.get("error", "")


class Records:
    """Reads and writes artifact records.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        lease_ms: how long a claim lives without a heartbeat.
    """

    def __init__(self, client: redis.Redis, lease_ms: int = 30_000) -> None:
        self.client = client
        self.lease_ms = lease_ms
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._settle = client.register_script(_SETTLE)
        self._raise = client.register_script(_RAISE)
        self._take_due = client.register_script(_TAKE_DUE)
        self._reset = client.register_script(_RESET)
        self._register = client.register_script(_REGISTER)
        self._fail_queued = client.register_script(_FAIL_QUEUED)
        self._recheck = client.register_script(_RECHECK)
        self._create = client.register_script(_CREATE)
        self._states = client.register_script(_STATES)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Records:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        return cls(client, **kwargs)

    # ----- rank side --------------------------------------------------------

    def create(self, message: Message, task: str, store_id: str) -> None:
        """Record a newly staged artifact and mark it the newest version of its name."""
        # "<order>|<id>": sorts by order, and names the artifact holding it.
        marker = f"{message.order}|{message.id}"
        self._create_record(message, task, latest_key(store_id, message.object_name), marker)

    def register_shards(
        self, run_name: str, checkpoint: str, rank: int, world_size: int, artifacts: list[str]
    ) -> int:
        """Record ``rank``'s artifacts of a checkpoint; return how many ranks have registered.

        Raises:
            ConfigurationError: another rank registered with a different world size.
        """
        key = _checkpoint(run_name, checkpoint)
        args: list[EncodableT] = [rank, json.dumps(artifacts), world_size, retention_seconds()]
        count = int(self._register(keys=[key], args=args))
        if count < 0:
            raise ConfigurationError(
                f"checkpoint {checkpoint!r} of run {run_name!r} was registered with another "
                f"world size than {world_size}; every rank must agree on world_size"
            )
        return count

    def shards(self, run_name: str, checkpoint: str) -> dict[int, list[str]]:
        """Each registered rank's artifact ids of a checkpoint."""
        fields = cast(dict[str, str], self.client.hgetall(_checkpoint(run_name, checkpoint)))
        return {
            int(name.removeprefix("rank:")): json.loads(value)
            for name, value in fields.items()
            if name.startswith("rank:")
        }

    def create_once(self, message: Message, task: str) -> bool:
        """Record ``message`` unless its record is pending or done; True if this call created it.

        Several ranks may ask for the same commit; only one sends it.
        """
        return self._create_record(message, task, once=True)

    def _create_record(
        self,
        message: Message,
        task: str,
        latest: str | None = None,
        marker: str = "",
        *,
        once: bool = False,
    ) -> bool:
        now = time.time()
        keys = [_record(message.id), f"{PREFIX}run:{message.run_name}", f"{PREFIX}runs", DEFERRED]
        fields = [x for pair in _new_record(message, task, now).items() for x in pair]
        args: list[EncodableT] = [
            message.id, message.run_name, now, int((now + FIRST_LOOK_SECONDS) * 1000),
            retention_seconds(),
            "1" if once else "", marker, *fields,
        ]  # fmt: skip
        return bool(self._create(keys=keys + ([latest] if latest else []), args=args))

    def reserve_seqs(self, run_name: str, rank: int, count: int = 1) -> range:
        """Reserve the rank's next ``count`` sequence numbers; unique across restarts of a run.

        A rank reserves a block at a time so that most ``file_artifact``
        calls skip this round trip; numbers of a block it never uses are
        simply skipped.

        Example:
            >>> records.reserve_seqs("bert-3", 0, 16)
            range(1, 17)
        """
        key = f"{PREFIX}seq:{run_name}:{rank}"
        pipe = self.client.pipeline()
        pipe.incrby(key, count)
        pipe.expire(key, retention_seconds())
        end = int(pipe.execute()[0])
        return range(end - count + 1, end + 1)

    def count_refusal(self, reason: str) -> None:
        """Count one refused message by reason (``hoist:refused``, a hash; never raises:
        a refusal must not fail for want of a counter)."""
        with contextlib.suppress(redis.RedisError):
            self.client.hincrby(REFUSED, reason, 1)

    def fail_queued(self, artifact: str, error: str) -> bool:
        """Mark a queued record failed: its message never reached the broker, or was refused.

        ``wait`` and ``hoist status`` show ``error``, and ``hoist retry`` sends
        it again. False (and nothing changed) if a worker has it already.
        """
        return bool(self._fail_queued(keys=[_record(artifact)], args=[time.time(), error]))

    # ----- worker side ------------------------------------------------------

    def claim(self, message: Message, task: str, token: str, max_deliveries: int) -> Claim:
        now_ms = int(time.time() * 1000)
        result = self._claim(
            keys=[_record(message.id), _owner(message.id), DEFERRED],
            args=[
                token,
                self.lease_ms,
                max_deliveries,
                now_ms / 1000,
                now_ms + 2 * self.lease_ms,
                json.dumps(message.to_json()),
                task,
                message.id,
            ],
        )
        return Claim(result)

    def renew(self, artifact: str, token: str) -> bool:
        due = int(time.time() * 1000) + 2 * self.lease_ms
        keys = [_owner(artifact), DEFERRED]
        return bool(self._renew(keys=keys, args=[token, self.lease_ms, due, artifact]))

    def settle(
        self,
        artifact: str,
        token: str,
        state: State,
        *,
        retry_in: float | None = None,
        release: Sequence[str] = (),
        **fields: Any,
    ) -> None:
        """Record ``state`` and ``fields``, release the claim and the leases held
        under ``release`` (keys); send again after ``retry_in`` s."""
        due = "" if retry_in is None else str(int((time.time() + retry_in) * 1000))
        keep = str(retention_seconds()) if state.terminal else ""
        values: list[Any] = ["state", state.value]
        if state.terminal:
            values += ["finished_at", time.time()]
        for name, value in fields.items():
            values += [name, value if isinstance(value, (str, int, float)) else json.dumps(value)]
        self._settle(
            keys=[_record(artifact), _owner(artifact), DEFERRED, *release],
            args=[token, artifact, due, keep, *values],
        )

    def count_attempt(self, artifact: str, **fields: str | float) -> tuple[int, bool]:
        """Count one try at the store and record ``fields`` with it, in one round trip.

        Returns the attempt's number, and whether an earlier attempt began
        writing (see :meth:`mark_write_started`): an object it left may be unverified.
        """
        record = _record(artifact)
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(record, "attempts", 1)
        pipe.hexists(record, "write_started")
        if fields:
            pipe.hset(record, items=[part for pair in fields.items() for part in pair])
        attempts, started, *_ = pipe.execute()
        return int(attempts), bool(started)

    def mark_write_started(self, artifact: str, attempt: int) -> None:
        """Note that an attempt began sending the artifact's bytes to the store."""
        self.client.hsetnx(_record(artifact), "write_started", attempt)

    def raise_marker(self, key: str, order: str) -> bool:
        """Set ``key`` to ``order`` unless it already holds a later one."""
        return bool(self._raise(keys=[key], args=[order, retention_seconds()]))

    def marker(self, key: str) -> str | None:
        value = self.client.get(key)
        return None if value is None else str(value)

    def take_due(self, limit: int = 100, guard_s: float = 30.0) -> list[str]:
        now = int(time.time() * 1000)
        return list(self._take_due(keys=[DEFERRED], args=[now, limit, now + int(guard_s * 1000)]))

    # ----- reading ----------------------------------------------------------

    def get(self, artifact: str) -> ArtifactStatus | None:
        # The client decodes responses (decode_responses=True): these are str.
        fields = cast(dict[str, str], self.client.hgetall(_record(artifact)))
        if not fields:
            return None
        return ArtifactStatus(artifact, State(fields["state"]), fields)

    def states(self, artifacts: list[str]) -> dict[str, State]:
        """The state of each artifact that has a record."""
        # One script call: a pipeline of HGETs costs ~10 µs of Python per artifact.
        answers = self._states(keys=[_record(artifact) for artifact in artifacts])
        return {a: State(s) for a, s in zip(artifacts, answers, strict=True) if s}

    def run_artifacts(self, run_name: str) -> list[ArtifactStatus]:
        ids = cast(list[str], self.client.zrange(f"{PREFIX}run:{run_name}", 0, -1))
        pipe = self.client.pipeline()
        for artifact in ids:
            pipe.hgetall(_record(artifact))
        return [
            ArtifactStatus(artifact, State(fields["state"]), fields)
            for artifact, fields in zip(ids, pipe.execute(), strict=False)
            if fields
        ]

    def runs(self, limit: int = 0) -> list[str]:
        """Run names, the most recently active first; at most ``limit`` of them (0: all)."""
        return cast(
            list[str], self.client.zrevrange(f"{PREFIX}runs", 0, limit - 1 if limit > 0 else -1)
        )

    def reset_for_retry(self, artifact: str) -> bool:
        """Make a failed artifact queued again, with no attempts; False if it is not failed.

        Only a failed record is reset, atomically: two ``hoist retry`` runs at
        once, or a retry racing a worker, cannot send one artifact twice over.
        The caller sends the message again.

        Example:
            >>> if records.reset_for_retry("hoist-bert-3-r0-17"):
            ...     send(app, status.fields["task"], message)
        """
        if not self._reset(keys=[_record(artifact)], args=[time.time()]):
            return False
        # Queued again: watched again, in case this message is lost too.
        self.client.zadd(DEFERRED, {artifact: int(time.time() * 1000)}, nx=True)
        return True

    def recheck_queued(self, artifact: str, due: float) -> None:
        """Look at a queued artifact again at ``due`` (seconds since the epoch)."""
        self._recheck(keys=[_record(artifact), DEFERRED], args=[int(due * 1000), artifact])

    def mark_resent(self, artifact: str, now: float) -> None:
        self.client.hset(_record(artifact), "resent_at", now)


def _new_record(message: Message, task: str, now: float) -> dict[EncodableT, EncodableT]:
    return {
        "state": State.QUEUED.value,
        "message": json.dumps(message.to_json()),
        "task": task,
        "run": message.run_name,
        "rank": message.rank,
        "enqueued_at": now,
        "attempts": 0,
        "deliveries": 0,
    }


def _checkpoint(run_name: str, checkpoint: str) -> str:
    return f"{PREFIX}ckpt:{run_name}:{checkpoint}"


def latest_key(store_id: str, object_name: str) -> str:
    return f"{PREFIX}latest:{store_id}:{object_name}"


def pointer_key(store_id: str, object_name: str) -> str:
    return f"{PREFIX}pointer:{store_id}:{object_name}"


def _record(artifact: str) -> str:
    return f"{PREFIX}artifact:{artifact}"


def _owner(artifact: str) -> str:
    return f"{PREFIX}owner:{artifact}"
