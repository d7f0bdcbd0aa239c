"""What a worker takes from the broker, decided on the raw bytes before anything decodes them.

:class:`hoist.protocol.broker.RedisChannel` calls :func:`admit` on every
message it takes off Redis, before kombu adds it to the unacknowledged set
and before kombu or Celery decode it. Measured against real workers
without this check (``tests/test_broker_boundary.py`` sends each):

- a 338 KiB message with a ``compression`` header (340 MiB of zeros) grew
  two workers by 2.7 GiB at the peak: kombu inflates the body before
  hoist's 64 KiB message check can run;
- a body nested 900 deep, or a header nested as deep (under 8 KiB), made
  the worker's main process exit (``RecursionError … pickling``, when
  Celery hands the task to a pool process), and the message, back in the
  queue, killed the other worker too;
- raw bytes that are no JSON, an envelope without ``properties``, an
  unknown ``body_encoding``, a list as the task name or a string as the
  ``timelimit`` each made the main process exit or its consumer restart
  (``Unrecoverable error: JSONDecodeError`` / ``AttributeError`` /
  ``TypeError: unhashable type`` / ``ValueError: not enough values to
  unpack``). Other headers of the wrong type (``eta``, ``expires``,
  ``retries``, ``argsrepr``, ``root_id``, ``stamps``, …) Celery survives;
  they were tried.

Everything else is left to kombu and Celery as before: a content type other
than JSON is refused by kombu without decoding it (``accept_content``), an
unknown task name by Celery, and a task's own fields by
:mod:`hoist.protocol.messages`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NamedTuple

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from hoist.errors import InvalidMessageError

MAX_ENVELOPE_BYTES = 1024 * 1024
"""Largest raw message (kombu's JSON envelope, its body in base64) a worker takes off the broker.

Measured with a real rank (S3 store, sealed credentials): a batch of 32
uploads named like ``metrics/step-00000017/eval_results_shard_00017.json``
is 50 KiB, and a batch of 32 whose object names are near S3's 1024-byte
limit 117 KiB; a single upload is 2.6 KiB. The bound is 8x the
largest, so no batch a rank sends comes near it, and a worker never parses
more than 1 MiB of JSON for one message. After decoding, each message (and
each member of a batch) is still held to
:data:`hoist.protocol.messages.MAX_MESSAGE_BYTES`.
"""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects allowed in the envelope, and in a JSON body.

hoist's messages nest at most 7 deep (a batch: the body's list, its
keyword arguments, the list of members, a member, its store, the store's
arguments, a fingerprint); Celery's envelope 3. Python's recursion limit
is 1000, and the frames below Celery's pickling of a task already use
about a hundred of them.
"""

SHOWN = 100
"""Most characters of a sender's task name or id that a log line quotes."""

_NAMED = {
    name: re.compile(rb'"%s"\s*:\s*"([^"\\]{1,%d})"' % (name.encode(), SHOWN))
    for name in ("task", "id")
}
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_SYNTAX = bytes(sorted(set(range(256)) - set(b'"[]{}')))


class Admitted(NamedTuple):
    """A message :func:`admit` lets through.

    Parameters:
        envelope: the envelope, parsed as kombu parses it.
        body: the body with its base64 undone, or None when it had none.
    """

    envelope: dict[str, Any]
    body: bytes | None


def too_deep(text: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit``.

    Brackets inside strings do not count. Exact for valid JSON; for text
    that is none, a guess (unbalanced brackets beyond ``limit`` count as
    too deep), and whoever decodes it refuses it anyway. No recursion and
    no parse: a few passes of ``bytes`` methods, never a Python loop over
    characters.

    Example:
        >>> too_deep(b'{"a": [[1], "]]]]"]}', limit=3), too_deep(b"[[[[]]]]", limit=3)
        (False, True)
    """
    # Fewer brackets than the limit cannot nest deeper than it: every
    # envelope and every single message stops here (an upload has about 8).
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    # Outside strings only: without escaped backslashes and escaped quotes,
    # the quotes split the text into outside, inside, outside, ... A string
    # such as "]" between two "[" would otherwise hide a level.
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Splitting only quotes and brackets is cheaper than splitting the text.
    syntax = text.translate(None, _NOT_SYNTAX)
    # The depth is the same whatever kind each bracket is; mixed pairs are no JSON.
    brackets = b"".join(syntax.split(b'"')[::2]).translate(_AS_SQUARE)
    # Each pass removes every innermost pair: one level of nesting.
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if not shorter:
            return False
        if len(shorter) == len(brackets):
            break  # unbalanced: no pair left to remove
        brackets = shorter
    return True


def admit(raw: bytes | str) -> Admitted:
    """``raw`` parsed, if a worker may go on to decode it; else why not.

    Checks, cheapest first: the size (:data:`MAX_ENVELOPE_BYTES`), the
    envelope's nesting (:data:`MAX_JSON_DEPTH`), that it is a JSON object of
    the shape that kombu and Celery's consumer read without guarding
    (properties with a string delivery tag and delivery info, string
    ``task`` and ``id`` headers, a ``timelimit`` of two numbers or nulls,
    a body string in a known encoding), that
    it does not ask for decompression, and the nesting of a JSON body once
    its base64 is undone.

    Cost, on top of kombu's own parse and base64 decoding (which it
    replaces; :meth:`hoist.protocol.broker.RedisChannel.decode_body` reuses the
    decoded body), measured as process time on one core of the shared
    2-core test machine with envelopes a real rank sent: 5 µs for a single
    upload (2.6 KiB), 100 µs for a batch of 32 (50 KiB: 3 µs a member,
    against Celery's 3 ms a task), 200 µs for a batch of 32 with 1 KiB
    names (117 KiB). Mostly the depth scan of a batch's body. A hostile
    message at the size bound costs at most about 50 ms (1 MiB of
    brackets nested 16 deep).

    Raises:
        InvalidMessageError: why it is refused, quoting nothing of it longer
            than :data:`SHOWN` characters.
    """
    size = len(raw)
    if size > MAX_ENVELOPE_BYTES:
        raise InvalidMessageError(
            f"it is {size} bytes, more than the {MAX_ENVELOPE_BYTES} a worker takes"
        )
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if too_deep(data):
        raise InvalidMessageError(f"the envelope is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        envelope = loads(bytes_to_str(data))
    except (ValueError, TypeError) as exc:  # a UnicodeDecodeError is a ValueError
        raise InvalidMessageError(f"the envelope is not JSON ({str(exc)[:SHOWN]})") from None
    if not isinstance(envelope, dict):
        kind = type(envelope).__name__
        raise InvalidMessageError(f"the envelope is a JSON {kind}, not an object")
    headers = _field(envelope, "headers", dict, required=False) or {}
    if "compression" in headers:
        # kombu would inflate it, unbounded, before anything else looks at it.
        raise InvalidMessageError("it has a compression header; hoist never compresses messages")
    for name in ("task", "id"):
        _field(headers, name, str, required=False, where="header")
    limits = _field(headers, "timelimit", list, required=False, where="header")
    if limits is not None and not (len(limits) == 2 and all(map(_seconds, limits))):
        # Celery's consumer unpacks it into two numbers, in the main process.
        raise InvalidMessageError("the header 'timelimit' is not two numbers of seconds or nulls")
    for name in ("content-type", "content-encoding"):
        _field(envelope, name, str, required=False)
    properties = _field(envelope, "properties", dict)
    _field(properties, "delivery_tag", str, where="property")
    delivery_info = _field(properties, "delivery_info", dict, where="property")
    for name in ("exchange", "routing_key"):
        _field(delivery_info, name, str, where="delivery_info field")
    body = _field(envelope, "body", str)
    encoding = _field(properties, "body_encoding", str, required=False, where="property")
    decoded = None
    if encoding == "base64":  # kombu knows this one codec, by this exact name
        try:
            decoded = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessageError("the body is not valid base64") from None
    elif encoding is not None and encoding.lower() != "utf-8":
        raise InvalidMessageError(
            f"the body_encoding {encoding[:SHOWN]!r} is neither base64 nor utf-8"
        )
    if envelope.get("content-type") == "application/json":
        text = decoded if decoded is not None else body.encode("utf-8", "surrogatepass")
        if too_deep(text):
            raise InvalidMessageError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return Admitted(envelope, decoded)


def _seconds(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _field(
    holder: dict[str, Any], name: str, kind: type, required: bool = True, where: str = "field"
) -> Any:
    """``holder[name]``, None if absent and not ``required``; refused if of another type."""
    value = holder.get(name)
    if value is None:
        if required:
            raise InvalidMessageError(f"the envelope lacks its {where} {name!r}")
        return None
    if not isinstance(value, kind):
        raise InvalidMessageError(
            f"the {where} {name!r} is a {type(value).__name__}, not a {kind.__name__}"
        )
    return value


def refusal_line(raw: bytes | str, source: str, reason: str) -> str:
    """The log line for a refused message, naming its task and id where they can be read.

    Example:
        >>> print(refusal_line(b"[]", "hoist.uploads", "the envelope is a JSON list"))
        refused a malformed (unreadable) message (task id (unreadable)) at the broker \
boundary, from hoist.uploads: the envelope is a JSON list; dropped, never decoded
    """
    task, task_id = _names(raw)
    shown_id = repr(task_id)[:SHOWN] if isinstance(task_id, str) else _shown(task_id)
    # Worded like the workers' own refusal of a malformed task, with where it happened.
    return (
        f"refused a malformed {_shown(task)} message (task id {shown_id}) at the broker "
        f"boundary, from {_shown(source)}: {reason}; dropped, never decoded"
    )


def _names(raw: bytes | str) -> tuple[Any, Any]:
    """The ``task`` and ``id`` headers of ``raw``; None for what cannot be read safely."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_ENVELOPE_BYTES or too_deep(data):
        # Too large or deep to parse: the first plain string under each name,
        # by a scan that never builds more than the name.
        found = (_NAMED[name].search(data) for name in ("task", "id"))
        task, task_id = (m[1].decode("utf-8", "replace") if m else None for m in found)
        return task, task_id
    try:
        headers = loads(bytes_to_str(data)).get("headers")
        return headers.get("task"), headers.get("id")
    except Exception:
        # Not JSON, not an object, headers not an object: "(unreadable)" says so.
        return None, None


def _shown(value: Any) -> str:
    """A sender's name as a log line may quote it: short, on one line, nothing unprintable."""
    if isinstance(value, str) and value.isprintable() and len(value) <= SHOWN:
        return value
    return "(unreadable)" if value is None else repr(value)[:SHOWN]
