"""What an upload leaves behind when its worker dies mid-way, found and removed (``hoist gc``).

An S3 multipart upload that is never completed or aborted keeps its parts,
billed, and invisible to a listing of objects, until a bucket lifecycle rule
removes it. An SFTP upload is written under a temporary name
(:func:`hoist.stores.names.temporary_name`) and renamed when verified; a
worker killed before the rename leaves that file. Both are safe to remove
once old enough: no live upload lasts hours, and a worker that comes back
starts a new multipart upload or temporary file rather than resume one.

The stores call these (``ObjectStore.leftovers`` and ``ObjectStore.discard``);
``hoist gc --incomplete`` prints what they find and removes it.
"""

from __future__ import annotations

import posixpath
import re
import stat as stat_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MULTIPART = "multipart upload"
TEMPORARY = "temporary file"

TEMPORARY_NAME = re.compile(r"\.hoist-tmp-[0-9a-f]{12}-")
"""How :func:`hoist.stores.names.temporary_name` begins a file name."""


@dataclass(frozen=True)
class Leftover:
    """An upload that never finished.

    Parameters:
        uri: where it is (the object it was to become, for a multipart upload).
        kind: :data:`MULTIPART` or :data:`TEMPORARY`.
        started_at: when it began, seconds since the epoch.
        size: bytes it holds (a multipart upload's parts so far).
        handle: what removes it: the upload id, or the temporary file's path.
        key: the S3 key of a multipart upload ("" for a file).
    """

    uri: str
    kind: str
    started_at: float
    size: int
    handle: str
    key: str = ""


def s3_multipart_uploads(client: Any, bucket: str, prefix: str, before: float) -> list[Leftover]:
    """Multipart uploads under ``prefix`` begun before ``before``, with their parts' bytes."""
    found = []
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        for upload in page.get("Uploads", []):
            started = upload["Initiated"].timestamp()
            if started >= before:
                continue
            key, upload_id = upload["Key"], upload["UploadId"]
            parts = client.get_paginator("list_parts").paginate(
                Bucket=bucket, Key=key, UploadId=upload_id
            )
            size = sum(part["Size"] for page in parts for part in page.get("Parts", []))
            found.append(Leftover(f"s3://{bucket}/{key}", MULTIPART, started, size, upload_id, key))
    return found


def sftp_temporary_files(
    sftp: Any, root: str, uri_of: Callable[[str], str], before: float
) -> list[Leftover]:
    """Temporary upload files below ``root`` last written before ``before``.

    Parameters:
        sftp: a paramiko ``SFTPClient``.
        root: the store's working directory on the server.
        uri_of: the store's URI of an object name (a path relative to ``root``).
        before: seconds since the epoch.
    """
    found = []
    pending = [""]
    while pending:
        relative = pending.pop()
        for entry in sftp.listdir_attr(posixpath.join(root, relative) if relative else root):
            name = posixpath.join(relative, entry.filename) if relative else entry.filename
            mode = entry.st_mode or 0
            if stat_module.S_ISDIR(mode):
                pending.append(name)
            elif (
                stat_module.S_ISREG(mode)
                and TEMPORARY_NAME.match(entry.filename)
                and (entry.st_mtime or 0) < before
            ):
                path = posixpath.join(root, name)
                found.append(
                    Leftover(uri_of(name), TEMPORARY, entry.st_mtime or 0, entry.st_size or 0, path)
                )
    return found
