"""The shape of the code, checked: layers one way, settings read at the edge, small modules.

These read the source (import-linter's graph, Python's own parser) or
import it in a fresh interpreter; none starts a server.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoist.settings import VARIABLES, settings_table

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "hoist"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 500

# Where the environment may be read: the settings model and the CLI, the two
# edges. Launchers' own variables (RANK, SLURM_PROCID...) are not HOIST_*.
ENVIRONMENT_EDGES = ("settings.py", "cli.py", "commands/")

# Imports inside functions are for heavy or optional dependencies only: a
# rank that never uploads to S3 does not pay for boto3's import.
HEAVY = {
    "boto3", "botocore", "awscrt", "s3transfer", "paramiko", "libcloud", "torch",
    "transformers", "composer", "lightning", "flower", "tornado", "playwright",
}  # fmt: skip
# hoist's own modules that import one of those at their top, loaded only when used; and
# those that import redis, which a download by URI (a resume) never needs (0.1 s of start-up).
HEAVY_INSIDE = {
    "hoist.stores.s3", "hoist.stores.sftp", "hoist.stores.libcloud",
    "hoist.run_lookup", "hoist.commands.cluster_access",
}  # fmt: skip


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_layers_run_one_way() -> None:
    """pyproject.toml's import-linter contracts hold (a back-edge names its import)."""
    linter = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_module_is_over_500_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative(path)} has {lines} lines; split it along its concepts"


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that touch ``os.environ`` or ``os.getenv``."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            found.append(node.lineno)
    return found


def test_only_the_edges_read_hoist_variables() -> None:
    """Nothing reads a ``HOIST_*`` variable outside hoist.settings and the CLI."""
    offenders = []
    for path in MODULES:
        name = relative(path)
        if name.startswith(ENVIRONMENT_EDGES):
            continue
        source = path.read_text()
        lines = source.splitlines()
        for line in _environment_reads(ast.parse(source)):
            text = lines[line - 1]
            if "HOIST_" in text or "_ENV" in text:
                offenders.append(f"{name}:{line}: {text.strip()}")
    assert not offenders, "read through hoist.settings instead:\n" + "\n".join(offenders)


def test_no_module_reads_the_environment_when_imported() -> None:
    """Every module imports with every ``HOIST_*`` variable set to nonsense."""
    names = sorted(
        ".".join(("hoist", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for path in MODULES
    )
    env = {**os.environ, **{variable.name: "not-a-value" for variable in VARIABLES}}
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    run = subprocess.run(
        [sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_a_download_by_uri_never_imports_redis() -> None:
    """A restarted job's ranks each pay the start-up of ``hoist download`` or
    ``download_checkpoint``: redis and the records are imported only for ``--run``."""
    code = (
        "import sys\nimport hoist.cli, hoist.commands.download, hoist.download, hoist.stores.s3\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'"
        " or m.startswith('hoist.state')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "[]", run.stdout


ENVIRONMENT_WRITERS = ("workers/envfile.py", "workers/flower.py")
"""They write the environment (``<home>/env``, Flower's login), never read a setting."""


def test_only_the_settings_model_and_the_command_line_read_the_environment() -> None:
    """Not only ``HOIST_*``: the launcher's ``RANK`` and ``SLURM_*`` too come through
    ``hoist.settings.environment()``, so a caller's own mapping is never bypassed."""
    offenders = [
        f"{relative(path)}:{line}"
        for path in MODULES
        if not relative(path).startswith(ENVIRONMENT_EDGES + ENVIRONMENT_WRITERS)
        for line in _environment_reads(ast.parse(path.read_text()))
    ]
    assert not offenders, "read through hoist.settings.environment():\n" + "\n".join(offenders)


def _function_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        # A package's PEP 562 __getattr__ imports lazily by design (hoist.ObjectStoreLogger).
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__getattr__":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                    found.append((inner.lineno, inner.module))
    return found


def test_imports_inside_functions_are_for_heavy_dependencies_with_a_reason() -> None:
    offenders = []
    for path in MODULES:
        source = path.read_text()
        lines = source.splitlines()
        for line, module in _function_imports(ast.parse(source)):
            context = " ".join(lines[max(0, line - 3) : line])
            if module.split(".")[0] not in HEAVY and module not in HEAVY_INSIDE:
                offenders.append(f"{relative(path)}:{line}: {module} (import it at the top)")
            elif "#" not in context:
                offenders.append(f"{relative(path)}:{line}: {module} (say why in a comment)")
    assert not offenders, "\n".join(offenders)


def test_the_operations_guide_lists_every_setting() -> None:
    """docs/operations.md's table is the settings model's, row for row."""
    guide = (REPO / "docs" / "operations.md").read_text()
    assert settings_table() in guide, (
        "docs/operations.md's settings table differs from hoist.settings.VARIABLES; paste "
        "the output of `python -c 'from hoist.settings import settings_table as t; print(t())'`"
    )
