"""URLs as they may be shown: never with a password in them."""

from __future__ import annotations

from urllib.parse import urlsplit


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****``; each part of a ``sentinel://`` list too.

    Example:
        >>> mask_url("redis://:s3cret@127.0.0.1:6379/0")
        'redis://:****@127.0.0.1:6379/0'
        >>> mask_url("redis://127.0.0.1:6379/0")
        'redis://127.0.0.1:6379/0'
        >>> mask_url("sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379/0")
        'sentinel://:****@h1:26379;sentinel://:****@h2:26379/0'
    """
    if ";" in url:  # Celery's list of sentinels, one URL per part
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL one can take apart: show none of what follows ://
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}****" if sep else "****"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:****@{host}").geturl()
