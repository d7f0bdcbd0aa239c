"""Pointers: small objects named ``<name>.symlink`` whose text is another object's name.

Composer calls them symlinks (``symlink_artifact``); in hoist's code and docs
they are pointers. A pointer names its target relative to the store it is
written to, and is written only once that target is verified.
"""

from __future__ import annotations

from hoist.errors import PermanentStoreError
from hoist.stores.base import ObjectStore

POINTER_SUFFIX = ".symlink"
"""What a pointer's object name ends with."""

MAX_POINTER_SIZE = 4096
"""A pointer holds one object name; a larger object is not read as one."""


class PointerError(PermanentStoreError):
    """A ``.symlink`` pointer is empty, too large, part of a loop, or names nothing."""


def read_pointer(store: ObjectStore, name: str) -> str:
    """The object name the pointer ``name`` holds.

    Raises:
        PointerError: the object is too large to be a pointer, or empty.
        ObjectNotFoundError: there is no such object.

    Example:
        >>> read_pointer(store, "bert-3/latest.pt.symlink")  # doctest: +SKIP
        'bert-3/ep2.pt'
    """
    held = store.stat(name)
    if held.size > MAX_POINTER_SIZE:
        raise PointerError(
            f"{store.get_uri(name)} is {held.size} bytes, too large to be a pointer; "
            "download it by its own name"
        )
    target = store.get_bytes(name).decode("utf-8", errors="replace").strip()
    if not target:
        raise PointerError(
            f"the pointer {store.get_uri(name)} is empty; log it again with symlink_artifact"
        )
    return target
