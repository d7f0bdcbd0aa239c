"""Verifying an SFTP upload by a hash the server computes, over an SSH exec channel.

SFTP itself reports no checksum, and OpenSSH offers no ``check-file``
extension, so where the account may run commands the store asks the server
to hash the file it holds: ``sha256sum`` where it works, else ``md5sum`` (as
rclone's SFTP backend does). hoist computes the same hash while sending, so a
1 GiB upload costs one hash on each side instead of reading the whole file
back through SSH.

Whether the server can is found once per store by a probe: each command is
run on empty input and must print the hash of no bytes and exit 0. An
SFTP-only account (``ForceCommand internal-sftp``, a chroot without
binaries, a restricted shell) fails the probe, and the store reads back.

The remote path reaches the shell quoted by :func:`quote_path`: the command
line is the hash tool, ``./`` or ``/``, and one single-quoted word, so no
object name runs anything. No secret is ever on the command line: it holds
only the tool's name and the path.
"""

from __future__ import annotations

import hashlib
import queue
import re
import shlex
import threading
from collections import deque
from dataclasses import dataclass

import paramiko

OUTPUT_LIMIT = 64 * 1024
"""Bytes of a command's output kept: one line is expected, a hostile server may send more."""


@dataclass(frozen=True)
class HashCommand:
    """A hash tool on the server and the hashlib function that computes the same digest.

    Parameters:
        name: the command line before the path, such as ``"md5sum"``; run
            alone it hashes its standard input.
        algorithm: its hashlib name, such as ``"md5"``.
    """

    name: str
    algorithm: str

    def new(self) -> hashlib._Hash:
        """A fresh local hasher for this algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def empty_digest(self) -> str:
        """The digest of no bytes, which a working tool prints for empty input."""
        return self.new().hexdigest()

    def parse(self, output: bytes) -> str | None:
        """The digest on the first line of the tool's output, or None if it holds none.

        GNU coreutils starts a line with a backslash when the file name needed
        escaping (a newline or a backslash in it); the digest follows.

        Example:
            >>> md5sum = HashCommand("md5sum", "md5")
            >>> md5sum.parse(b"\\\\d41d8cd98f00b204e9800998ecf8427e  a\\\\nb\\n")
            'd41d8cd98f00b204e9800998ecf8427e'
        """
        width = self.new().digest_size * 2
        found = re.match(rb"\\?([0-9a-f]{%d})(?:\s|$)" % width, output)
        return found.group(1).decode("ascii") if found else None


COMMANDS = (
    HashCommand("openssl dgst -sha256 -r", "sha256"),
    HashCommand("md5sum", "md5"),
    HashCommand("sha256sum", "sha256"),
)
"""Tried in this order, fastest first as measured on the test machine (256 MiB,
page cache, 2 cores under load): ``openssl dgst -sha256`` 0.25 s (SHA-NI),
``md5sum`` 0.46 s, coreutils ``sha256sum`` 1.12 s (no SHA-NI: it would
add 4 s to a 1 GiB upload). hashlib computes SHA-256 at twice MD5's rate,
so OpenSSL's SHA-256 is also the cheaper one on our side."""


def quote_path(path: str) -> str:
    """``path`` as one shell word that the hash tool cannot take for an option.

    A relative path gets ``./`` so that a name starting with ``-`` is a file,
    not a flag; the whole is single-quoted (``shlex.quote``), which a POSIX
    shell takes literally, ``$``, backquotes, ``;`` and newlines included.

    Example:
        >>> quote_path("-rf; rm x")
        "'./-rf; rm x'"
        >>> print(quote_path("/srv/it's"))
        '/srv/it'"'"'s'
    """
    if not path.startswith("/"):
        path = "./" + path
    return shlex.quote(path)


@dataclass(frozen=True)
class CommandOutput:
    """What a command run on the server printed on stdout, and how it exited."""

    stdout: bytes
    exit_status: int


def start_command(
    transport: paramiko.Transport, command: str, timeout: float
) -> paramiko.Channel | None:
    """Start ``command`` on the server with empty input; None if the server would not run it.

    The command runs while the caller goes on (sending the rest of a file, say):
    :func:`collect` waits for its output. A failed connection raises.
    """
    try:
        channel = transport.open_session(timeout=timeout)
    except paramiko.ChannelException:  # "administratively prohibited"
        return None
    channel.settimeout(timeout)
    try:
        channel.exec_command(command)
    except paramiko.SSHException:
        channel.close()
        if not transport.is_active():
            raise
        return None  # the server refused the exec request
    channel.shutdown_write()
    return channel


def collect(channel: paramiko.Channel | None, timeout: float) -> CommandOutput | None:
    """The output and exit status of a command :func:`start_command` started, then close it.

    None for a command that never started or ended without an exit status.
    """
    if channel is None:
        return None
    with channel:
        output = bytearray()
        while data := channel.recv(32 * 1024):
            if len(output) < OUTPUT_LIMIT:
                output += data[: OUTPUT_LIMIT - len(output)]
        # the exit status comes with or just after the end of the output
        if not channel.status_event.wait(timeout):
            raise TimeoutError(f"no exit status from the server's hash tool after {timeout} s")
        status = channel.exit_status
    return None if status < 0 else CommandOutput(bytes(output), status)


def run_command(
    transport: paramiko.Transport, command: str, timeout: float
) -> CommandOutput | None:
    """Run ``command`` on the server with empty input and wait for it; None if it would not run."""
    return collect(start_command(transport, command, timeout), timeout)


_BLOCK = 1024 * 1024
"""dd's block size: pieces start and end on multiples of it."""
PIECE_BYTES = 128 * _BLOCK
"""Bytes the server hashes at once, while hoist sends the next ones (see :class:`PiecewiseHash`)."""
MAX_RUNNING = 4
"""Hash commands running at once; OpenSSH allows 10 sessions a connection, SFTP's among them."""


def range_command(command: HashCommand, path: str, piece: int, last: bool) -> str:
    """The shell command that hashes piece ``piece`` of ``path`` (the last one: to its end).

    ``test -f`` first: a missing file must fail, not hash dd's empty output.

    Example:
        >>> range_command(COMMANDS[1], "/srv/a b", 2, last=False)
        "test -f '/srv/a b' && dd if='/srv/a b' bs=1048576 skip=256 count=128 2>/dev/null | md5sum"
    """
    blocks = PIECE_BYTES // _BLOCK
    quoted = quote_path(path)
    count = "" if last else f" count={blocks}"
    return (
        f"test -f {quoted} && dd if={quoted} bs={_BLOCK} skip={piece * blocks}{count} "
        f"2>/dev/null | {command.name}"
    )


def probe(transport: paramiko.Transport, timeout: float) -> HashCommand | None:
    """The first hash tool in :data:`COMMANDS` the server runs correctly, or None.

    Each is run the way an upload runs it, behind ``dd``, on no bytes.
    """
    for command in COMMANDS:
        done = run_command(transport, f"dd if=/dev/null 2>/dev/null | {command.name}", timeout)
        if done is None or done.exit_status != 0:
            continue
        if command.parse(done.stdout) == command.empty_digest:
            return command
    return None


def digest_of(command: HashCommand, done: CommandOutput | None) -> str | None:
    """The digest a finished hash command printed, or None if it failed."""
    if done is None or done.exit_status != 0:
        return None
    return command.parse(done.stdout)


def server_digest(
    transport: paramiko.Transport, command: HashCommand, path: str, timeout: float
) -> str | None:
    """The server's digest of the whole file at ``path``, or None if the tool failed on it.

    A failure (the file not where SFTP put it, as under a chroot the shell does
    not share) says nothing about the bytes: the caller reads back instead.
    """
    return digest_of(
        command, run_command(transport, range_command(command, path, 0, True), timeout)
    )


_CUT = b""
"""Queued to :class:`BackgroundDigest` where a piece ends (a real chunk is never empty)."""


class BackgroundDigest:
    """hashlib digests of consecutive pieces, updated by a thread of its own.

    hashlib releases the GIL while it hashes a large buffer, so the sending
    thread's Python work and the hash run on two cores at once: SHA-256 costs
    0.7-1.4 s a GiB here, which in line would add to every upload's time.
    Chunks are queued as they are read (at most ``depth`` of them wait, so
    memory stays bounded); :meth:`hexdigests` waits for the last one.

    Parameters:
        command: the hash tool whose algorithm to compute.
        depth: chunks that may wait to be hashed before :meth:`update` blocks.
    """

    def __init__(self, command: HashCommand, depth: int = 8) -> None:
        self._command = command
        self._done: list[str] = []
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="hoist-sftp-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        digest = self._command.new()
        while (chunk := self._queue.get()) is not None:
            if not chunk:  # _CUT
                self._done.append(digest.hexdigest())
                digest = self._command.new()
            else:
                digest.update(chunk)
        self._done.append(digest.hexdigest())

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` to be hashed after those before it."""
        if chunk:
            self._queue.put(chunk)

    def cut(self) -> None:
        """End the current piece: what is queued next starts a new digest."""
        self._queue.put(_CUT)

    def hexdigests(self) -> list[str]:
        """The digest of each piece, once the thread has hashed every chunk queued."""
        self.close()
        return self._done

    def close(self) -> None:
        """Stop the thread once it has hashed what is queued (an abandoned upload calls it too)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class PiecewiseHash:
    """The server hashes an upload piece by piece while hoist sends the rest.

    Hashing a whole 1 GiB file after the last write added about a second to
    every upload; hashed in :data:`PIECE_BYTES` pieces, each as soon as its
    writes are acknowledged, only the last piece is left to wait for. The
    last piece is hashed to the end of the file, so bytes beyond what was
    sent would not match either. hoist hashes the same pieces locally in
    :class:`BackgroundDigest`, from the very chunks it sends.

    Parameters:
        transport: the SSH connection the upload goes over.
        command: the hash tool the server runs (see :func:`probe`).
        path: the remote path being written.
        timeout: seconds to wait for the server's answers.
    """

    def __init__(
        self, transport: paramiko.Transport, command: HashCommand, path: str, timeout: float
    ) -> None:
        self._transport = transport
        self.command = command
        self._path = path
        self._timeout = timeout
        self._local = BackgroundDigest(command)
        self._filled = 0  # bytes of the current piece fed so far
        self._running: deque[paramiko.Channel | None] = deque()
        self._answers: list[str | None] = []

    def feed(self, chunk: bytes) -> bool:
        """Hash a chunk just written; True when it completed a piece.

        The caller then waits for its writes to be acknowledged and calls
        :meth:`piece_written`. A chunk may cross a piece's end, never span one.
        """
        room = PIECE_BYTES - self._filled
        if len(chunk) < room:
            self._local.update(chunk)
            self._filled += len(chunk)
            return False
        self._local.update(chunk[:room])
        self._local.cut()
        self._local.update(chunk[room:])
        self._filled = len(chunk) - room
        return True

    def piece_written(self) -> None:
        """Have the server hash the piece just completed, which it now holds."""
        self._start(last=False)
        if len(self._running) >= MAX_RUNNING:
            self._answers.append(self._finish_oldest())

    def pairs(self) -> list[tuple[str, str]] | None:
        """Hash the last piece; then each piece's (local, server) digests, or None if the
        server's tool failed on any (the caller reads back instead)."""
        self._start(last=True)
        while self._running:
            self._answers.append(self._finish_oldest())
        local = self._local.hexdigests()
        if any(answer is None for answer in self._answers) or len(local) != len(self._answers):
            return None
        return [(ours, str(theirs)) for ours, theirs in zip(local, self._answers, strict=True)]

    def close(self) -> None:
        """Stop the local thread and close the commands still running (after a failure too)."""
        self._local.close()
        while self._running:
            channel = self._running.popleft()
            if channel is not None:
                channel.close()

    def _start(self, last: bool) -> None:
        piece = len(self._answers) + len(self._running)
        command = range_command(self.command, self._path, piece, last)
        self._running.append(start_command(self._transport, command, self._timeout))

    def _finish_oldest(self) -> str | None:
        return digest_of(self.command, collect(self._running.popleft(), self._timeout))
