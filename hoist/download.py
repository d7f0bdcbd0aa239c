"""Download an artifact from its store, following ``.symlink`` pointers to what they name.

Three ways to say what to download:

- ``run/rank0/ckpt/ep2.pt``: an object name in ``store`` (a URI or an
  :class:`ObjectStore`; default ``HOIST_STORE_URI``).
- ``s3://bucket/key``, ``sftp://user@host:port/path``, ``file:///dir/key``,
  ``local://container/key``: an object's URI. When it lies inside ``store``
  (``store``'s URI is a prefix of it), the rest is the object name in that
  store. Otherwise an ``s3://`` key is taken from the bucket's root and an
  ``sftp://`` path from the server's ``/``; ``file://`` and ``local://`` need
  ``store``, since only it says where the store's root is.
- ``latest-rank0.pt`` with ``run="bert-3"``: a name the run logged (artifact
  or object name), in the store the run's records name (its credentials
  opened with ``HOIST_FLEET_KEY``).

A pointer holds the name of its target *relative to the store it was written
to*, so pointers are followed inside the same store: for a logger writing
below a prefix or a working directory, give that store (``store=`` or
``run=``), not a bare bucket or server. When ``name`` does not exist but
``name.symlink`` does, the pointer is followed; an object and a pointer of the
same name resolve to the object. At most :data:`MAX_HOPS` pointers are
followed, and a loop is an error.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from hoist.checkpoints import DownloadedCheckpoint, fetch_checkpoint
from hoist.errors import (
    CheckpointError,
    ConfigurationError,
    ObjectNotFoundError,
)
from hoist.keys import FleetKeys
from hoist.protocol.manifest import is_manifest
from hoist.protocol.pointers import POINTER_SUFFIX, PointerError, read_pointer
from hoist.settings import CommandSettings
from hoist.stores.base import ObjectStat, ObjectStore
from hoist.stores.checksum import ALGORITHM, Checksum, Progress
from hoist.stores.spec import store_class
from hoist.stores.uri import parse_store_uri, store_from_uri

if TYPE_CHECKING:  # the records (and redis) are imported only to look a run up
    from hoist.state.records import Records

MAX_HOPS = 8
STORE_URI_ENV = "HOIST_STORE_URI"


@dataclass(frozen=True)
class Resolved:
    """An object found and ready to download.

    Parameters:
        store: the store holding it.
        object_name: its name there, after following pointers.
        size: its size in bytes.
        hops: each pointer followed, as ``(pointer object, the name it holds)``.
        owned: the store was built here and is closed after the download.
        checksum: the CRC64NVME the download must have: the run's record of
            the upload, else what the store reports; None where neither says.
    """

    store: ObjectStore
    object_name: str
    size: int
    hops: tuple[tuple[str, str], ...] = ()
    owned: bool = True
    checksum: Checksum | None = None

    @property
    def uri(self) -> str:
        return self.store.get_uri(self.object_name)

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.owned:  # a store the caller passed in stays open
            self.store.close()


@dataclass(frozen=True)
class Downloaded:
    """A finished download.

    Parameters:
        uri: the object downloaded (after following pointers).
        object_name: its name in its store.
        path: the local file written.
        size: bytes written.
        checksum: CRC64NVME of the bytes written.
        hops: each pointer followed, as ``(pointer object, the name it holds)``.
    """

    uri: str
    object_name: str
    path: str
    size: int
    checksum: Checksum
    hops: tuple[tuple[str, str], ...] = ()


def download_artifact(
    source: str,
    dest: str | os.PathLike[str],
    *,
    run: str | None = None,
    store: str | ObjectStore | None = None,
    records: Records | None = None,
    state_url: str | None = None,
    fleet_key: str | FleetKeys | None = None,
    progress: Progress | None = None,
    durable: bool = False,
) -> Downloaded:
    """Download ``source`` to ``dest``, following pointers; atomic, and verified on the way.

    S3 objects come as parallel ranged GETs. The bytes must have the size the store reports
    and the CRC64NVME of the run's record (``run``) or the store, else
    :class:`~hoist.errors.ChecksumMismatchError` is raised and ``dest`` is not written.

    Parameters:
        source: an object name in ``store``, an object URI, or with ``run`` a
            name the run logged (see the module docs).
        dest: a file path, or an existing directory (or a path ending in
            ``/``) to download into under the base name asked for (a pointer's
            own name, not its target's), with the mode the umask gives.
        run: look ``source`` up in this run's records.
        store: the store ``source`` is in: a URI or an :class:`ObjectStore`
            (default ``HOIST_STORE_URI``). Ignored with ``run``.
        records: the records to look ``run`` up in (default: from ``state_url``).
        state_url: the Redis holding the records, for ``run`` without
            ``records`` (default ``HOIST_STATE_URL``, else ``HOIST_BROKER_URL``).
        fleet_key: opens sealed store credentials of the run's records
            (default ``HOIST_FLEET_KEY``).
        progress: called with the number of bytes of each chunk written.
        durable: fsync the file and its directory (see ``ObjectStore.download_file``).

    Example (tested in tests/test_cli_ops.py, against a cluster and a store):
        >>> hoist.download_artifact("latest-rank0.pt", "ckpt/", run="bert-3").path  # doctest: +SKIP
        'ckpt/latest-rank0.pt'
        >>> got = hoist.download_artifact("s3://ckpts/bert-3/ep1.pt", "/tmp/")  # doctest: +SKIP
        >>> got.path, got.size  # doctest: +SKIP
        ('/tmp/ep1.pt', 1073741824)
    """
    resolved = resolve(
        source, run=run, store=store, records=records, state_url=state_url, fleet_key=fleet_key
    )
    return fetch(resolved, dest, progress=progress, durable=durable)


def download_checkpoint(
    source: str,
    dest: str | os.PathLike[str],
    *,
    run: str | None = None,
    store: str | ObjectStore | None = None,
    records: Records | None = None,
    state_url: str | None = None,
    fleet_key: str | FleetKeys | None = None,
    durable: bool = False,
) -> DownloadedCheckpoint:
    """Download a committed sharded checkpoint into the directory ``dest``.

    ``source`` is found as for :func:`download_artifact`; it must resolve to a
    checkpoint's manifest, which is what a run's ``latest`` pointer names
    (see :mod:`hoist.checkpoints`). With ``run``, ``source`` may be the
    pointer's name as given to ``log_checkpoint_dir`` (``"latest"``): its
    commits are recorded under it. Every file is checked against the manifest;
    files are fetched in parallel, and in parallel ranges on S3. ``durable``
    fsyncs each file and its directory.

    Example (tested in tests/test_cli_small.py):
        >>> got = hoist.download_checkpoint("latest", "/tmp/resume", run="bert-3")  # doctest: +SKIP
        >>> got.manifest.step  # doctest: +SKIP
        1200
    """
    with resolve(
        source, run=run, store=store, records=records, state_url=state_url, fleet_key=fleet_key
    ) as found:
        if not is_manifest(found.object_name):
            raise CheckpointError(
                f"{source} resolves to {found.uri}, not a checkpoint committed by "
                "log_checkpoint_dir; download it with download_artifact"
            )
        return fetch_checkpoint(found.store, found.object_name, os.fspath(dest), durable)


def resolve(
    source: str,
    *,
    run: str | None = None,
    store: str | ObjectStore | None = None,
    records: Records | None = None,
    state_url: str | None = None,
    fleet_key: str | FleetKeys | None = None,
) -> Resolved:
    """Find the object ``source`` names, following pointers; see :func:`download_artifact`.

    Example:
        >>> resolve("latest.pt", run="bert-3").hops  # doctest: +SKIP
        (('bert-3/latest.pt.symlink', 'bert-3/ep2.pt'),)
    """
    guessed_root = False
    recorded: dict[str, Checksum] = {}
    if run is not None:
        # Imported here: redis and the records cost a resume 0.1 s of start-up.
        from hoist.run_lookup import in_run

        found, name, owned, recorded = in_run(source, run, records, state_url, fleet_key)
    elif "://" in source:
        found, name, owned, guessed_root = _from_uri(source, store)
    else:
        found, owned = _store(store, source)
        name = source
    try:
        target, hops, stat = follow_pointers(found, name, guessed_root)
    except BaseException:
        if owned:
            found.close()
        raise
    reported = stat.checksum if stat.checksum and stat.checksum.algorithm == ALGORITHM else None
    return Resolved(found, target, stat.size, hops, owned, recorded.get(target, reported))


def fetch(
    resolved: Resolved,
    dest: str | os.PathLike[str],
    progress: Progress | None = None,
    durable: bool = False,
) -> Downloaded:
    """Download a :class:`Resolved` object to ``dest`` (a file, or a directory to put it in).

    Example:
        >>> found = resolve("bert-3/ep2.pt", store="file:///srv/store")  # doctest: +SKIP
        >>> fetch(found, "/tmp/").path  # doctest: +SKIP
        '/tmp/ep2.pt'
    """
    path = destination(dest, asked_name(resolved))
    expected = ObjectStat(resolved.object_name, resolved.size, resolved.checksum)
    with resolved:
        held = resolved.store.download_file(
            resolved.object_name, path, progress=progress, expected=expected, durable=durable
        )
    assert held.checksum is not None  # download_file always hashes what it writes
    # The store writes through a private temporary file (0600); the download is
    # the user's file, so it gets the mode a file they create would get.
    os.chmod(path, 0o666 & ~_umask())
    return Downloaded(
        resolved.uri, resolved.object_name, path, held.size, held.checksum, resolved.hops
    )


def follow_pointers(
    store: ObjectStore, name: str, guessed_root: bool = False
) -> tuple[str, tuple[tuple[str, str], ...], ObjectStat]:
    """The object ``name`` resolves to, the pointers followed, and the object's stat.

    Example:
        >>> follow_pointers(store, "bert-3/latest.pt")[0]  # doctest: +SKIP
        'bert-3/ep2.pt'
    """
    hops: list[tuple[str, str]] = []
    seen: set[str] = set()
    current = name
    while True:
        if not current.endswith(POINTER_SUFFIX):
            held = _stat_or_none(store, current)
            if held is not None:
                return current, tuple(hops), held
            if _stat_or_none(store, current + POINTER_SUFFIX) is None:
                raise _not_found(store, current, hops, guessed_root)
            current += POINTER_SUFFIX
        if current in seen:
            chain = " -> ".join([*(pointer for pointer, _ in hops), current])
            raise PointerError(f"the pointers form a loop: {chain}; rewrite one of them")
        if len(hops) >= MAX_HOPS:
            raise PointerError(
                f"{name} goes through more than {MAX_HOPS} pointers; point it nearer its target"
            )
        seen.add(current)
        target = read_pointer(store, current)
        hops.append((current, target))
        current = target


def asked_name(resolved: Resolved) -> str:
    """The object name that was asked for: the first pointer's, without ``.symlink``.

    A download into a directory is named after it, so ``latest-rank0.pt``
    lands as ``latest-rank0.pt`` whichever step it points to today.

    Example:
        >>> asked_name(resolve("bert-3/latest.pt", store="file:///srv"))  # doctest: +SKIP
        'bert-3/latest.pt'
    """
    if not resolved.hops:
        return resolved.object_name
    return resolved.hops[0][0].removesuffix(POINTER_SUFFIX)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def destination(dest: str | os.PathLike[str], object_name: str) -> str:
    """``dest``, or ``dest/<base name of the object>`` when ``dest`` is a directory.

    Example:
        >>> destination("/tmp", "bert-3/ep2.pt")
        '/tmp/ep2.pt'
    """
    path = os.fspath(dest)
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        return os.path.join(path, posixpath.basename(object_name))
    return path


# ----- finding the store ---------------------------------------------------------------------


def _store(store: str | ObjectStore | None, source: str) -> tuple[ObjectStore, bool]:
    """The store ``store`` or ``HOIST_STORE_URI`` names, and whether it was built here."""
    if isinstance(store, ObjectStore):
        return store, False
    uri = store or _configured_store()
    if not uri:
        raise ConfigurationError(
            f"say which store holds {source!r}: give a store URI (--store, or store= in "
            f"Python; e.g. s3://bucket or file:///dir), set {STORE_URI_ENV}, or look it up "
            "in a run's records with --run"
        )
    return store_from_uri(uri, _environment().sftp_password), True


def _from_uri(source: str, store: str | ObjectStore | None) -> tuple[ObjectStore, str, bool, bool]:
    """Store, object name, owned, and whether the store root was guessed from the URI."""
    configured = store if store is not None else _configured_store()
    if configured is not None:
        found, owned = _store(configured, source)
        name = _inside(source, found, configured if isinstance(configured, str) else None)
        if name is not None:
            return found, name, owned, False
        if owned:
            found.close()
    found, name = _natural_root(source)
    return found, name, True, True


def _inside(source: str, store: ObjectStore, store_uri: str | None) -> str | None:
    """The object name of ``source`` in ``store``, or None when it lies outside it."""
    wanted = source.split("?", 1)[0]
    prefixes = [store.get_uri("x")[:-1]]
    if store_uri:
        prefixes.append(store_uri.split("?", 1)[0].rstrip("/") + "/")
    for prefix in prefixes:
        if wanted.startswith(prefix) and len(wanted) > len(prefix):
            return unquote(wanted[len(prefix) :])
    return None


def _natural_root(source: str) -> tuple[ObjectStore, str]:
    """For a URI outside the configured store: the bucket's or the server's root."""
    scheme = urlsplit(source).scheme
    if scheme not in ("s3", "sftp"):
        raise ConfigurationError(
            f"{source} is not inside the store given by --store or {STORE_URI_ENV}; pass the "
            "URI of the store it is in (for a local store, file:///DIR of its directory)"
        )
    kind, kwargs = parse_store_uri(source, _environment().sftp_password)
    if kind == "s3":
        # parse_store_uri reads the path as a store's prefix and ends it in "/";
        # here it is one object's key, so that "/" is not part of it.
        name, kwargs["prefix"] = kwargs.get("prefix", ""), ""
        if not urlsplit(source).path.endswith("/"):
            name = name.removesuffix("/")
    else:
        path = kwargs.pop("cwd", "") or ""
        if path.startswith("/~/"):  # home-relative, as SFTP URIs write it
            name = path[3:]
        else:
            name, kwargs["cwd"] = path.lstrip("/"), "/"
    if not name:
        raise ConfigurationError(f"{source} names no object; add its key or path")
    return store_class(kind)(**kwargs), name


# ----- the library's defaults from the environment ---------------------------------------------
# The CLI resolves these itself and passes them in; a Python caller that gives
# no store or records gets what the environment names, as documented above.


def _environment() -> CommandSettings:
    return CommandSettings.from_environment()


def _configured_store() -> str | None:
    """``HOIST_STORE_URI``, or None."""
    return _environment().store_uri


def _stat_or_none(store: ObjectStore, name: str) -> ObjectStat | None:
    try:
        return store.stat(name)
    except ObjectNotFoundError:
        return None


def _not_found(
    store: ObjectStore, name: str, hops: list[tuple[str, str]], guessed_root: bool
) -> ObjectNotFoundError:
    what = f"{store.get_uri(name)} does not exist (nor {name}{POINTER_SUFFIX})"
    if hops and guessed_root:
        return ObjectNotFoundError(
            f"the pointer {hops[-1][0]} names {name}, but {what}: pointers name objects "
            "relative to the store they were written to; pass that store's URI as --store"
        )
    if hops:
        return ObjectNotFoundError(f"the pointer {hops[-1][0]} names {name}, but {what}")
    return ObjectNotFoundError(f"{what}; check the name, or `hoist status` for the run")
