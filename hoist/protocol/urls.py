"""URLs as they may be shown: never with a password in them."""

from __future__ import annotations

from urllib.parse import urlsplit


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****``.

    Example:
        >>> mask_url("redis://:s3cret@127.0.0.1:6379/0")
        'redis://:****@127.0.0.1:6379/0'
        >>> mask_url("redis://127.0.0.1:6379/0")
        'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:****@{host}").geturl()
