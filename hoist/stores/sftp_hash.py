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


def run_command(
    transport: paramiko.Transport, command: str, timeout: float
) -> CommandOutput | None:
    """Run ``command`` on the server with empty input; None if the server would not run it.

    A server that refuses exec channels, or closes one without an exit
    status, gives None; a connection that fails raises as any request would.
    """
    try:
        channel = transport.open_session(timeout=timeout)
    except paramiko.ChannelException:  # "administratively prohibited"
        return None
    with channel:
        channel.settimeout(timeout)
        try:
            channel.exec_command(command)
        except paramiko.SSHException:
            if not transport.is_active():
                raise
            return None  # the server refused the exec request
        channel.shutdown_write()
        output = bytearray()
        while data := channel.recv(32 * 1024):
            if len(output) < OUTPUT_LIMIT:
                output += data[: OUTPUT_LIMIT - len(output)]
        # the exit status comes with or just after the end of the output
        if not channel.status_event.wait(timeout):
            raise TimeoutError(f"no exit status for {command.split()[0]} after {timeout} s")
        status = channel.exit_status
    return None if status < 0 else CommandOutput(bytes(output), status)


def probe(transport: paramiko.Transport, timeout: float) -> HashCommand | None:
    """The first hash tool in :data:`COMMANDS` the server runs correctly, or None."""
    for command in COMMANDS:
        done = run_command(transport, command.name, timeout)
        if done is None or done.exit_status != 0:
            continue
        if command.parse(done.stdout) == command.empty_digest:
            return command
    return None


def server_digest(
    transport: paramiko.Transport, command: HashCommand, path: str, timeout: float
) -> str | None:
    """The server's digest of the file at ``path``, or None if the tool failed on it.

    A failure (the file not where SFTP put it, as under a chroot the shell does
    not share) says nothing about the bytes: the caller reads back instead.
    """
    done = run_command(transport, f"{command.name} {quote_path(path)}", timeout)
    if done is None or done.exit_status != 0:
        return None
    return command.parse(done.stdout)


class BackgroundDigest:
    """A hashlib digest updated by a thread of its own, so hashing overlaps sending.

    hashlib releases the GIL while it hashes a large buffer, so the sending
    thread's Python work and the hash run on two cores at once: SHA-256 costs
    0.7-1.4 s a GiB here, which in line would add to every upload's time.
    Chunks are queued as they are read (at most ``depth`` of them wait, so
    memory stays bounded); :meth:`hexdigest` waits for the last one.

    Parameters:
        command: the hash tool whose algorithm to compute.
        depth: chunks that may wait to be hashed before :meth:`update` blocks.
    """

    def __init__(self, command: HashCommand, depth: int = 8) -> None:
        self._digest = command.new()
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="hoist-sftp-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` to be hashed after those before it."""
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """The digest of every chunk queued, once the thread has hashed them all."""
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the thread once it has hashed what is queued (an abandoned upload calls it too)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
