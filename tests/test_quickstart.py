"""The README's Quickstart runs as written, and a logger given no store uses ``HOIST_STORE_URI``.

The Quickstart's bash and python blocks are read out of README.md (so the
test runs whatever the README says today) and run, in order, in one new
``bash -c`` in a fresh directory standing for the checkout after the
README's first command: it holds ``.venv`` (the repository's own) and
nothing else, and the environment is a login's, with neither the venv nor
any ``HOIST_*`` variable in it. The blocks start a real embedded cluster
(``hoist up --detach``) there, which the test reads directly and stops. As
the README's command does, its Flower takes port 5555 (as tests/test_cli_demo.py's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hoist.errors import ConfigurationError
from hoist.keys import keys_from, new_fleet_key
from hoist.logger.configuration import LoggerConfiguration, StoreArguments
from hoist.settings import RankSettings
from tests.services.cluster import hoist, pids, running

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
END_OF_RUN = "<!-- tests/test_quickstart.py runs every bash and python block above"
# A fresh login's PATH: no virtual environment on it.
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PYTHON_END = "HOIST_QUICKSTART_PYTHON"


def quickstart_blocks(readme: str) -> list[tuple[str, str]]:
    """The (language, code) of each block the Quickstart runs: those above its marker."""
    section = readme.split("\n## Quickstart\n", 1)[1]
    assert END_OF_RUN in section, "README's Quickstart lost the marker ending what the test runs"
    ran = section.split(END_OF_RUN, 1)[0]
    assert "\n## " not in ran and "\n### " not in ran, "the marker left the Quickstart section"
    blocks = [(language, code) for language, code in FENCE.findall(ran)]
    assert {language for language, _ in blocks} == {"bash", "python"}, blocks
    return blocks


def shell_script(blocks: list[tuple[str, str]]) -> str:
    """One bash script of the blocks, verbatim: python ones fed to ``python`` on stdin."""
    parts = ["set -e"]
    for language, code in blocks:
        assert PYTHON_END not in code
        parts.append(
            code if language == "bash" else f"python - <<'{PYTHON_END}'\n{code}{PYTHON_END}"
        )
    return "\n".join(parts) + "\n"


def test_the_quickstart_runs_as_written_against_the_embedded_cluster(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(REPO / ".venv")  # what the first command made
    login = {"PATH": LOGIN_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # The shell starts without hoist: the README itself must put it on PATH.
    assert shutil.which("hoist", path=LOGIN_PATH) is None
    home = checkout / ".hoist"
    seen: dict[str, int] = {}
    try:
        result = subprocess.run(
            ["bash", "-c", shell_script(quickstart_blocks(README.read_text()))],
            cwd=checkout,
            env=login,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if (home / "cluster.json").exists():
            seen = pids(home)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        # The object and its pointer, read from the embedded store's own directory.
        landed = home / "store" / "artifacts" / "quickstart" / "artifacts"
        assert (landed / "ep1.pt").read_bytes() == (checkout / "ep1.pt").read_bytes()
        assert (landed / "latest.pt.symlink").read_text() == "quickstart/artifacts/ep1.pt"
        assert (checkout / "ep1-back.pt").read_bytes() == (checkout / "ep1.pt").read_bytes()
        assert "landed at local://artifacts/quickstart/artifacts/ep1.pt" in result.stdout
    finally:
        if (home / "env").exists():
            stopped = hoist(home, "down")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        for pid in seen.values():  # whatever `down` missed: its whole group
            if running(pid):
                os.killpg(pid, signal.SIGKILL)
    assert seen and not any(running(pid) for pid in seen.values())


# ------------------------------------------------ the logger's default store


KEYS = keys_from(new_fleet_key())


def resolve(tmp_path: Path, store: StoreArguments, store_uri: str | None) -> LoggerConfiguration:
    """The configuration of a one-process logger with only ``store`` and ``HOIST_STORE_URI``."""
    arguments: dict[str, Any] = {
        "object_name": "{run_name}/{artifact_name}",
        "checkpoint_object_name": "{run_name}/{artifact_name}",
        "upload_staging_folder": None,
        "run_name": "default-store",
        "broker_url": None,
        "state_url": None,
        "ranks": {},
        "fleet_key": None,
        "enqueue_timeout": None,
        "staging": "copy",
        "node_queue": None,
    }
    settings = RankSettings(staging_dir=str(tmp_path / "staging"), keys=KEYS, store_uri=store_uri)
    return LoggerConfiguration.resolve(store, settings=settings, environ={}, **arguments)


def test_a_logger_given_no_store_uploads_to_the_store_of_hoist_store_uri(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/cluster/store/artifacts"
    assert RankSettings.from_environment({"HOIST_STORE_URI": uri}).store_uri == uri
    spec = resolve(tmp_path, StoreArguments(), uri).spec
    assert (spec.kind, spec.kwargs) == (
        "libcloud",
        {
            "provider": "local",
            "container": "artifacts",
            "provider_kwargs": {"key": f"{tmp_path}/cluster/store"},
        },
    )


def test_store_arguments_win_over_hoist_store_uri(tmp_path: Path) -> None:
    given = StoreArguments("local", "mine", {"key": str(tmp_path)})
    spec = resolve(tmp_path, given, f"file://{tmp_path}/cluster/store/artifacts").spec
    assert spec.kwargs["container"] == "mine"


def test_a_logger_with_no_store_and_no_hoist_store_uri_says_how_to_get_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match=r"^the logger has no store: pass one") as caught:
        resolve(tmp_path, StoreArguments(), None)
    assert "set HOIST_STORE_URI" in str(caught.value)
    assert "run `hoist up` and `set -a; . ./.hoist/env; set +a`" in str(caught.value)
