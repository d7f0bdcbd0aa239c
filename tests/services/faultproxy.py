"""A fault-injecting HTTP/1.1 proxy between hoist's workers and a real S3 server.

It listens on 127.0.0.1, forwards every request to the real server over a
keep-alive connection of its own (one per client connection) and, on a seeded
random share of the requests, does one of these instead of a clean relay:

==================  ==========================================================
``error500``        answers ``500 InternalError`` with an S3 XML error body
``error503``        answers ``503 ServiceUnavailable``
``slowdown``        answers ``503 SlowDown`` (S3's throttling answer)
``reset_request``   reads part of the request, then resets the connection (RST)
``reset_response``  forwards the request, sends part of the answer, then resets
``stall``           forwards the request (the server acts on it), then holds
                    the answer longer than the client's read timeout and closes
``corrupt_upload``  flips a byte of a PutObject/UploadPart body on its way to
                    the server, so the server stores wrong bytes
``corrupt_read``    flips a byte of a GetObject answer's body (a read-back)
==================  ==========================================================

Each kind is injected once on the first request it applies to, so a short run
exercises all of them; after that a seeded ``rate`` of requests get a fault.
A faulted request gets one of the kinds that apply to it, uniformly: the
corrupting kinds apply only to the requests they can change (an upload body,
an object read).
The proxy counts what it did (:attr:`FaultProxy.stats`): requests, faults by
kind, which objects the server stored with corrupted bytes, and every write.

Only what the tests need of HTTP is handled: ``Content-Length`` and chunked
bodies, ``Expect: 100-continue`` (answered by the proxy itself), HEAD and
bodiless statuses, keep-alive and ``Connection: close``.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = (
    "error500",
    "error503",
    "slowdown",
    "reset_request",
    "reset_response",
    "stall",
    "corrupt_upload",
    "corrupt_read",
)
_ERRORS = {
    "error500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error.",
    ),
    "error503": (503, "Service Unavailable", "ServiceUnavailable", "Please reduce your rate."),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


class _Closed(Exception):
    """The peer closed the connection between requests."""


@dataclass
class _Message:
    """One HTTP request or response as read off a socket."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(k, v) for k, v in self.headers if k.lower() not in drop]

    def head_bytes(self, headers: list[tuple[str, str]] | None = None) -> bytes:
        lines = [self.start] + [f"{k}: {v}" for k, v in (headers or self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader:
    """Buffered reads of HTTP framing from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise _Closed()
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def until_close(self) -> bytes:
        try:
            while True:
                self._fill()
        except _Closed:
            data, self.buffer = self.buffer, b""
            return data

    def head(self) -> _Message:
        start = self.line().decode("latin-1")
        headers = []
        while line := self.line():
            key, _, value = line.decode("latin-1").partition(":")
            headers.append((key.strip(), value.strip()))
        return _Message(start, headers)

    def chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():  # trailers
                    pass
                return body
            body += self.exactly(size)
            self.exactly(2)


@dataclass
class FaultStats:
    """What the proxy saw and did.

    Parameters:
        requests: requests received from clients.
        faults: faults injected, by kind.
        corrupted_keys: ``bucket/key`` of each upload request whose body was corrupted.
        corrupted_objects: ``bucket/key`` of each whole object the server stored
            with corrupted bytes (a PutObject, or a completed multipart upload
            with a corrupted part, that the server answered with success).
        writes: ``bucket/key`` of each whole object the server stored (PutObject
            or CompleteMultipartUpload answered with success), whether or not
            the client saw that answer.
        events: one line per request (time, method, target, fault, and the
            server's status, or "(proxy)" for a fault that never reached it), to
            explain a failing test.
        most_connections: the most client connections open at once (how
            parallel a transfer was).
        uploads: each upload request's time and whether it was throttled
            (``throttle_above``), in the order they came.
    """

    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    corrupted_keys: Counter[str] = field(default_factory=Counter)
    corrupted_objects: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    most_connections: int = 0
    uploads: list[tuple[float, bool]] = field(default_factory=list)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {self.faults[k]}" for k in FAULT_KINDS if self.faults[k])
        total = sum(self.faults.values())
        return (
            f"{self.requests} requests, {total} faults ({kinds or 'none'}); "
            f"{sum(self.corrupted_objects.values())} writes of corrupted bytes stored by the server"
        )


class FaultProxy:
    """A proxy on 127.0.0.1 that forwards to ``upstream`` and injects faults.

    Parameters:
        upstream: the real server's base URL (``http://127.0.0.1:PORT``).
        rate: the share of requests that get a fault (0 for a clean relay).
        seed: seeds the random choices of which request and which fault.
        stall_seconds: how long a stalled answer is held before the connection
            is closed; make it longer than the client's read timeout.
        kinds: the fault kinds to draw from (default: all of :data:`FAULT_KINDS`).
        script: faults for chosen requests, each used once, before any random
            one: ``(method, text in the target, kind)``; the first request
            that matches gets the fault. For tests of one exact sequence.
        opaque_etags: answer every PutObject/UploadPart with an ETag that is no
            MD5, as servers that encrypt objects do.
        complete_etag: put this ETag in every CompleteMultipartUpload answer.
        throttle_above: answer ``503 SlowDown`` to an upload request that comes
            while this many are already in flight, as a server shedding load
            does (a request rate is a concurrency times a latency).

    Example:
        >>> with FaultProxy(moto.endpoint_url, rate=0.2, seed=5, stall_seconds=3) as proxy:
        ...     upload_through(proxy.url)
        >>> print(proxy.stats.summary())
    """

    def __init__(
        self,
        upstream: str,
        rate: float = 0.2,
        seed: int = 0,
        stall_seconds: float = 3.0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        script: list[tuple[str, str, str]] | None = None,
        opaque_etags: bool = False,
        complete_etag: str | None = None,
        throttle_above: int | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.stall_seconds = stall_seconds
        self.kinds = kinds
        # Each kind is injected on the first request it applies to, then at random:
        # every kind is exercised even in a short run.
        self._unused = set(kinds) if rate > 0 else set()
        self._script = list(script or [])
        self.opaque_etags = opaque_etags
        self.complete_etag = complete_etag
        self.throttle_above = throttle_above
        self._uploading = 0
        self.stats = FaultStats()
        self._random = random.Random(seed)
        self._corrupted_uploads: set[str] = set()  # multipart upload ids with a corrupted part
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")

    # ----- control ----------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        # close() alone does not wake a thread blocked in accept(); shutdown() does
        # (it waited out the 5 s join below on every proxy of the suite).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- serving ----------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)
            self.stats.most_connections = max(self.stats.most_connections, len(self._sockets))

    def _serve(self, client: socket.socket) -> None:
        self._track(client, True)
        upstream: socket.socket | None = None
        try:
            reader = _Reader(client)
            up_reader: _Reader | None = None
            while not self._stopping.is_set():
                try:
                    request = reader.head()
                except _Closed:
                    return
                kind = self._draw(request)
                if kind == "reset_request":
                    # Take a little of the body, as a server that dies mid-request would.
                    length = int(request.header("Content-Length") or 0)
                    if length and request.header("Expect") is None:
                        reader.exactly(min(length, 1024))
                    _reset(client)
                    return
                if "100-continue" in (request.header("Expect") or "").lower():
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.body = self._read_body(reader, request)
                # Counted only if it goes on to the server (a drawn error answers here).
                counted = (
                    self.throttle_above is not None and kind not in _ERRORS and _is_upload(request)
                )
                if counted and not self._admit_upload():
                    kind = "slowdown"
                if kind in _ERRORS:
                    self._answer_error(client, request, kind)
                    if (request.header("Connection") or "").lower() == "close":
                        return
                    continue
                if kind == "corrupt_upload":
                    request.body = self._flip(request.body)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(upstream, True)
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                headers = request.without("Expect", "Transfer-Encoding", "Content-Length")
                if request.body or request.header("Content-Length") is not None:
                    headers.append(("Content-Length", str(len(request.body))))
                upstream.sendall(request.head_bytes(headers) + request.body)
                try:
                    response = up_reader.head()
                    response.body = self._response_body(up_reader, request, response)
                finally:
                    if counted:
                        with self._lock:
                            self._uploading -= 1
                self._account(request, kind, int(response.start.split()[1]))
                if kind == "stall":
                    # The server has acted on the request; its answer never arrives.
                    self._stopping.wait(self.stall_seconds)
                    return
                if kind == "corrupt_read":
                    response.body = self._flip(response.body)
                if self.complete_etag is not None and _is_complete(request):
                    response.body = re.sub(
                        rb"<ETag>.*?</ETag>",
                        f"<ETag>{self.complete_etag}</ETag>".encode(),
                        response.body,
                    )
                headers = response.without("Transfer-Encoding", "Content-Length")
                if self.opaque_etags and _is_upload(request) and response.header("ETag"):
                    headers = [(k, v) for k, v in headers if k.lower() != "etag"]
                    headers.append(("ETag", '"opaque-etag-of-an-encrypted-object"'))
                status = int(response.start.split()[1])
                if request.start.split()[0] != "HEAD" and _has_body(status):
                    headers.append(("Content-Length", str(len(response.body))))
                elif response.header("Content-Length") is not None:
                    headers.append(("Content-Length", response.header("Content-Length") or "0"))
                head = response.head_bytes(headers)
                if kind == "reset_response":
                    client.sendall(
                        (head + response.body)[: max(1, (len(head) + len(response.body)) // 2)]
                    )
                    _reset(client)
                    return
                client.sendall(head + response.body)
                closing = (response.header("Connection") or "").lower() == "close"
                if closing or (request.header("Connection") or "").lower() == "close":
                    return
        except (OSError, _Closed, ValueError, IndexError):
            return
        finally:
            self._track(client, False)
            _close(client)
            if upstream is not None:
                self._track(upstream, False)
                _close(upstream)

    def _admit_upload(self) -> bool:
        """Count an upload in flight, or say it must be throttled (``throttle_above``)."""
        with self._lock:
            throttled = self._uploading >= (self.throttle_above or 0)
            self.stats.uploads.append((time.monotonic(), throttled))
            if throttled:
                self.stats.faults["slowdown"] += 1
            else:
                self._uploading += 1
            return not throttled

    def _flip(self, body: bytes) -> bytes:
        """Flip one byte at a random place: two flips (upload, then read-back) must not cancel."""
        if not body:
            return body
        with self._lock:
            position = self._random.randrange(len(body))
            mask = self._random.randrange(1, 256)
        return body[:position] + bytes([body[position] ^ mask]) + body[position + 1 :]

    def _account(self, request: _Message, kind: str | None, status: int) -> None:
        """Note corrupted uploads and whole-object writes the server accepted."""
        method, target = request.start.split()[:2]
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        key = _object_key(request)
        upload_id = (query.get("uploadId") or [""])[0]
        with self._lock:
            self.stats.events.append(
                f"{time.time():.3f} {method} {target} {kind or 'clean'} -> {status}"
            )
            if kind == "corrupt_upload":
                self.stats.corrupted_keys[key] += 1
                if upload_id:
                    self._corrupted_uploads.add(upload_id)
            if status >= 300:
                return
            if method == "PUT" and _is_upload(request) and not upload_id:
                self.stats.writes[key] += 1
                if kind == "corrupt_upload":
                    self.stats.corrupted_objects[key] += 1
            elif method == "POST" and upload_id:  # CompleteMultipartUpload
                self.stats.writes[key] += 1
                if upload_id in self._corrupted_uploads:
                    self.stats.corrupted_objects[key] += 1

    def _draw(self, request: _Message) -> str | None:
        with self._lock:
            self.stats.requests += 1
            method, target = request.start.split()[:2]
            for rule in self._script:
                if rule[0] == method and rule[1] in target and _applies(rule[2], request):
                    self._script.remove(rule)
                    self.stats.faults[rule[2]] += 1
                    return rule[2]
            if self.rate <= 0:
                return None
            applicable = [k for k in self.kinds if _applies(k, request)]
            kind = next((k for k in self._unused if k in applicable), None)
            if kind is None:
                if not applicable or self._random.random() >= self.rate:
                    return None
                kind = self._random.choice(applicable)
            self._unused.discard(kind)
            self.stats.faults[kind] += 1
            if kind in _ERRORS or kind == "reset_request":  # never reaches the server
                self.stats.events.append(f"{time.time():.3f} {method} {target} {kind} (proxy)")
            return kind

    def _read_body(self, reader: _Reader, message: _Message) -> bytes:
        if (message.header("Transfer-Encoding") or "").lower() == "chunked":
            return reader.chunked()
        return reader.exactly(int(message.header("Content-Length") or 0))

    def _response_body(self, reader: _Reader, request: _Message, response: _Message) -> bytes:
        status = int(response.start.split()[1])
        if request.start.split()[0] == "HEAD" or not _has_body(status):
            return b""
        if (response.header("Transfer-Encoding") or "").lower() == "chunked":
            return reader.chunked()
        length = response.header("Content-Length")
        if length is not None:
            return reader.exactly(int(length))
        return reader.until_close()

    def _answer_error(self, client: socket.socket, request: _Message, kind: str) -> None:
        status, reason, code, text = _ERRORS[kind]
        resource = request.start.split()[1]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{text}</Message>"
            f"<Resource>{_xml_escape(resource)}</Resource>"
            f"<RequestId>fault-{self.stats.requests}</RequestId></Error>"
        ).encode()
        is_head = request.start.split()[0] == "HEAD"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: fault\r\n\r\n"
        ).encode()
        client.sendall(head + (b"" if is_head else body))


def _applies(kind: str, request: _Message) -> bool:
    if kind == "corrupt_upload":
        return _is_upload(request)
    if kind == "corrupt_read":
        return _is_object_read(request)
    return True


def _has_body(status: int) -> bool:
    return not (100 <= status < 200 or status in (204, 304))


def _is_upload(request: _Message) -> bool:
    """A PutObject (no query) or an UploadPart (``partNumber``), with a body; not a copy."""
    method, target = request.start.split()[:2]
    if method != "PUT" or int(request.header("Content-Length") or 0) == 0:
        return False
    if request.header("x-amz-copy-source") is not None:
        return False
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return "partNumber" in query or not query


def _is_complete(request: _Message) -> bool:
    method, target = request.start.split()[:2]
    return method == "POST" and "uploadId" in parse_qs(urlsplit(target).query)


def _is_object_read(request: _Message) -> bool:
    method, target = request.start.split()[:2]
    path = urlsplit(target).path.strip("/")
    return method == "GET" and "/" in path and not urlsplit(target).query


def _object_key(request: _Message) -> str:
    return urlsplit(request.start.split()[1]).path.strip("/")


def _reset(sock: socket.socket) -> None:
    """Close with an RST, not a FIN: the peer sees 'connection reset by peer'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
