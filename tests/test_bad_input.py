"""Bad and hostile input: names, templates, paths and task messages.

Every input is either accepted and ends up inside the configured prefix (an
object name) or inside the staging root (a staged path), or refused with a
clear error: a ``ValueError`` / ``HoistError`` subclass whose message quotes
the input. Never another exception type, never a read outside the staging
root, never a write outside the prefix.

The pure functions get many hypothesis examples; a smaller set goes end to end
through the real logger and real workers into the Libcloud local store.
Hypothesis runs derandomized (see the profile in ``tests/conftest.py``).
Run with ``-s`` to see how many bad inputs were tried.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoist.errors import ConfigurationError, InvalidObjectNameError, SourceFileError
from hoist.logger.naming import ObjectNameTemplate
from hoist.logger.staging import (
    MAX_STAGED_NAME_BYTES,
    resolve_inside,
    stage_file,
    staged_path,
)
from hoist.stores.base import validate_object_name
from tests.services.bad_input import Tally, names, templates

RANKS = {"rank": 3, "local_rank": 1, "world_size": 8, "local_world_size": 4, "node_rank": 1}
PREFIX = "prefix"
TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def report_tally() -> Iterator[None]:
    yield
    print(f"\n{TALLY.report()}")


def quotes(message: str, *values: str) -> bool:
    """Whether an error message quotes one of ``values`` as Python shows it."""
    return any(repr(value) in message for value in values)


def assert_object_name_inside(name: str, prefix: str) -> None:
    """An accepted object name: a plain UTF-8 key strictly inside ``prefix/``."""
    assert isinstance(name, str)
    name.encode("utf-8")  # every store's keys are UTF-8
    assert "\0" not in name
    assert not name.startswith("/")
    segments = name.split("/")
    assert ".." not in segments
    assert name.startswith(prefix + "/"), name
    assert posixpath.normpath(name).startswith(prefix + "/"), name
    assert validate_object_name(name) == name


# --------------------------------------------------------------------------- object names


@settings(max_examples=400)
@given(artifact_name=names, run_name=names)
def test_artifact_and_run_names_land_inside_the_prefix_or_are_refused(
    artifact_name: str, run_name: str
) -> None:
    TALLY.add("hypothesis: artifact/run names")
    template = ObjectNameTemplate(PREFIX + "/{run_name}/rank{rank}/{artifact_name}")
    try:
        name = template.format(artifact_name=artifact_name, run_name=run_name, **RANKS)
    except ConfigurationError as exc:
        assert quotes(str(exc), artifact_name, run_name), str(exc)
        return
    assert_object_name_inside(name, PREFIX)


@settings(max_examples=400)
@given(template=templates, artifact_name=st.one_of(st.just("ep1.pt"), names))
def test_templates_are_refused_clearly_or_name_inside_their_prefix(
    template: str, artifact_name: str
) -> None:
    TALLY.add("hypothesis: object_name templates")
    text = PREFIX + "/" + template
    try:
        compiled = ObjectNameTemplate(text)
    except ConfigurationError as exc:
        assert quotes(str(exc), text), str(exc)
        return
    try:
        name = compiled.format(artifact_name=artifact_name, run_name="run", **RANKS)
    except ConfigurationError as exc:
        assert quotes(str(exc), artifact_name, text), str(exc)
        return
    assert_object_name_inside(name, PREFIX)


@pytest.mark.parametrize(
    "template",
    [
        "{rank.__class__}/{artifact_name}",
        "{rank.__class__.__mro__}/{artifact_name}",
        "{0}/{artifact_name}",
        "{}/{artifact_name}",
        "{artifact_name[0]}",
        "{artifact_name",
        "{artifact_name}}",
        "{artifact_name!x}",
        "{artifact_name:{rank.__class__}}",
        "{rank:03d}",
        "{os}/{artifact_name}",
    ],
)
def test_format_string_tricks_are_refused_when_the_logger_is_built(template: str) -> None:
    TALLY.add("explicit: templates")
    with pytest.raises(ConfigurationError) as caught:
        ObjectNameTemplate(template)
    assert repr(template) in str(caught.value)


def test_conversion_with_nested_spec_is_harmless() -> None:
    TALLY.add("explicit: templates")
    template = ObjectNameTemplate("{rank!r:>{world_size}}/{artifact_name}")
    assert template.format(artifact_name="a", run_name="r", **RANKS) == "       3/a"


@settings(max_examples=400)
@given(name=names)
def test_validate_object_name_keeps_names_inside_a_directory(name: str) -> None:
    TALLY.add("hypothesis: object names")
    try:
        result = validate_object_name(name)
    except InvalidObjectNameError as exc:
        assert quotes(str(exc), name), str(exc)
        return
    root = "/srv/store/container"
    joined = os.path.normpath(os.path.join(root, result))
    assert joined.startswith(root + "/") or joined == root, (name, joined)
    assert "\0" not in result and not result.startswith("/")
    result.encode("utf-8")


# --------------------------------------------------------------------------- staging


@pytest.fixture(scope="module")
def staging_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A staging root with symlinks that point outside it, and a secret beside it."""
    base = tmp_path_factory.mktemp("bad-input-staging")
    root = base / "staging"
    (root / "run" / "rank0").mkdir(parents=True)
    (root / "run" / "rank0" / "00000001-a").write_bytes(b"staged")
    secret = base / "secret"
    secret.write_bytes(b"secret")
    (root / "link-out").symlink_to(secret)
    (root / "run" / "dir-out").symlink_to(base)
    (root / "run" / "link-in").symlink_to(root / "run" / "rank0" / "00000001-a")
    return root, base


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(artifact_name=names, run_name=names, seq=st.integers(0, 10**9))
def test_staged_files_land_inside_the_staging_root_or_are_refused(
    artifact_name: str,
    run_name: str,
    seq: int,
    staging_tree: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    TALLY.add("hypothesis: staged paths")
    root, base = staging_tree
    try:
        path = staged_path(str(root), run_name, 0, seq, artifact_name)
    except ConfigurationError as exc:
        assert quotes(str(exc), artifact_name, run_name), str(exc)
        return
    assert os.path.dirname(path) == os.path.join(str(root), run_name, "rank0")
    assert len(os.fsencode(os.path.basename(path))) <= MAX_STAGED_NAME_BYTES
    source = base / "source"
    source.write_bytes(b"payload")
    staged = stage_file(str(source), path)
    # The worker's check agrees: the staged file is inside the root, and it is the file.
    resolved = resolve_inside(str(root), staged.path)
    assert os.path.commonpath([str(root), resolved]) == str(root)
    assert Path(resolved).read_bytes() == b"payload"
    os.unlink(resolved)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=names, absolute=st.booleans())
def test_resolve_inside_never_leaves_the_staging_root(
    path: str, absolute: bool, staging_tree: tuple[Path, Path]
) -> None:
    TALLY.add("hypothesis: worker paths")
    root, _base = staging_tree
    candidate = str(root) + "/" + path if absolute else path
    try:
        resolved = resolve_inside(str(root), candidate)
    except SourceFileError as exc:
        assert "refusing to read" in str(exc) and quotes(str(exc), candidate), str(exc)
        return
    real_root = os.path.realpath(root)
    assert resolved != real_root
    assert os.path.commonpath([real_root, resolved]) == real_root
