"""A throttling HTTP proxy on loopback, to make uploads slow on purpose.

:class:`ThrottlingProxy` listens on 127.0.0.1 and forwards every connection to
an upstream server (an S3 server of the test session). What clients send is
paced to ``rate`` bytes per second, shared by all connections, as a slow link
to the store would be; what the server answers passes at full speed, so
read-back verification stays quick. A test may also hold back requests that
match a predicate until it releases them, which is how a single request is
made to outlast a lease.

The proxy follows HTTP/1.1 framing in the client-to-server direction
(``Content-Length`` and chunked bodies) and records every request it forwards
(:class:`ForwardedRequest`: method, target, when it started, when its body
was through). Tests read those records to prove what reached the store: how
many multipart sessions an object had and whether two ever overlapped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class ForwardedRequest:
    """One HTTP request the proxy forwarded.

    Parameters:
        method: ``GET``, ``PUT``, ``POST``...
        target: the request target (path and query) as sent.
        started: ``time.monotonic()`` when its headers arrived.
        finished: when its body was fully forwarded (None while in flight).
        body_bytes: the body's size.
    """

    method: str
    target: str
    started: float
    finished: float | None = None
    body_bytes: int = 0

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.target).path)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass
class _Pacer:
    """A shared schedule of the link: each chunk takes ``len / rate`` seconds of it."""

    rate: float | None
    _next: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, nbytes: int) -> None:
        if not self.rate:
            return
        with self._lock:
            start = max(time.monotonic(), self._next)
            self._next = start + nbytes / self.rate
            until = self._next
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class ThrottlingProxy:
    """Forwards TCP connections to ``upstream_port``, pacing what clients send.

    Parameters:
        upstream_port: the server's port on 127.0.0.1.
        rate: bytes per second for all client-to-server traffic together;
            None for full speed.

    Example:
        >>> proxy = ThrottlingProxy(s3.port, rate=4_000_000)
        >>> proxy.start()
        >>> store = S3ObjectStore(bucket, endpoint_url=proxy.endpoint_url, ...)
    """

    def __init__(self, upstream_port: int, rate: float | None = None) -> None:
        self.upstream_port = upstream_port
        self.pacer = _Pacer(rate)
        self.requests: list[ForwardedRequest] = []
        self._held: Callable[[ForwardedRequest], bool] | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._stopped = False

    # ----- control ----------------------------------------------------------

    def start(self) -> None:
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True, name="throttle-accept").start()

    def stop(self) -> None:
        self._stopped = True
        self._release.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def set_rate(self, rate: float | None) -> None:
        self.pacer.rate = rate

    def hold(self, predicate: Callable[[ForwardedRequest], bool]) -> None:
        """Keep requests matching ``predicate`` at the proxy until :meth:`release`."""
        self._release.clear()
        self._held = predicate

    def release(self) -> None:
        self._held = None
        self._release.set()

    def seen(self, predicate: Callable[[ForwardedRequest], bool]) -> list[ForwardedRequest]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]

    # ----- forwarding -------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client), daemon=True).start()

    def _answers(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(CHUNK):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while True:
                head = reader.until(b"\r\n\r\n")
                if head is None:
                    return
                request = self._record(head)
                held = self._held
                if held is not None and held(request):
                    self._release.wait()
                upstream.sendall(head)
                request.body_bytes = self._body(head, reader, upstream)
                request.finished = time.monotonic()
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _record(self, head: bytes) -> ForwardedRequest:
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        request = ForwardedRequest(method, target, time.monotonic())
        with self._lock:
            self.requests.append(request)
        return request

    def _body(self, head: bytes, reader: _Reader, upstream: socket.socket) -> int:
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked(reader, upstream)
        return self._forward(reader, upstream, int(headers.get("content-length", "0")))

    def _forward(self, reader: _Reader, upstream: socket.socket, length: int) -> int:
        remaining = length
        while remaining:
            data = reader.some(min(remaining, CHUNK))
            if not data:
                raise OSError("client closed mid-body")
            self.pacer.take(len(data))
            upstream.sendall(data)
            remaining -= len(data)
        return length

    def _chunked(self, reader: _Reader, upstream: socket.socket) -> int:
        total = 0
        while True:
            line = reader.until(b"\r\n")
            if line is None:
                raise OSError("client closed mid-body")
            upstream.sendall(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := reader.until(b"\r\n")) not in (None, b"\r\n"):
                    upstream.sendall(trailer)
                upstream.sendall(b"\r\n")
                return total
            total += self._forward(reader, upstream, size + 2) - 2


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or some bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def until(self, delimiter: bytes) -> bytes | None:
        while delimiter not in self.buffer:
            data = self.sock.recv(CHUNK)
            if not data:
                return None
            self.buffer += data
        end = self.buffer.index(delimiter) + len(delimiter)
        found, self.buffer = self.buffer[:end], self.buffer[end:]
        return found

    def some(self, most: int) -> bytes:
        if not self.buffer:
            return self.sock.recv(most)
        found, self.buffer = self.buffer[:most], self.buffer[most:]
        return found


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
