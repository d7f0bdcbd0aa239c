"""How the SFTP store moves bytes fast through paramiko: a tuned transport and pipelining.

The choices were measured (200 MiB on loopback, 2 cores, OpenSSH 9.2):

- ``TCP_NODELAY``: paramiko sends every 32 KiB read request as a small packet of
  its own; with Nagle's algorithm those waited on delayed ACKs and a read-back
  sometimes fell from about 200 MB/s to 5 MB/s (3 runs in 60). With it, never.
- AES-GCM first: paramiko prefers AES-CTR with a separate HMAC; the AEAD cipher
  wrote about 300 MB/s against 150-200. Measured again on 2026-12-02 (256 MiB
  written, 5 pairs alternated, a loaded machine): ``aes128-gcm@openssh.com``
  took 0.80x the wall time of ``aes128-ctr`` (pairs ranged 0.45-1.22x) and
  0.75x its CPU. paramiko 5.1 does not implement
  ``chacha20-poly1305@openssh.com`` (OpenSSH's first choice), so it cannot be
  negotiated; between OpenSSH's own clients ``sftp -c aes128-gcm@openssh.com``
  took 0.79x the wall time of ``-c chacha20-poly1305@openssh.com`` (0.64-1.83x),
  so GCM is the faster of the two here as well. Only the order changes, so
  a server without GCM still negotiates CTR.
- Requests of 255 KiB where the server advertises them (:func:`request_sizes`).
- Reads are pipelined from the reading thread (:class:`PipelinedReader`), not
  by paramiko's ``prefetch()``, whose helper thread made read-backs range from
  30 to 280 MB/s; one thread gave 220-340 MB/s every time.

Writes are pipelined by paramiko itself (``set_pipelined``); :func:`await_write_acks`
makes sure none of their answers goes unread.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_READ,
    CMD_STATUS,
    SFTPError,
    int64,
)

WRITE_CHUNK = 1024 * 1024
"""Bytes handed to paramiko per write; it splits them into pipelined requests."""
STANDARD_REQUEST = 32 * 1024
"""Bytes per read or write request that every server must serve at once."""
LARGEST_REQUEST = 1024 * 1024
"""The most bytes per request hoist asks for, whatever a server advertises."""
IN_FLIGHT_BYTES = 2 * 1024 * 1024
"""Bytes of read requests kept outstanding. Keeping 8 MiB outstanding (with an 8 MiB
window), or 256 KiB packets with it, cost 1.19x and 1.35x the CPU of a 1 GiB read-back
and were no faster (4-5 pairs alternated, 2026-12-02, a loaded machine): paramiko parses
every packet in Python, and more bytes in flight only made more of them wait in its buffers."""
CHANNEL_WINDOW = 2 * IN_FLIGHT_BYTES
"""The SFTP channel's receive window: twice what is asked for at once, so that with
window adjustments sent only every :data:`WINDOW_ADJUST_BYTES` the server never waits
for one."""
WINDOW_ADJUST_BYTES = IN_FLIGHT_BYTES // 2
"""Bytes received before paramiko tells the server it may send more. paramiko's own
threshold, a tenth of the window, sent one adjustment per 255 KiB read request: half of
a 1 GiB download's 8,233 socket sends, 0.9 s of it in a profile (2026-12-03)."""
CHANNEL_PACKET = 32 * 1024
"""The largest SSH packet we accept on the SFTP channel (paramiko's default; see above)."""
READ_CHUNK = 1024 * 1024
"""Bytes per read from a file paramiko prefetches (the fallback; 1 MiB beat 256 KiB and 4 MiB)."""


def tuned_transport(sock: socket.socket, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport with Nagle off and AES-GCM preferred (see the module docstring).

    Given to ``SSHClient.connect`` as its ``transport_factory``.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = tuple(sorted(options.ciphers, key=lambda cipher: "-gcm@" not in cipher))
    return transport


@dataclass(frozen=True)
class RequestSizes:
    """Bytes per SFTP read and write request on one session.

    Example:
        >>> RequestSizes.standard()
        RequestSizes(read=32768, write=32768)
    """

    read: int
    write: int

    @classmethod
    def standard(cls) -> RequestSizes:
        return cls(STANDARD_REQUEST, STANDARD_REQUEST)


def request_sizes(sftp: paramiko.SFTPClient) -> RequestSizes:
    """The request sizes the server allows (``limits@openssh.com``), else the standard 32 KiB.

    OpenSSH (8.6 and later) serves 255 KiB reads and writes. Asking for them
    halves the time a write takes here: a 32 KiB write with its header is
    larger than one 32 KiB SSH packet, so paramiko sends it as a full packet
    and a tiny one, and every request costs Python time on both ends (256 MiB:
    2.1-2.5 s in 32 KiB writes, 1.1-1.4 s in 255 KiB ones).
    """
    try:
        kind, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
    except (OSError, SFTPError):  # "operation unsupported": not an OpenSSH server
        return RequestSizes.standard()
    if kind != CMD_EXTENDED_REPLY:
        return RequestSizes.standard()
    packet, read, write = msg.get_int64(), msg.get_int64(), msg.get_int64()

    def usable(advertised: int) -> int:
        # 0 means "no limit"; keep 1 KiB of a packet's limit for the request's header
        fits = [LARGEST_REQUEST, advertised or LARGEST_REQUEST]
        if packet:
            fits.append(packet - 1024)
        return max(STANDARD_REQUEST, min(fits))

    return RequestSizes(usable(read), usable(write))


def open_sftp(transport: paramiko.Transport) -> paramiko.SFTPClient:
    """An SFTP session with the window and packet size chosen above."""
    sftp = paramiko.SFTPClient.from_transport(
        transport, window_size=CHANNEL_WINDOW, max_packet_size=CHANNEL_PACKET
    )
    if sftp is None:  # paramiko's annotation allows it; from_transport raises instead
        raise paramiko.SSHException("the server refused to open an SFTP session")
    # A public attribute of paramiko's Channel since 1.x, set from the window at open.
    sftp.get_channel().in_window_threshold = WINDOW_ADJUST_BYTES
    return sftp


class PipelinedReader:
    """Reads a remote file front to back with IN_FLIGHT_BYTES of requests outstanding.

    Requests are sent and answers read by the calling thread. paramiko's own
    ``prefetch()`` sends its requests from a helper thread, which contends with
    the reading thread for the transport's send lock; the reader's window
    adjustments then wait and the server stalls. This uses paramiko's internal
    request API (unchanged since paramiko 1.x); without it, ``prefetch()`` is used.

    Parameters:
        remote: a file opened for reading on an SFTP session.
        request: bytes asked for per read request (see :func:`request_sizes`).
    """

    _INTERNALS = ("_async_request", "_read_response", "_convert_status")

    @classmethod
    def available(cls) -> bool:
        """Whether this paramiko still has the internal request API the reader uses."""
        return all(hasattr(paramiko.SFTPClient, name) for name in cls._INTERNALS)

    def __init__(self, remote: paramiko.SFTPFile, request: int = STANDARD_REQUEST) -> None:
        self._sftp = remote.sftp
        self._handle = remote.handle
        self._request_bytes = request
        self._depth = max(1, IN_FLIGHT_BYTES // request)
        self._early: dict[int, tuple[int, Message]] = {}

    def chunks(self, size: int) -> Iterator[bytes]:
        """Yield the file's bytes in order, up to ``size`` or the end of the file."""
        in_flight: deque[tuple[int, int, int]] = deque()  # request id, offset, length
        offset = 0
        while offset < size or in_flight:
            while offset < size and len(in_flight) < self._depth:
                length = min(self._request_bytes, size - offset)
                in_flight.append((self._request(offset, length), offset, length))
                offset += length
            request, at, length = in_flight.popleft()
            data = self._answer(request)
            # A server may answer with fewer bytes than asked (the file shrank, or
            # its own limit is lower): fetch the rest before anything after it.
            while data:
                yield data
                at, length = at + len(data), length - len(data)
                data = self._answer(self._request(at, length)) if length else b""
            if length:
                return  # the end of the file came early: it shrank while being read

    def _request(self, offset: int, length: int) -> int:
        return int(self._sftp._async_request(self, CMD_READ, self._handle, int64(offset), length))

    def _answer(self, request: int) -> bytes:
        """The data answering ``request``; ``b""`` at the end of the file."""
        try:
            if request in self._early:
                kind, msg = self._early.pop(request)
                if kind == CMD_STATUS:
                    self._sftp._convert_status(msg)  # raises the error it carries
            else:
                kind, msg = self._sftp._read_response(request)
        except EOFError:  # paramiko's form of the SFTP status "end of file"
            return b""
        if kind != CMD_DATA:
            raise SFTPError(f"expected data from the server, got message type {kind}")
        return bytes(msg.get_string())

    def _async_response(self, kind: int, msg: Message, request: int) -> None:
        """Called by paramiko with an answer that arrives while another one is awaited."""
        self._early[request] = (kind, msg)


def await_write_acks(remote: paramiko.SFTPFile) -> None:
    """Read the server's answer to every pipelined write still outstanding, raising the first error.

    paramiko reads these answers only while more than 100 are outstanding, and
    close() discards the rest unread, so a late write refused for a full disk
    would pass silently. This drains them the way paramiko's own write() does;
    should its internals change, the read-back verification still catches the loss.
    """
    pending = getattr(remote, "_reqs", None)
    while pending:
        remote.sftp._read_response(pending.popleft())
