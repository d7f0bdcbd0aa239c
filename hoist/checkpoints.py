"""Sharded checkpoints: every rank's files of one step, committed together.

A sharded checkpoint (what ``torch.distributed.checkpoint`` writes: a
directory per step with files from every rank plus metadata) is only usable
whole. :meth:`hoist.ObjectStoreLogger.log_checkpoint_dir` uploads a rank's
files of a step and registers them; the rank that completes the step's
registration sends one *commit*. The commit waits until every registered
file is uploaded and verified, writes the step's manifest
(``<step dir>/.hoist-manifest.json``: every file's object name, size and
CRC64NVME), then moves the run-wide pointer (``latest.symlink``) to the
manifest, never to an older step than the one it names. A step with a
failed file is never pointed to.

The manifest is also how a checkpoint is read back: :func:`download_checkpoint`
(:mod:`hoist.download`) follows the pointer to it and fetches every file it lists, checking each.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hoist.errors import CheckpointError, ChecksumMismatchError
from hoist.protocol.manifest import Manifest, ManifestFile, relative_inside
from hoist.stores.base import ObjectStat, ObjectStore
from hoist.stores.checksum import Checksum


@dataclass(frozen=True)
class DownloadedCheckpoint:
    """A checkpoint fetched from the store.

    Parameters:
        manifest: what it holds.
        path: the local directory holding its files.
    """

    manifest: Manifest
    path: str


FILES_IN_FLIGHT = 8
"""Files of a step fetched at once. The store bounds the connections (an S3
store's ``max_concurrency`` part GETs, shared by all of them); several files in
flight keep those busy when files are smaller than a part each."""


def fetch_checkpoint(
    store: ObjectStore, manifest_name: str, dest: str, durable: bool = False
) -> DownloadedCheckpoint:
    """Fetch every file a manifest lists into ``dest``, in parallel, checking each against it.

    Each file is checked while it streams (size and CRC64NVME against the
    manifest) and written atomically (temporary name, then rename), so a
    file that does not match, or an interrupted download, never leaves a
    file under its real name. Files are fetched several at a time (in
    parallel within each file too, on S3) where the store is thread-safe.

    Parameters:
        store: the store holding the checkpoint.
        manifest_name: the manifest's object name (what ``latest.symlink`` holds).
        dest: the directory to fill; created if missing.
        durable: fsync each file and its directory (off: a download can be fetched again).

    Raises:
        CheckpointError: a file does not match the manifest.

    Example (tested through download_checkpoint in tests/test_checkpoints.py):
        >>> manifest = "bert-3/checkpoints/step-00000100/.hoist-manifest.json"
        >>> fetch_checkpoint(store, manifest, "/tmp/resume").manifest.step  # doctest: +SKIP
        100
    """
    manifest = Manifest.from_bytes(store.get_bytes(manifest_name))
    os.makedirs(dest, exist_ok=True)
    paths = []
    for item in manifest.files:
        path = os.path.join(dest, *item.path.split("/"))
        relative_inside(dest, path)  # a hostile manifest cannot write outside dest
        os.makedirs(os.path.dirname(path), exist_ok=True)
        paths.append(path)

    def fetch_one(item: ManifestFile, path: str) -> None:
        expected = ObjectStat(item.object_name, item.size, Checksum.parse(item.checksum))
        try:
            store.download_file(item.object_name, path, expected=expected, durable=durable)
        except ChecksumMismatchError as exc:
            raise CheckpointError(
                f"{store.get_uri(item.object_name)} does not match the manifest of step "
                f"{manifest.step}, so {path} was not written: {exc}; the checkpoint was changed "
                "after it was committed, or its bytes were corrupted on the way"
            ) from exc

    workers = min(FILES_IN_FLIGHT, len(paths)) if store.thread_safe else 1
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="hoist-ckpt") as pool:
        futures = [
            pool.submit(fetch_one, item, path)
            for item, path in zip(manifest.files, paths, strict=True)
        ]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # the first error is the answer: start no other file
                future.cancel()
            raise
    return DownloadedCheckpoint(manifest, dest)
