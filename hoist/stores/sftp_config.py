"""How the SFTP store reads its arguments: the forms of ``cwd``, key file names."""

from __future__ import annotations

import os
import posixpath


def normalize_cwd(cwd: str | None) -> str | None:
    """None for the login directory; a path relative to it; or an absolute path.

    ``~/dir`` and the URI form ``/~/dir`` (what :meth:`SFTPObjectStore.get_uri`
    writes) are relative: SFTP resolves relative paths from the login directory.

    Example:
        >>> normalize_cwd("/~/runs"), normalize_cwd("/srv/ckpts/"), normalize_cwd("~")
        ('runs', '/srv/ckpts', None)
    """
    if cwd is None:
        return None
    for home in ("/~", "~"):
        if cwd == home or cwd.startswith(home + "/"):
            cwd = cwd[len(home) :].lstrip("/")
            break
    cwd = posixpath.normpath(cwd) if cwd else "."
    return None if cwd == "." else cwd


def expand_all(key_filename: str | list[str] | None) -> list[str]:
    if key_filename is None:
        return []
    names = [key_filename] if isinstance(key_filename, str) else list(key_filename)
    return [os.path.expanduser(name) for name in names]
