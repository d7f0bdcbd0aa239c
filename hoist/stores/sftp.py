"""An SFTP server as an object store, through paramiko.

Objects are files under a remote working directory; ``/`` in an object name is a
directory. An upload writes a hidden temporary sibling, verifies it (by a hash
the server computes where the account may run one, :mod:`hoist.stores.sftp_hash`,
else by reading it back) and renames it over the final name, so a reader never
sees a partial file.

The host key is checked against known_hosts and never accepted blindly: an
unknown or changed key raises :class:`~hoist.errors.HostKeyError`
(:mod:`hoist.stores.sftp_hostkeys`). Transfers use a tuned transport and
pipelined reads and writes; the measurements behind them are in
:mod:`hoist.stores.sftp_transfer`.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import stat as stat_module
from collections.abc import Iterable, Iterator

import paramiko
from paramiko.ssh_exception import PasswordRequiredException

from hoist.errors import (
    ConfigurationError,
    ContainerNotFoundError,
    HoistError,
    ObjectNotFoundError,
    PermanentStoreError,
    SourceFileError,
    StoreAuthError,
    StoreConnectionError,
    StoreError,
    StoreFullError,
)
from hoist.stores.base import ObjectStat, ObjectStore, Verification
from hoist.stores.checksum import Checksum, HashingReader, Progress
from hoist.stores.leftovers import Leftover, sftp_temporary_files
from hoist.stores.names import FILE_SEGMENT_MAX_BYTES, temporary_name
from hoist.stores.sftp_config import expand_all, normalize_cwd
from hoist.stores.sftp_errors import FULL_ERRNOS, is_connection_failure, is_sftp_failure
from hoist.stores.sftp_hash import HashCommand, PiecewiseHash, probe
from hoist.stores.sftp_hostkeys import RejectUnknownHost, changed_host_key_error, load_host_keys
from hoist.stores.sftp_transfer import (
    READ_CHUNK,
    WRITE_CHUNK,
    PipelinedReader,
    RequestSizes,
    await_write_acks,
    open_sftp,
    request_sizes,
    tuned_transport,
)


class SFTPObjectStore(ObjectStore):
    """Objects as files on an SFTP server.

    Parameters:
        host: the server's name or address.
        port: its SSH port.
        username: the remote user; the local user's name when None.
        password: a password, or the passphrase of ``key_filename``.
        key_filename: a private key file (or a list of them). With neither this
            nor ``password``, keys from ssh-agent and ``~/.ssh`` are tried, as
            ``ssh`` does.
        known_hosts: a known_hosts file that must hold the server's host key.
            When None, ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``.
        cwd: the remote directory object names are relative to; it must exist.
            When None, the login directory.
        connect_timeout: seconds allowed for connecting and authenticating.
        io_timeout: seconds to wait for any answer of the server once connected.

    One SSH connection and one SFTP session are opened on first use and reused;
    a dropped connection is reopened by the next call. An instance is not safe
    to share between threads: give each thread its own.

    Example:
        >>> store = SFTPObjectStore(
        ...     "storage.internal", username="hoist", key_filename="~/.ssh/id_ed25519",
        ...     cwd="/srv/checkpoints",
        ... )
        >>> store.upload_file("run1/rank0/ep1.pt", "/scratch/ep1.pt").uri  # doctest: +SKIP
        'sftp://hoist@storage.internal:22/srv/checkpoints/run1/rank0/ep1.pt'
    """

    scheme = "sftp"
    max_segment_bytes = FILE_SEGMENT_MAX_BYTES
    thread_safe = False

    def __init__(
        self,
        host: str,
        port: int = 22,
        username: str | None = None,
        password: str | None = None,
        key_filename: str | list[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        cwd: str | None = None,
        connect_timeout: float = 10.0,
        io_timeout: float = 120.0,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.username = username or getpass.getuser()
        self._password = password
        self._key_filenames = expand_all(key_filename)
        self.known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self.cwd = normalize_cwd(cwd)
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp_client: paramiko.SFTPClient | None = None
        self._sizes = RequestSizes.standard()
        self._hash_tool: HashCommand | None = None
        self._probed = False

    # ----- naming ------------------------------------------------------------

    def get_uri(self, object_name: str) -> str:
        """``sftp://user@host:port/abs/path``, or ``…/~/path`` below the login directory."""
        path = self._path(object_name.lstrip("/"))
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not path.startswith("/"):
            # draft-ietf-secsh-scp-sftp-ssh-uri writes home-relative paths as /~/path
            path = "/~" if path == "." else "/~/" + path
        return f"sftp://{self.username}@{host}:{self.port}{path}"

    def _path(self, name: str) -> str:
        """The remote path of an object name (or of the working directory for ``""``)."""
        if self.cwd is None:
            return posixpath.normpath(name) if name else "."
        return posixpath.normpath(posixpath.join(self.cwd, name))

    @property
    def _address(self) -> str:
        return f"{self.host}:{self.port}"

    # ----- connection --------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        """The SFTP session, (re)connecting when there is none or its transport died."""
        if self._sftp_client is None or not self._connected():
            self._disconnect()
            self._connect()
        assert self._sftp_client is not None
        return self._sftp_client

    def _transport(self) -> paramiko.Transport:
        """The SSH connection under the SFTP session, (re)connecting as :meth:`_sftp` does."""
        self._sftp()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def _connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _connect(self) -> None:
        for key_file in self._key_filenames:
            if not os.path.isfile(key_file):
                raise ConfigurationError(f"key_filename {key_file!r} does not exist")
        client = paramiko.SSHClient()
        load_host_keys(client, self.known_hosts, self.host, self.port)
        client.set_missing_host_key_policy(
            RejectUnknownHost(self.host, self.port, self.known_hosts)
        )
        explicit = bool(self._key_filenames or self._password)
        try:
            client.connect(
                self.host,
                self.port,
                username=self.username,
                password=self._password,
                key_filename=self._key_filenames or None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                # Given credentials are the only ones tried, so the result does not
                # depend on whatever keys the machine's agent happens to hold.
                allow_agent=not explicit,
                look_for_keys=not explicit,
                transport_factory=tuned_transport,
            )
            transport = client.get_transport()
            assert transport is not None  # connect() succeeded
            sftp = open_sftp(transport)
            # Without a timeout a server that stops answering would hang the upload forever.
            sftp.get_channel().settimeout(self.io_timeout)
            sizes = request_sizes(sftp)
        except BaseException:
            client.close()
            raise
        self._client, self._sftp_client, self._sizes = client, sftp, sizes

    def _disconnect(self) -> None:
        client, self._client, self._sftp_client = self._client, None, None
        if client is not None:
            client.close()  # closes the SFTP channel with the transport

    def close(self) -> None:
        self._disconnect()

    # ----- primitives --------------------------------------------------------

    def _put_file(
        self, name: str, path: str, size: int, progress: Progress | None
    ) -> tuple[Checksum, Verification]:
        tool = self._server_hash_tool()
        try:
            local = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise SourceFileError(f"cannot upload {path!r}: {exc.strerror}") from exc
        temp = temporary_name(name)
        pieces = None
        if tool is not None:
            pieces = PiecewiseHash(self._transport(), tool, self._path(temp), self.io_timeout)
        try:
            with local:
                reader = HashingReader(local, progress)
                self._write_temporary(name, temp, _local_chunks(reader, path), pieces)
            sent = reader.hasher
            if sent.size != size:
                self._abandon(temp)
                raise SourceFileError(
                    f"{path!r} changed while it was uploaded ({size} bytes before, {sent.size} "
                    "read); upload files only once they are complete"
                )
            try:
                verified_by = self._verify_upload(temp, sent.size, sent.checksum, pieces)
                self._publish(temp, name)
            except BaseException as exc:
                self._abandon(temp, exc)
                raise
        finally:
            if pieces is not None:
                pieces.close()
        return sent.checksum, verified_by

    def _put_bytes(self, name: str, data: bytes) -> Verification | None:
        temp = temporary_name(name)
        self._write_temporary(name, temp, [data] if data else [])
        try:
            self._publish(temp, name)
        except BaseException as exc:
            self._abandon(temp, exc)
            raise
        return None  # SFTP servers report no checksum: verify reads back

    def _read_chunks(self, name: str) -> Iterator[bytes]:
        try:
            remote = self._sftp().open(self._path(name), "rb")
        except FileNotFoundError:
            raise self._not_found(name) from None
        with remote:
            attrs = remote.stat()
            if stat_module.S_ISDIR(attrs.st_mode or 0):
                raise ObjectNotFoundError(f"{self.get_uri(name)} is a directory, not an object")
            if PipelinedReader.available():
                reader = PipelinedReader(remote, self._sizes.read)
                yield from reader.chunks(attrs.st_size or 0)
                return
            # The public way: requests for the whole file, sent by a helper thread.
            remote.prefetch(attrs.st_size)
            while data := remote.read(READ_CHUNK):
                yield data

    def _stat(self, name: str) -> ObjectStat:
        try:
            attrs = self._sftp().stat(self._path(name))
        except FileNotFoundError:
            raise self._not_found(name) from None
        if stat_module.S_ISDIR(attrs.st_mode or 0):
            raise ObjectNotFoundError(f"{self.get_uri(name)} is a directory, not an object")
        return ObjectStat(name, attrs.st_size or 0, None)

    def _delete(self, name: str) -> None:
        try:
            self._sftp().remove(self._path(name))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.get_uri(name)} does not exist") from None

    def _check(self) -> None:
        if not self._is_dir(""):
            raise self._missing_cwd()

    def _leftovers(self, before: float) -> list[Leftover]:
        return sftp_temporary_files(self._sftp(), self._path(""), self.get_uri, before)

    def _discard(self, leftover: Leftover) -> None:
        self._sftp().remove(leftover.handle)

    # ----- steps of an upload ------------------------------------------------

    def _write_temporary(
        self, name: str, temp: str, chunks: Iterable[bytes], pieces: PiecewiseHash | None = None
    ) -> None:
        """Write ``chunks`` to ``temp``, a new hidden sibling of ``name``.

        Writes are pipelined: paramiko sends them without waiting for each answer,
        which is what makes SFTP fast on any link with latency. With ``pieces``,
        the server hashes each piece once its writes are acknowledged, while the
        next ones are sent.
        """
        self._make_parents(name)
        try:
            remote = self._sftp().open(self._path(temp), "wb")
        except FileNotFoundError:
            raise self._not_found(name) from None
        try:
            remote.set_pipelined(True)
            # paramiko reads the request size from the file; the class default is 32 KiB
            remote.MAX_REQUEST_SIZE = self._sizes.write
            for chunk in chunks:
                remote.write(chunk)
                if pieces is not None and pieces.feed(chunk):
                    await_write_acks(remote)
                    pieces.piece_written()
            await_write_acks(remote)
            remote.close()
        except BaseException as exc:
            self._abandon(temp, exc, remote)
            if is_sftp_failure(exc):
                raise self._write_failed(name, exc) from exc
            raise

    def _verify_upload(
        self, temp: str, size: int, checksum: Checksum, pieces: PiecewiseHash | None
    ) -> Verification:
        """Show the temporary object holds what was sent: by the server's hash, else read-back."""
        pairs = pieces.pairs() if pieces is not None else None
        if pieces is None or pairs is None:
            return self.verify(temp, size, checksum)
        for number, (ours, theirs) in enumerate(pairs, 1):
            what = f"the {pieces.command.algorithm} of piece {number} of {len(pairs)}"
            self._compare(temp, what, ours, theirs)
        return Verification.SERVER_HASH

    def _server_hash_tool(self) -> HashCommand | None:
        """The hash tool this account may run on the server, probed once per store."""
        if not self._probed:
            self._hash_tool = probe(self._transport(), self.io_timeout)
            self._probed = True
        return self._hash_tool

    def _publish(self, temp: str, name: str) -> None:
        """Rename the verified temporary object over ``name``.

        ``posix-rename@openssh.com`` replaces an existing file atomically, where
        the plain SFTP rename refuses to overwrite.
        """
        self._sftp().posix_rename(self._path(temp), self._path(name))

    def _make_parents(self, name: str) -> None:
        """Create the directories above ``name`` that are missing, like ``mkdir -p``.

        The working directory itself is never created: a missing one is a
        configuration error, not something to paper over.
        """
        parent = posixpath.dirname(name)
        if not parent or self._is_dir(parent):
            return
        parts = parent.split("/")
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            try:
                self._sftp().mkdir(self._path(directory))
            except FileNotFoundError:
                raise self._not_found(name) from None
            except OSError as exc:
                # Most servers answer a plain "Failure" when it exists already,
                # perhaps made a moment ago by another worker.
                if self._is_dir(directory):
                    continue
                if is_sftp_failure(exc):
                    raise PermanentStoreError(
                        f"cannot create the directory {self.get_uri(directory)} ({exc}); "
                        "is a file of that name in the way?"
                    ) from exc
                raise

    # ----- helpers -----------------------------------------------------------

    def _is_dir(self, name: str) -> bool:
        try:
            return stat_module.S_ISDIR(self._sftp().stat(self._path(name)).st_mode or 0)
        except FileNotFoundError:
            return False

    def _not_found(self, name: str) -> StoreError:
        """The error for a path the server says is missing: the object, or the whole cwd."""
        if self.cwd is not None and not self._is_dir(""):
            return self._missing_cwd()
        return ObjectNotFoundError(f"{self.get_uri(name)} does not exist")

    def _missing_cwd(self) -> ContainerNotFoundError:
        return ContainerNotFoundError(
            f"the remote directory {self.get_uri('')} does not exist or is not a directory; "
            "create it on the server or set cwd to an existing directory"
        )

    def _write_failed(self, name: str, exc: BaseException) -> StoreError:
        # OpenSSH's sftp-server reports ENOSPC and EDQUOT as a bare "Failure",
        # and those are what make a write fail once the file is open.
        return StoreFullError(
            f"the server failed a write to {self.get_uri(name)} ({exc}); its disk is most "
            "likely full or the user over quota: free space on the server"
        )

    def _abandon(
        self, temp: str, exc: BaseException | None = None, remote: paramiko.SFTPFile | None = None
    ) -> None:
        """Best effort after a failed upload: close and remove the temporary object.

        After a connection failure the connection is dropped instead: waiting on
        it again would only delay the real error, perhaps by a whole io_timeout.
        """
        if exc is not None and (
            is_connection_failure(exc) or isinstance(exc, StoreConnectionError)
        ):
            self._disconnect()
            return
        sftp = self._sftp_client
        if sftp is None:
            return
        try:
            if remote is not None:
                remote.close()
            sftp.remove(self._path(temp))
        except (OSError, EOFError, paramiko.SSHException):
            pass

    # ----- errors ------------------------------------------------------------

    def _translate(self, exc: Exception, name: str | None) -> HoistError | None:
        where = self.get_uri(name) if name else f"sftp://{self.username}@{self._address}"
        if isinstance(exc, paramiko.BadHostKeyException):
            return changed_host_key_error(exc, self.host, self.port)
        if isinstance(exc, PasswordRequiredException):
            return StoreAuthError(
                f"the private key for {self.username}@{self._address} is encrypted: pass its "
                "passphrase as password, or load it into ssh-agent and give no key_filename"
            )
        if isinstance(exc, paramiko.AuthenticationException) or (
            # raised when no key or password was given and none was found
            isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc)
        ):
            return StoreAuthError(
                f"{self._address} refused to log in {self.username!r} ({exc}): check the "
                "username, key_filename or password, and that the public key is in the "
                "server's authorized_keys"
            )
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return StoreFullError(f"no space left for {where}: free space on the server")
        if is_connection_failure(exc):
            # The SFTP session may be mid-request; only a fresh connection is safe.
            self._disconnect()
            return StoreConnectionError(
                f"lost or could not open the connection to {self._address} "
                f"({type(exc).__name__}: {exc}); check the host, port and network"
            )
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError(f"{where} does not exist")
        if isinstance(exc, PermissionError):
            return StoreAuthError(
                f"permission denied on {where}: check the remote user's rights on that path"
            )
        return None


def _local_chunks(reader: HashingReader, path: str) -> Iterator[bytes]:
    """The local file's chunks, with a read error reported as the source's fault."""
    try:
        yield from reader.chunks(WRITE_CHUNK)
    except OSError as exc:
        raise SourceFileError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
