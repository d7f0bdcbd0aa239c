"""The manifest of a sharded checkpoint: every file of one step, with its size and CRC.

The commit writes it as ``<step dir>/.hoist-manifest.json`` once every rank's
files of the step are verified (see :mod:`hoist.checkpoints`).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass

from hoist.errors import CheckpointError, ConfigurationError

MANIFEST_NAME = ".hoist-manifest.json"
MANIFEST_VERSION = 1


def checkpoint_name(step: int) -> str:
    """The default artifact name of a step's directory; sorts by step.

    Example:
        >>> checkpoint_name(1200)
        'checkpoints/step-00001200'
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ConfigurationError(f"step must be a whole number >= 0, not {step!r}")
    return f"checkpoints/step-{step:08d}"


def step_order(step: int) -> str:
    """The order key of a step's commit: pointers move to higher steps only.

    Example:
        >>> step_order(12) < step_order(100)
        True
    """
    return f"step:{step:020d}"


def files_under(root: str) -> list[str]:
    """Every regular file below ``root``, sorted; symlinks are followed, directories walked."""
    if not os.path.isdir(root):
        raise ConfigurationError(f"checkpoint directory {root!r} does not exist or is not one")
    found = [
        os.path.join(directory, name)
        for directory, _, names in os.walk(root, followlinks=False)
        for name in names
        if os.path.isfile(os.path.join(directory, name))
    ]
    if not found:
        raise ConfigurationError(f"checkpoint directory {root!r} holds no files")
    return sorted(found)


def relative_inside(root: str, path: str) -> str:
    """``path`` relative to ``root`` with ``/`` separators; an error if it lies outside.

    Example:
        >>> relative_inside("/ckpt/step-1", "/ckpt/step-1/shards/__0_0.distcp")
        'shards/__0_0.distcp'
    """
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative == "." or relative.startswith(".." + os.sep) or relative == "..":
        raise ConfigurationError(
            f"checkpoint file {path!r} is not inside the checkpoint directory {root!r}"
        )
    return relative.replace(os.sep, "/")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a committed checkpoint.

    Parameters:
        path: its path inside the step directory, ``/``-separated.
        object_name: the object holding it.
        size: bytes.
        checksum: CRC64NVME as ``crc64nvme:<hex>``.
        rank: the rank that logged it.
    """

    path: str
    object_name: str
    size: int
    checksum: str
    rank: int


@dataclass(frozen=True)
class Manifest:
    """What a committed checkpoint holds.

    Parameters:
        run: the run name.
        step: the training step.
        name: the checkpoint's artifact name (its directory).
        prefix: the object name of its directory, without a trailing ``/``.
        world_size: the ranks that contributed files.
        files: every file, in path order.
    """

    run: str
    step: int
    name: str
    prefix: str
    world_size: int
    files: tuple[ManifestFile, ...]

    @property
    def object_name(self) -> str:
        return manifest_object(self.prefix)

    def to_bytes(self) -> bytes:
        data = {"version": MANIFEST_VERSION, **asdict(self)}
        return (json.dumps(data, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.pop("version") != MANIFEST_VERSION:
                raise ValueError("unknown version")
            files = tuple(ManifestFile(**item) for item in data.pop("files"))
            return cls(files=files, **data)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"not a hoist checkpoint manifest: {exc}") from exc


def manifest_object(prefix: str) -> str:
    """The manifest's object name for a step directory's object prefix.

    Example:
        >>> manifest_object("bert-3/checkpoints/step-00000100")
        'bert-3/checkpoints/step-00000100/.hoist-manifest.json'
    """
    return f"{prefix}/{MANIFEST_NAME}"


def is_manifest(object_name: str) -> bool:
    return posixpath.basename(object_name) == MANIFEST_NAME
