"""Ports and probes for the local cluster: what is free, where a server is reached, who answers.

``hoist up`` chooses Redis's port and checks Flower's with these, and waits
for each server until it answers.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import redis

from hoist.protocol.redis_url import redis_client

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def probe_host(address: str) -> str:
    """Where to reach a server listening on ``address`` from this machine.

    Example:
        >>> probe_host("0.0.0.0"), probe_host("::"), probe_host("10.0.0.7")
        ('127.0.0.1', '::1', '10.0.0.7')
    """
    if address in ("", "0.0.0.0"):
        return LOOPBACK
    if address == "::":
        return "::1"
    return address


def http_url(host: str, port: int) -> str:
    """The ``http://`` URL of ``host:port``, with an IPv6 address in brackets.

    Example:
        >>> http_url("127.0.0.1", 5555), http_url("::1", 5555)
        ('http://127.0.0.1:5555', 'http://[::1]:5555')
    """
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def pings(url: str) -> bool:
    """Whether the Redis at ``url`` (any hoist Redis URL) answers a PING within half a second."""
    try:
        return bool(redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within half a second (Flower's ``/healthcheck``)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False
