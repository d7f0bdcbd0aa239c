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
from dataclasses import dataclass

from hoist.errors import CheckpointError
from hoist.protocol.manifest import Manifest, relative_inside
from hoist.stores.base import ObjectStore


@dataclass(frozen=True)
class DownloadedCheckpoint:
    """A checkpoint fetched from the store.

    Parameters:
        manifest: what it holds.
        path: the local directory holding its files.
    """

    manifest: Manifest
    path: str


def fetch_checkpoint(store: ObjectStore, manifest_name: str, dest: str) -> DownloadedCheckpoint:
    """Fetch every file a manifest lists into ``dest``, checking each file's size and CRC.

    Each file is written atomically (temporary name, then rename), so an
    interrupted download never leaves a half file under its real name.

    Parameters:
        store: the store holding the checkpoint.
        manifest_name: the manifest's object name (what ``latest.symlink`` holds).
        dest: the directory to fill; created if missing.

    Raises:
        CheckpointError: a file does not match the manifest.

    Example (tested through download_checkpoint in tests/test_checkpoints.py):
        >>> manifest = "bert-3/checkpoints/step-00000100/.hoist-manifest.json"
        >>> fetch_checkpoint(store, manifest, "/tmp/resume").manifest.step  # doctest: +SKIP
        100
    """
    manifest = Manifest.from_bytes(store.get_bytes(manifest_name))
    os.makedirs(dest, exist_ok=True)
    for item in manifest.files:
        path = os.path.join(dest, *item.path.split("/"))
        relative_inside(dest, path)  # a hostile manifest cannot write outside dest
        os.makedirs(os.path.dirname(path), exist_ok=True)
        held = store.download_file(item.object_name, path)
        if held.size != item.size or str(held.checksum) != item.checksum:
            raise CheckpointError(
                f"{store.get_uri(item.object_name)} holds {held.size} bytes with {held.checksum}, "
                f"but the manifest of step {manifest.step} says {item.size} bytes with "
                f"{item.checksum}; the checkpoint was changed after it was committed"
            )
    return DownloadedCheckpoint(manifest, dest)
