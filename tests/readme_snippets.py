"""README.md's integration snippets, as tests run them: found by heading, run as a reader would.

Each integration section of README.md (Composer, Hugging Face, PyTorch
Lightning, torch DCP) has one python code block; its test takes it from
here, so the README cannot drift from what runs. :func:`run` executes a
snippet against a loopback fleet and a Libcloud ``local`` store named by
``HOIST_*``, as a reader's shell would name them; :func:`calls_of` lists the
calls a snippet makes, for a snippet that cannot run here (Composer's needs
the compat venv's torch) to be checked against the signatures it names.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services.workers import WorkerFleet

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(heading: str, text: str | None = None) -> str | None:
    """The first python code block below ``heading`` (a whole line of README.md, e.g.
    ``"### PyTorch Lightning"``) and before the next heading, or None."""
    _, found, rest = (README.read_text() if text is None else text).partition(heading + "\n")
    if not found:
        return None
    code: list[str] | None = None
    for line in rest.splitlines(keepends=True):
        if code is not None:  # inside the block: a "# comment" is python, not a heading
            if line.startswith("```"):
                return "".join(code)
            code.append(line)
        elif line.startswith("```python"):
            code = []
        elif line.startswith("#"):
            return None  # the next section: this one has no snippet
    return None


def required(heading: str) -> str:
    """The snippet below ``heading``; the test fails (not skips) when README.md lost it."""
    code = snippet(heading)
    assert code is not None, f"README.md has no {heading!r} section with a python snippet"
    return code


def run(
    code: str,
    fleet: WorkerFleet,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    objects: Path | None = None,
) -> dict[str, Any]:
    """Run ``code`` in ``folder`` with the fleet and the Libcloud ``local`` store's container
    folder ``objects`` (default ``folder/store/artifacts``, made if missing) named by
    ``HOIST_*``; returns the snippet's globals."""
    objects = objects or folder / "store" / "artifacts"
    objects.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HOIST_BROKER_URL", fleet.broker_url)
    monkeypatch.setenv("HOIST_STAGING_DIR", str(fleet.staging_root))
    monkeypatch.setenv("HOIST_STORE_URI", f"file://{objects}")
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    return namespace


@dataclass(frozen=True)
class Call:
    """A call the snippet makes of a name it imported: ``module.name(**keywords)``."""

    module: str
    name: str
    keywords: tuple[str, ...]
    positional: int
    line: int
    literals: dict[str, Any] | None
    """The keyword values when every argument is a literal (so the call can be made), else None."""


def calls_of(code: str) -> Iterator[Call]:
    """Each call of a name the snippet imports with ``from module import name``."""
    tree = ast.parse(code)
    imported = {
        alias.asname or alias.name: (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id in imported:
            module, name = imported[node.func.id]
            keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
            yield Call(module, name, keywords, len(node.args), node.lineno, _literals(node))


def _literals(node: ast.Call) -> dict[str, Any] | None:
    if node.args or any(k.arg is None for k in node.keywords):
        return None
    try:
        return {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        return None


def check_binds(
    call: Call, target: Callable[..., Any], forwarded: Callable[..., Any] | None = None
) -> None:
    """Fail unless ``target``'s signature takes the call's arguments (a keyword it does
    not take, or one positional too many); a keyword ``target`` only collects in its
    ``**kwargs`` must be one ``forwarded`` (where they go) takes. Values are not checked."""
    signature = inspect.signature(target)
    args = [object()] * call.positional
    try:
        signature.bind_partial(*args, **dict.fromkeys(call.keywords, object()))
        if forwarded is not None:
            named = set(signature.parameters)
            rest = {k: object() for k in call.keywords if k not in named}
            inspect.signature(forwarded).bind_partial(**rest)
    except TypeError as exc:
        pytest.fail(f"README line {call.line}: {call.module}.{call.name}{signature}: {exc}")
