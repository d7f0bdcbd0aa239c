"""Talking to a running Flower and to the broker's event stream from a test."""

from __future__ import annotations

import base64
import contextlib
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.services.process import ServerProcess, free_port, port_open


def flower_get(
    port: int, path: str, auth: tuple[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, str]:
    """GET ``path`` from the Flower on loopback ``port``, logged in as ``auth``: (status, body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def signal_when_consuming(context: Any, listening: threading.Event) -> Any:
    """Wrap an event receiver's consumer context to set ``listening`` once it is subscribed."""

    @contextlib.contextmanager
    def consuming(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with context(*args, **kwargs) as consumer:
            listening.set()
            yield consumer

    return consuming


@contextlib.contextmanager
def flower_server(
    workdir: Path, broker_url: str, login: tuple[str, str], env: dict[str, str] | None = None
) -> Iterator[int]:
    """Run a real ``hoist flower`` on ``broker_url`` with basic auth ``login``; yield its port.

    Its log is ``workdir/flower.log``; ``env`` (``HOIST_FLEET_KEY``...) is added
    to its environment.
    """
    port = free_port()
    extra = {
        "HOIST_HOME": str(workdir / ".hoist"),  # no cluster's env file is read
        "HOIST_FLOWER_USER": login[0],
        "HOIST_FLOWER_PASSWORD": login[1],
        **(env or {}),
    }
    argv = [sys.executable, "-m", "hoist.cli", "flower", "--broker-url", broker_url]
    server = ServerProcess(
        "hoist flower",
        [*argv, "--port", str(port)],
        workdir / "flower.log",
        lambda: port_open(port),
        extra,
    )
    server.start()
    try:
        yield port
    finally:
        server.stop()
