"""SFTPObjectStore against a real OpenSSH sshd on loopback (no mocks).

What the store wrote is checked independently: the test reads the server's
directory on disk, which is the same filesystem, and hashes it with hashlib.

Two kinds of account: the fixture's, which may run commands, so uploads are
verified by a hash the server computes (``server-hash``); and an SFTP-only one
(:class:`SftpOnlyServer`: ``ForceCommand internal-sftp``, the usual way to give
an account file transfer and nothing else), where they are read back.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hoist.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    ContainerNotFoundError,
    HostKeyError,
    InvalidObjectNameError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStoreError,
    SourceFileError,
    StoreAuthError,
    StoreConnectionError,
    StoreFullError,
)
from hoist.stores import sftp as sftp_module
from hoist.stores import sftp_hash
from hoist.stores.base import Verification
from hoist.stores.checksum import checksum_file
from hoist.stores.sftp import SFTPObjectStore
from hoist.stores.sftp_hash import (
    COMMANDS,
    HashCommand,
    PiecewiseHash,
    probe,
    quote_path,
    server_digest,
)
from hoist.stores.sftp_transfer import STANDARD_REQUEST, PipelinedReader, RequestSizes
from tests.services.process import free_port, port_open
from tests.services.sshd import SshServer, generate_key
from tests.services.tmpfs import small_tmpfs

MiB = 1024 * 1024
MakeFile = Callable[..., Path]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def temporaries(root: Path) -> list[str]:
    return [
        os.path.join(directory, name)
        for directory, _, names in os.walk(root)
        for name in names
        if name.startswith(".hoist-tmp-")
    ]


def make_store(server: SshServer, **overrides: object) -> SFTPObjectStore:
    kwargs: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "key_filename": server.key_filename,
        "known_hosts": server.known_hosts,
        "cwd": str(server.root),
        "connect_timeout": 5.0,
    }
    kwargs.update(overrides)
    return SFTPObjectStore(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def cwd(sshd_server: SshServer) -> Path:
    """A fresh remote directory per test, inside the server's root."""
    return Path(tempfile.mkdtemp(prefix="t-", dir=sshd_server.root))


@pytest.fixture
def store(sshd_server: SshServer, cwd: Path) -> Iterator[SFTPObjectStore]:
    with make_store(sshd_server, cwd=str(cwd)) as opened:
        yield opened


@pytest.fixture
def closed_port_store(sshd_server: SshServer) -> SFTPObjectStore:
    """A store nothing listens for: any request it made would fail to connect."""
    return make_store(sshd_server, port=free_port())


class SftpOnlyServer(SshServer):
    """The fixture's sshd with a third port where the account may use SFTP and nothing else.

    ``ForceCommand internal-sftp`` answers every exec request with an SFTP
    server instead of the command, as on a hosting account restricted to file
    transfer, so no hash tool can run and uploads must be read back.
    """

    def __init__(self, workdir: Path) -> None:
        self.sftp_only_port = free_port()
        super().__init__(workdir)

    def _config(self) -> str:
        listen = f"Port {self.read_only_port}\n"
        config = super()._config().replace(listen, listen + f"Port {self.sftp_only_port}\n", 1)
        # Match blocks run to the end of the file: this one goes after the read-only one.
        return config + f"Match LocalPort {self.sftp_only_port}\n    ForceCommand internal-sftp\n"

    def write_known_hosts(self, path: str | os.PathLike[str], key_line: str) -> None:
        super().write_known_hosts(path, key_line)
        with open(path, "a") as known_hosts:
            known_hosts.write(f"[{self.host}]:{self.sftp_only_port} {key_line}\n")

    def _up(self) -> bool:
        return super()._up() and port_open(self.sftp_only_port)


@pytest.fixture(scope="module")
def sftp_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpOnlyServer]:
    server = SftpOnlyServer(tmp_path_factory.mktemp("sshd-sftp-only"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_only_store(sftp_only_server: SftpOnlyServer) -> Iterator[tuple[SFTPObjectStore, Path]]:
    """A store on the SFTP-only port, with its fresh remote directory."""
    cwd = Path(tempfile.mkdtemp(prefix="t-", dir=sftp_only_server.root))
    with make_store(sftp_only_server, port=sftp_only_server.sftp_only_port, cwd=str(cwd)) as opened:
        yield opened, cwd


def check_round_trip(
    store: SFTPObjectStore,
    cwd: Path,
    source: Path,
    tmp_path: Path,
    verified_by: Verification = Verification.SERVER_HASH,
) -> float:
    result = store.upload_file("run1/rank0/ckpt.bin", source)

    size, checksum = checksum_file(str(source))
    assert (result.size, result.checksum) == (size, checksum)
    assert result.verified_by is verified_by
    assert not result.already_present
    remote = cwd / "run1" / "rank0" / "ckpt.bin"
    assert sha256(remote) == sha256(source)

    target = tmp_path / "downloaded" / "ckpt.bin"
    held = store.download_file("run1/rank0/ckpt.bin", target)
    assert (held.size, held.checksum) == (size, checksum)
    assert sha256(target) == sha256(source)
    assert temporaries(cwd) == []
    return result.seconds


@pytest.mark.parametrize("size", [0, 1, 5 * MiB], ids=["0B", "1B", "5MiB"])
def test_round_trip(
    store: SFTPObjectStore, cwd: Path, make_file: MakeFile, tmp_path: Path, size: int
) -> None:
    check_round_trip(store, cwd, make_file(size), tmp_path)


@pytest.mark.parametrize("size", [0, 1, 5 * MiB], ids=["0B", "1B", "5MiB"])
def test_round_trip_on_an_sftp_only_account_reads_back(
    sftp_only_store: tuple[SFTPObjectStore, Path], make_file: MakeFile, tmp_path: Path, size: int
) -> None:
    store, cwd = sftp_only_store
    check_round_trip(store, cwd, make_file(size), tmp_path, Verification.READ_BACK)


@pytest.mark.slow
def test_round_trip_200_mib(
    store: SFTPObjectStore, cwd: Path, make_file: MakeFile, tmp_path: Path
) -> None:
    size = 200 * MiB
    seconds = check_round_trip(store, cwd, make_file(size), tmp_path)
    # upload_file's time includes the server hashing the object to verify it
    rate = size / seconds / 1e6
    print(f"\nSFTP upload of 200 MiB, server hash included: {seconds:.2f} s, {rate:.0f} MB/s")


def test_put_bytes_and_get_bytes(store: SFTPObjectStore, cwd: Path) -> None:
    result = store.put_bytes("run1/latest.symlink", b"run1/ep3.pt")

    assert result.verified_by is Verification.READ_BACK
    assert store.get_bytes("run1/latest.symlink") == b"run1/ep3.pt"
    assert (cwd / "run1" / "latest.symlink").read_bytes() == b"run1/ep3.pt"
    store.put_bytes("run1/latest.symlink", b"")
    assert store.get_bytes("run1/latest.symlink") == b""
    assert temporaries(cwd) == []


def test_put_bytes_without_overwrite_keeps_existing(store: SFTPObjectStore, cwd: Path) -> None:
    store.put_bytes("manifest.json", b"{}")
    with pytest.raises(ObjectExistsError):
        store.put_bytes("manifest.json", b"[]", overwrite=False)
    assert (cwd / "manifest.json").read_bytes() == b"{}"


def test_existing_object_with_other_bytes_is_refused(
    store: SFTPObjectStore, cwd: Path, make_file: MakeFile
) -> None:
    store.upload_file("ckpt.pt", make_file(1000, "first.bin"))
    before = (cwd / "ckpt.pt").read_bytes()

    with pytest.raises(ObjectExistsError, match="already exists with other bytes"):
        store.upload_file("ckpt.pt", make_file(1000, "second.bin"))
    assert (cwd / "ckpt.pt").read_bytes() == before


def test_existing_object_with_same_bytes_is_already_present(
    store: SFTPObjectStore, make_file: MakeFile
) -> None:
    source = make_file(3000)
    first = store.upload_file("ckpt.pt", source)

    again = store.upload_file("ckpt.pt", source)
    assert again.already_present
    assert again.checksum == first.checksum


def test_overwrite_replaces(store: SFTPObjectStore, cwd: Path, make_file: MakeFile) -> None:
    store.upload_file("ckpt.pt", make_file(5000, "first.bin"))
    second = make_file(7000, "second.bin")

    result = store.upload_file("ckpt.pt", second, overwrite=True)
    assert not result.already_present
    assert (cwd / "ckpt.pt").read_bytes() == second.read_bytes()
    assert temporaries(cwd) == []


def test_missing_parent_directories_are_created(
    store: SFTPObjectStore, cwd: Path, make_file: MakeFile
) -> None:
    (cwd / "a").mkdir()  # part of the path exists already
    store.upload_file("a/b/c/d/file.bin", make_file(10))
    store.put_bytes("a/b/other/pointer", b"x")

    assert (cwd / "a" / "b" / "c" / "d" / "file.bin").stat().st_size == 10
    assert (cwd / "a" / "b" / "other" / "pointer").read_bytes() == b"x"


def test_file_in_the_way_of_a_directory(store: SFTPObjectStore) -> None:
    store.put_bytes("a", b"a file")
    with pytest.raises(PermanentStoreError, match="in the way"):
        store.put_bytes("a/b", b"x")


def test_exists_and_delete(store: SFTPObjectStore, cwd: Path) -> None:
    store.put_bytes("dir/obj", b"1")
    assert store.exists("dir/obj")
    assert not store.exists("dir/absent")
    assert not store.exists("dir")  # a directory is not an object

    store.delete("dir/obj")
    assert not (cwd / "dir" / "obj").exists()
    assert not store.exists("dir/obj")
    store.delete("dir/obj")  # deleting an absent object is not an error


def test_missing_object(store: SFTPObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="absent.bin does not exist"):
        store.stat("absent.bin")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("absent.bin")
    with pytest.raises(ObjectNotFoundError):
        store.download_file("absent.bin", tmp_path / "out" / "absent.bin")


def test_download_is_atomic(store: SFTPObjectStore, tmp_path: Path) -> None:
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    with pytest.raises(ObjectNotFoundError):
        store.download_file("absent.bin", target_dir / "absent.bin")
    assert list(target_dir.iterdir()) == []  # neither the file nor a temporary


def test_source_that_is_a_directory(store: SFTPObjectStore, tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="not a regular file"):
        store.upload_file("dir.bin", tmp_path)


@pytest.mark.parametrize("name", ["", "a/../b"])
def test_invalid_names_fail_before_connecting(
    closed_port_store: SFTPObjectStore, name: str, tmp_path: Path
) -> None:
    # Any request would raise StoreConnectionError: the port is closed.
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls = [
        lambda: closed_port_store.upload_file(name, source),
        lambda: closed_port_store.put_bytes(name, b"x"),
        lambda: closed_port_store.get_bytes(name),
        lambda: closed_port_store.stat(name),
        lambda: closed_port_store.exists(name),
        lambda: closed_port_store.delete(name),
        lambda: closed_port_store.download_file(name, tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(InvalidObjectNameError) as raised:
            call()
        assert isinstance(raised.value, ValueError)


def test_get_uri(sshd_server: SshServer) -> None:
    port = sshd_server.port
    store = make_store(sshd_server, cwd="/srv//checkpoints/")
    assert (
        store.get_uri("run1/ep1.pt") == f"sftp://root@127.0.0.1:{port}/srv/checkpoints/run1/ep1.pt"
    )
    assert (
        store.get_uri("/run1/ep1.pt") == f"sftp://root@127.0.0.1:{port}/srv/checkpoints/run1/ep1.pt"
    )
    # Relative to the login directory: the /~/ form of the SFTP URI draft.
    home = make_store(sshd_server, cwd="ckpts", username="hoist")
    assert home.get_uri("a") == f"sftp://hoist@127.0.0.1:{port}/~/ckpts/a"
    assert make_store(sshd_server, cwd=None).get_uri("a") == f"sftp://root@127.0.0.1:{port}/~/a"
    # hoist.stores.uri passes a URI's path as cwd, so the /~/ form must round-trip.
    assert make_store(sshd_server, cwd="/~/ckpts/").get_uri("a").endswith(f"{port}/~/ckpts/a")


def test_uri_of_upload(store: SFTPObjectStore, cwd: Path, sshd_server: SshServer) -> None:
    result = store.put_bytes("x/y", b"1")
    assert result.uri == f"sftp://{sshd_server.username}@127.0.0.1:{sshd_server.port}{cwd}/x/y"


# ----- connection, host keys and credentials ---------------------------------


def test_unknown_host_key_is_rejected(sshd_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    store = make_store(sshd_server, known_hosts=str(empty))

    with pytest.raises(HostKeyError) as raised:
        store.check()
    message = str(raised.value)
    assert f"127.0.0.1:{sshd_server.port}" in message
    assert f"ssh-keyscan -p {sshd_server.port} 127.0.0.1" in message
    assert empty.read_text() == ""  # never added


def test_changed_host_key_is_rejected(sshd_server: SshServer, tmp_path: Path) -> None:
    other_key = generate_key(tmp_path / "other_host_key")
    known_hosts = tmp_path / "known_hosts"
    sshd_server.write_known_hosts(known_hosts, other_key)
    store = make_store(sshd_server, known_hosts=str(known_hosts))

    with pytest.raises(HostKeyError, match="has changed") as raised:
        store.stat("anything")
    assert "man-in-the-middle" in str(raised.value)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd_server.port}'" in str(raised.value)


def test_wrong_user_key_is_refused(sshd_server: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    generate_key(stranger)
    store = make_store(sshd_server, key_filename=str(stranger))

    with pytest.raises(StoreAuthError) as raised:
        store.check()
    assert f"{sshd_server.username!r}" in str(raised.value)
    assert not raised.value.retryable


def test_missing_key_or_known_hosts_file(sshd_server: SshServer, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="key_filename"):
        make_store(sshd_server, key_filename=missing).check()
    with pytest.raises(ConfigurationError, match="known_hosts"):
        make_store(sshd_server, known_hosts=missing).check()


def test_unreachable_host(closed_port_store: SFTPObjectStore) -> None:
    with pytest.raises(StoreConnectionError) as raised:
        closed_port_store.check()
    assert f"127.0.0.1:{closed_port_store.port}" in str(raised.value)
    assert raised.value.retryable


def test_missing_cwd(sshd_server: SshServer, cwd: Path, make_file: MakeFile) -> None:
    missing = cwd / "not-there"
    store = make_store(sshd_server, cwd=str(missing))

    with pytest.raises(ContainerNotFoundError, match="does not exist"):
        store.check()
    with pytest.raises(ContainerNotFoundError):
        store.upload_file("a/b.bin", make_file(10))
    with pytest.raises(ContainerNotFoundError):
        store.put_bytes("top-level", b"x")
    assert not missing.exists()  # never created as a side effect


def test_reconnects_after_the_connection_drops(store: SFTPObjectStore, make_file: MakeFile) -> None:
    store.put_bytes("a", b"1")
    transport = store._client.get_transport()  # type: ignore[union-attr]
    transport.close()  # as if the network had dropped it

    assert store.upload_file("b", make_file(100)).size == 100


def test_server_restart(tmp_path: Path) -> None:
    """While the server is down calls fail as transient; once it is back they work again."""
    server = SshServer(tmp_path / "sshd")
    server.start()
    try:
        with make_store(server) as store:
            store.put_bytes("a", b"1")
            server.drop_connections()
            server.stop()
            with pytest.raises(StoreConnectionError):
                store.get_bytes("a")
            with pytest.raises(StoreConnectionError):  # reconnecting is refused
                store.get_bytes("a")
            server.start()
            assert store.get_bytes("a") == b"1"
    finally:
        server.stop()


# ----- server-side refusals ---------------------------------------------------


def test_read_only_server_refuses_writes(sshd_server: SshServer, cwd: Path) -> None:
    # internal-sftp -R answers every write with "permission denied", which root
    # could not otherwise be given.
    (cwd / "existing").write_bytes(b"old")
    store = make_store(sshd_server, port=sshd_server.read_only_port, cwd=str(cwd))

    assert store.get_bytes("existing") == b"old"
    with pytest.raises(StoreAuthError, match="permission denied") as raised:
        store.put_bytes("new", b"x")
    assert "check the remote user's rights" in str(raised.value)
    with pytest.raises(StoreAuthError):
        store.put_bytes("existing", b"new")
    assert (cwd / "existing").read_bytes() == b"old"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_directory_without_write_permission(store: SFTPObjectStore, cwd: Path) -> None:
    (cwd / "locked").mkdir(mode=0o555)
    with pytest.raises(StoreAuthError, match="permission denied"):
        store.put_bytes("locked/file", b"x")


@pytest.fixture
def tiny_disk(cwd: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted inside the remote directory."""
    with small_tmpfs(cwd / "disk", "1m") as disk:
        yield disk


def test_full_disk(store: SFTPObjectStore, tiny_disk: Path, make_file: MakeFile) -> None:
    store.upload_file("disk/fits.bin", make_file(600 * 1024, "fits.bin"))

    # Fails part-way: some writes succeed before the disk fills.
    with pytest.raises(StoreFullError, match="full") as raised:
        store.upload_file("disk/too-big.bin", make_file(2 * MiB, "too-big.bin"))
    assert not raised.value.retryable
    assert sorted(os.listdir(tiny_disk)) == ["fits.bin"]  # the temporary is gone
    assert digest_threads() == []  # the hashing thread stopped with the upload
    started = time.monotonic()
    assert store.get_bytes("disk/fits.bin")  # the connection is still usable
    assert time.monotonic() - started < 5


def test_reader_stops_at_the_real_end_of_file(store: SFTPObjectStore, cwd: Path) -> None:
    """Asked for more than the file holds (it shrank after its size was read), the
    reader gets a short answer, asks for the rest and stops at the end of file."""
    data = os.urandom(3 * 32 * 1024 + 1000)  # ends part-way through a 32 KiB request
    (cwd / "shrunk").write_bytes(data)
    with store._sftp().open(store._path("shrunk"), "rb") as remote:
        chunks = list(PipelinedReader(remote).chunks(len(data) + 5 * 32 * 1024))
    assert b"".join(chunks) == data


# ----- verification by the server's hash ---------------------------------------


def digest_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "hoist-sftp-digest"]


def corrupt_after_writing(
    store: SFTPObjectStore, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Flip one byte of each temporary object on the server's disk once it is written and
    before it is verified, as a faulty disk or server would; returns the names corrupted."""
    write = store._write_temporary
    corrupted: list[str] = []

    def write_then_corrupt(
        name: str, temp: str, chunks: Iterator[bytes], pieces: PiecewiseHash | None = None
    ) -> None:
        write(name, temp, chunks, pieces)
        held = bytearray((cwd / temp).read_bytes())
        held[len(held) // 2] ^= 0xFF
        (cwd / temp).write_bytes(bytes(held))
        corrupted.append(temp)

    monkeypatch.setattr(store, "_write_temporary", write_then_corrupt)
    return corrupted


@pytest.mark.parametrize("account", ["may-run-commands", "sftp-only"])
def test_a_corrupted_upload_is_detected(
    account: str,
    request: pytest.FixtureRequest,
    make_file: MakeFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if account == "sftp-only":
        store, cwd = request.getfixturevalue("sftp_only_store")
    else:
        store, cwd = request.getfixturevalue("store"), request.getfixturevalue("cwd")
    corrupted = corrupt_after_writing(store, cwd, monkeypatch)

    with pytest.raises(ChecksumMismatchError, match="holds other bytes") as raised:
        store.upload_file("ckpt.bin", make_file(MiB))
    assert len(corrupted) == 1
    # the server's digest differs (sha256 or md5), or the read-back CRC does
    if account == "sftp-only":
        assert "checksum is crc64nvme" in str(raised.value)
    else:
        assert re.search(
            r"the (sha256|md5) of piece 1 of 1 is [0-9a-f]+, expected", str(raised.value)
        )
    assert not (cwd / "ckpt.bin").exists()  # never published
    assert temporaries(cwd) == []
    assert digest_threads() == []


HOSTILE_NAMES = [
    "it's",
    "$(touch {marker})",
    "`touch {marker}`",
    "a; touch {marker}",
    "x'; touch {marker}; '",
    'q"; touch {marker}; "',
    "a\ntouch {marker}",
    "-n",
    "back\\slash",
    "star *",
    "~root",
]


@pytest.mark.parametrize("template", HOSTILE_NAMES)
def test_hostile_names_reach_the_hash_tool_as_one_quoted_path(
    store: SFTPObjectStore, cwd: Path, tmp_path: Path, template: str
) -> None:
    marker = tmp_path / "a-command-ran"
    name = template.format(marker=marker)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(1000))

    result = store.upload_file(name, source)
    assert not marker.exists()
    # A name that broke the quoting would make the tool fail and the store read back.
    assert result.verified_by is Verification.SERVER_HASH
    assert (cwd / name).read_bytes() == source.read_bytes()


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize(
    "path", ["/a b/c", "-rf", "it's", "$(id)", "`id`", "a\nb", "'", "\\", "*", "~", "!x"]
)
def test_quote_path_is_one_literal_word(shell: str, path: str) -> None:
    done = subprocess.run(
        [shell, "-c", "printf '%s' " + quote_path(path)], capture_output=True, check=True
    )
    assert done.stdout.decode() == (path if path.startswith("/") else "./" + path)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name.split()[0] for c in COMMANDS])
def test_each_hash_tool_hashes_what_the_server_holds(
    store: SFTPObjectStore, cwd: Path, command: HashCommand
) -> None:
    data = os.urandom(70_000)
    name = "odd \\ name\nwith a newline"  # md5sum and sha256sum escape such names
    (cwd / name).write_bytes(data)

    digest = server_digest(store._transport(), command, store._path(name), 10.0)
    assert digest == hashlib.new(command.algorithm, data).hexdigest()


def test_hash_tool_failures_are_no_digest(store: SFTPObjectStore, cwd: Path) -> None:
    (cwd / "held").write_bytes(b"x")
    transport = store._transport()
    assert probe(transport, 10.0) in COMMANDS
    # a missing file (as under a chroot the shell does not share), a missing tool,
    # and a tool whose output holds no digest: the store reads back instead
    assert server_digest(transport, COMMANDS[0], store._path("absent"), 10.0) is None
    missing_tool = HashCommand("no-such-hash-tool", "sha256")
    assert server_digest(transport, missing_tool, store._path("held"), 10.0) is None
    assert server_digest(transport, HashCommand("echo", "md5"), store._path("held"), 10.0) is None


def test_no_hash_tool_runs_on_a_forced_command_account(
    sftp_only_store: tuple[SFTPObjectStore, Path], sshd_server: SshServer
) -> None:
    store, _ = sftp_only_store
    assert probe(store._transport(), 10.0) is None
    with make_store(sshd_server, port=sshd_server.read_only_port) as read_only:
        assert probe(read_only._transport(), 10.0) is None


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pieces of 2 MiB, sent in 768 KiB chunks, so that chunks cross pieces' ends."""
    monkeypatch.setattr(sftp_hash, "PIECE_BYTES", 2 * MiB)
    monkeypatch.setattr(sftp_module, "WRITE_CHUNK", 768 * 1024)
    return 2 * MiB


@pytest.mark.parametrize("size", [5 * MiB + 3, 4 * MiB], ids=["2.5-pieces", "2-pieces"])
def test_the_server_hashes_piece_by_piece(
    store: SFTPObjectStore,
    cwd: Path,
    make_file: MakeFile,
    tmp_path: Path,
    small_pieces: int,
    size: int,
) -> None:
    check_round_trip(store, cwd, make_file(size), tmp_path)


def test_a_piece_corrupted_while_later_ones_are_sent_is_detected(
    store: SFTPObjectStore,
    cwd: Path,
    make_file: MakeFile,
    small_pieces: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hash_piece = PiecewiseHash.piece_written
    corrupted: list[str] = []

    def corrupt_first_piece_then_hash(self: PiecewiseHash) -> None:
        if not corrupted:  # the server's disk, the very path it is about to hash
            path = self._path
            with open(path, "r+b") as held:
                first = held.read(1)
                held.seek(0)
                held.write(bytes([first[0] ^ 0xFF]))
            corrupted.append(path)
        hash_piece(self)

    monkeypatch.setattr(PiecewiseHash, "piece_written", corrupt_first_piece_then_hash)
    with pytest.raises(ChecksumMismatchError, match="piece 1 of 3"):
        store.upload_file("ckpt.bin", make_file(5 * MiB + 3))
    assert corrupted
    assert not (cwd / "ckpt.bin").exists()
    assert temporaries(cwd) == []
    assert digest_threads() == []


# ----- request sizes ------------------------------------------------------------


def test_openssh_serves_large_requests(store: SFTPObjectStore) -> None:
    store.check()
    assert store._sizes.read > STANDARD_REQUEST
    assert store._sizes.write > STANDARD_REQUEST


def test_round_trip_in_standard_requests(
    store: SFTPObjectStore, cwd: Path, make_file: MakeFile, tmp_path: Path
) -> None:
    """What a server without ``limits@openssh.com`` gets: 32 KiB reads and writes."""
    store.check()
    store._sizes = RequestSizes.standard()
    check_round_trip(store, cwd, make_file(3 * MiB + 5), tmp_path)
