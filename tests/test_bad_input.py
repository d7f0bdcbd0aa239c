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

import json
import os
import pickle
import posixpath
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoist import LogLevel, ObjectStoreLogger
from hoist.errors import ConfigurationError, InvalidObjectNameError, SourceFileError
from hoist.keys import FleetKeys
from hoist.logger.staging import stage_file
from hoist.protocol.layout import MAX_STAGED_NAME_BYTES, staged_path
from hoist.protocol.messages import (
    MAX_BATCH,
    UPLOAD_BATCH_TASK,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
    UploadRequest,
    order_key,
)
from hoist.protocol.naming import ObjectNameTemplate
from hoist.protocol.sending import send, sender
from hoist.protocol.signing import sign
from hoist.protocol.staged_file import open_staged_file, staged_components
from hoist.state.records import Records
from hoist.state.states import State
from hoist.stores.names import validate_object_name
from hoist.stores.spec import StoreSpec
from tests.services.bad_input import Tally, names, run_names, templates
from tests.services.keys import FLEET_KEY
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until
from tests.test_pipeline import settled

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
    # The worker agrees: it opens the staged file inside the root, and it is the file.
    with open_staged_file(str(root), staged.path) as opened:
        assert os.pread(opened.fd, 100, 0) == b"payload"
        assert opened.unlink()
    assert not os.path.exists(staged.path)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=names, absolute=st.booleans())
def test_worker_paths_never_leave_the_staging_root(
    path: str, absolute: bool, staging_tree: tuple[Path, Path]
) -> None:
    TALLY.add("hypothesis: worker paths")
    root, _base = staging_tree
    candidate = str(root) + "/" + path if absolute else path
    try:
        components = staged_components(str(root), candidate)
    except SourceFileError as exc:
        assert "refusing to read" in str(exc) and quotes(str(exc), candidate), str(exc)
        return
    # What the worker then walks, one component at a time from the root's descriptor.
    assert components and not {"", ".", ".."} & set(components)
    assert all("/" not in component for component in components)


# --------------------------------------------------------------------------- end to end


def test_bad_names_end_to_end_land_inside_the_prefix_or_fail_in_the_caller(
    hostile_fleet: WorkerFleet, tmp_path: Path
) -> None:
    """Names through the real logger and real workers into the Libcloud local store.

    Every accepted artifact must land at exactly its object name, under the
    store's directory and the template's prefix; every refused one must fail
    in ``file_artifact`` with a clear error, before anything is staged.
    """
    base = tmp_path / "store"
    (base / "artifacts").mkdir(parents=True)
    source = tmp_path / "payload"
    landed: dict[str, bytes] = {}
    loggers: list[ObjectStoreLogger] = []
    counter = iter(range(10**6))

    @settings(max_examples=60)
    @given(artifact_name=names, run_name=run_names)
    def log_one(artifact_name: str, run_name: str) -> None:
        TALLY.add("hypothesis: end to end names")
        payload = f"example {next(counter)}".encode()
        source.write_bytes(payload)
        try:
            logger = ObjectStoreLogger(
                "local",
                "artifacts",
                {"key": str(base)},
                object_name=PREFIX + "/{run_name}/{artifact_name}",
                run_name=run_name,
                broker_url=hostile_fleet.broker_url,
                upload_staging_folder=str(hostile_fleet.staging_root),
                wait_on_close=False,
                rank=0,
                world_size=1,
            )
        except ConfigurationError as exc:
            assert quotes(str(exc), run_name), str(exc)
            return
        loggers.append(logger)
        try:
            logger.file_artifact(LogLevel.BATCH, artifact_name, source, overwrite=True)
        except (ConfigurationError, InvalidObjectNameError) as exc:
            assert quotes(str(exc), artifact_name, run_name), str(exc)
            return
        object_name = logger.get_uri_for_artifact(artifact_name).removeprefix("local://artifacts/")
        assert_object_name_inside(object_name, PREFIX)
        landed[object_name] = payload

    log_one()
    for logger in loggers:
        logger.wait(timeout=120)
        logger.close()
    assert landed, "no example was accepted: the strategy is too hostile to test landing"
    store_root = (base / "artifacts").resolve()
    held = {
        str(path.relative_to(store_root)): path.read_bytes()
        for path in store_root.rglob("*")
        if path.is_file()
    }
    # Exactly the accepted objects, each at its name and nothing else anywhere.
    assert held == landed
    assert [p for p in base.iterdir() if p.name != "artifacts"] == []
    print(f"\nend to end: {len(landed)} accepted names landed inside {PREFIX}/")


# --------------------------------------------------------------------------- hostile messages


KEYS = FleetKeys.parse(FLEET_KEY)


@pytest.fixture(scope="module")
def hostile_fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    """One worker that every hostile message goes to; it must keep serving after them."""
    from tests.conftest import _serve

    workers = WorkerFleet(
        tmp_path_factory.mktemp("hostile-workers"),
        redis_server.url,
        tmp_path_factory.mktemp("hostile-staging"),
        count=1,
        concurrency=2,
    )
    yield from _serve(workers)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    return tmp_path / "store"


def valid_upload(fleet: WorkerFleet, store: Path, name: str, payload: bytes) -> dict[str, Any]:
    """A well-formed upload message, its file really staged: only the tampering is wrong."""
    stamp = time.time_ns()
    staged = fleet.staging_root / "hostile" / "rank0" / f"{stamp}-{name}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(payload)
    logger = {"provider": "local", "container": "artifacts", "provider_kwargs": {"key": str(store)}}
    message = UploadRequest(
        id=f"hoist-hostile-r0-{stamp}",
        run_name="hostile",
        rank=0,
        seq=stamp,
        artifact_name=name,
        object_name=f"hostile/{name}",
        order=order_key(0, stamp % 10**12),
        store=StoreSpec.describe("libcloud", logger, None).to_json(),
        staged_path=str(staged),
        size=len(payload),
    )
    return message.signed(KEYS).to_json()


def resigned(body: Any) -> Any:
    """``body`` signed with the fleet key after tampering, as a buggy rank would send it: the
    signature holds, so what is refused is the body itself."""
    return sign(body, KEYS) if isinstance(body, dict) else body


def _set(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda message: {**message, **fields}


def _drop(*names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda message: {k: v for k, v in message.items() if k not in names}


MALFORMED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "rank is a string": _set(rank="0"),
    "rank is a bool": _set(rank=True),
    "seq is negative": _set(seq=-1),
    "size is a float": _set(size=1.5),
    "overwrite is a string": _set(overwrite="yes"),
    "rank_limit is 0": _set(rank_limit=0),
    "staged_path is a list": _set(staged_path=["/etc/shadow"]),
    "object_name is null": _set(object_name=None),
    "fingerprint is a string": _set(fingerprint="size=1"),
    "fingerprint holds a string": _set(fingerprint=[1, 2, "3", 1]),
    "store is a string": _set(store="libcloud://local"),
    "store lacks its kwargs": _set(store={"kind": "libcloud"}),
    "store kind is a number": _set(store={"kind": 3, "kwargs": {}, "sealed": None}),
    "id missing": _drop("id"),
    "staged_path and store missing": _drop("staged_path", "store"),
    "every field missing": lambda message: {},
    "the message is a string": lambda message: json.dumps(message),
    "the message is a list": lambda message: list(message.items()),
    "the message is null": lambda message: None,
    "a 1 MiB artifact name": _set(artifact_name="x" * (1 << 20)),
    "a 200 KiB unknown field": _set(padding="y" * (200 << 10)),
}


def worker_said(fleet: WorkerFleet, *fragments: str) -> bool:
    return any(all(f in line for f in fragments) for line in fleet.logs().splitlines())


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_messages_are_refused_logged_and_never_run(
    case: str, hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    TALLY.add("explicit: hostile messages")
    good = valid_upload(hostile_fleet, store_dir, "model.pt", b"staged bytes")
    task_id = f"hostile-{time.time_ns()}"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_TASK,
        kwargs={"message": resigned(MALFORMED[case](good))},
        task_id=task_id,
        queue=UPLOAD_QUEUE,
    )
    # A body that is no JSON object cannot carry a signature at all. (The 1 MiB
    # message is dropped at the broker boundary, whose line names it the same way.)
    said = "a malformed" if isinstance(MALFORMED[case](good), dict) else "an unauthenticated"
    wait_until(
        lambda: worker_said(hostile_fleet, f"refused {said} hoist.upload message", task_id),
        timeout=60,
    )
    client = redis.Redis.from_url(redis_server.url)
    assert not client.exists(f"hoist:artifact:{good['id']}"), "a record was made"
    assert list((store_dir / "artifacts").rglob("*")) == [], "an object was written"
    assert Path(good["staged_path"]).read_bytes() == b"staged bytes"


@pytest.mark.parametrize("own", [True, False], ids=["its own message", "a forged one"])
def test_a_refused_message_fails_its_own_record_only(
    own: bool, hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    """A rank's message the workers refuse fails its record (instead of being re-sent for
    ever); a forged message under the same id leaves the rank's record alone."""
    good = valid_upload(hostile_fleet, store_dir, "model.pt", b"staged bytes")
    # Its own: signed by the rank. Forged: altered after the rank signed it.
    bad = resigned({**good, "size": "a lot"}) if own else {**good, "size": "a lot"}
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    record = f"hoist:artifact:{good['id']}"
    stored = bad if own else good
    client.hset(
        record, mapping={"state": "queued", "message": json.dumps(stored), "task": UPLOAD_TASK}
    )
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_TASK, kwargs={"message": bad}, task_id=good["id"], queue=UPLOAD_QUEUE
    )
    said = "refused a malformed" if own else "refused an unauthenticated"
    wait_until(
        lambda: worker_said(hostile_fleet, said, "hoist.upload message", good["id"]), timeout=60
    )
    fields = client.hgetall(record)
    if own:
        assert fields["state"] == "failed"
        assert "the workers refused its message" in fields["error"] and "'size'" in fields["error"]
    else:
        assert fields["state"] == "queued"
    assert list((store_dir / "artifacts").rglob("*")) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"message": {}, "extra": 1}, {}, {"msg": {}}],
    ids=["unknown argument", "no argument", "misnamed argument"],
)
def test_wrong_task_arguments_are_refused_by_celery_and_logged(
    kwargs: dict[str, Any], hostile_fleet: WorkerFleet, store_dir: Path
) -> None:
    TALLY.add("explicit: hostile messages")
    task_id = f"hostile-args-{time.time_ns()}"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_TASK, kwargs=kwargs, task_id=task_id, queue=UPLOAD_QUEUE
    )
    wait_until(lambda: worker_said(hostile_fleet, task_id, "TypeError"), timeout=60)
    assert list((store_dir / "artifacts").rglob("*")) == []


class PickleBomb:
    """Unpickling this creates ``marker``: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickled_message_is_refused_and_never_unpickled(
    hostile_fleet: WorkerFleet, store_dir: Path, tmp_path: Path
) -> None:
    TALLY.add("explicit: hostile messages")
    # The payload works: unpickled here, it creates its marker.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(PickleBomb(control)))
    assert control.exists()

    marker = tmp_path / "worker-unpickled-this"
    task_id = f"hostile-pickle-{time.time_ns()}"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_TASK,
        kwargs={"message": PickleBomb(marker)},
        task_id=task_id,
        queue=UPLOAD_QUEUE,
        serializer="pickle",
    )
    wait_until(
        lambda: worker_said(
            hostile_fleet, "Refusing to deserialize untrusted content of type pickle"
        ),
        timeout=60,
    )
    # The refusal is logged once the message is dropped; the worker goes on (below).
    assert not marker.exists()


def test_unknown_fields_are_ignored_not_stored(
    hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    """A newer rank's extra field does not stop an older worker; it is never used or kept."""
    TALLY.add("explicit: hostile messages")
    good = valid_upload(hostile_fleet, store_dir, "extra.pt", b"extra")
    message = resigned({**good, "staged_path_override": "/etc/shadow", "exec": "rm -rf /"})
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_TASK, kwargs={"message": message}, task_id=good["id"], queue=UPLOAD_QUEUE
    )
    records = Records.from_url(redis_server.url)
    status = wait_until(lambda: settled(records, good["id"]), timeout=60)
    assert status.state is State.DONE, status.error
    assert (store_dir / "artifacts" / "hostile" / "extra.pt").read_bytes() == b"extra"
    assert "/etc/shadow" not in status.fields["message"]


def test_a_malformed_batch_member_is_refused_and_the_others_land(
    hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    """A batch is as strict as its members alone: a bad one is refused by its own id."""
    TALLY.add("explicit: hostile messages")
    first = valid_upload(hostile_fleet, store_dir, "first.pt", b"first")
    last = valid_upload(hostile_fleet, store_dir, "last.pt", b"last")
    bad = resigned({**valid_upload(hostile_fleet, store_dir, "bad.pt", b"bad"), "rank": "0"})
    batch = f"{first['id']}+2"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_BATCH_TASK,
        kwargs={"messages": [first, bad, last]},
        task_id=batch,
        queue=UPLOAD_QUEUE,
    )
    records = Records.from_url(redis_server.url)
    for good, payload in ((first, b"first"), (last, b"last")):
        status = wait_until(lambda g=good: settled(records, g["id"]), timeout=60)
        assert status.state is State.DONE, status.error
        assert (store_dir / "artifacts" / good["object_name"]).read_bytes() == payload
    assert worker_said(hostile_fleet, "refused a malformed hoist.upload message", bad["id"])
    assert not (store_dir / "artifacts" / bad["object_name"]).exists()
    # The batch counts as failed (Flower's FAILURE), naming the member that failed.
    said = f"Task hoist.upload_batch[{batch}] raised expected: ArtifactFailed("
    wait_until(lambda: worker_said(hostile_fleet, said, "1 of 3 failed", bad["id"]), timeout=30)


@pytest.mark.parametrize(
    "messages", [{"id": "x"}, [], "hoist-x"], ids=["an object", "empty", "a string"]
)
def test_a_batch_that_is_no_list_of_messages_is_refused(
    messages: Any, hostile_fleet: WorkerFleet
) -> None:
    TALLY.add("explicit: hostile messages")
    task_id = f"hostile-batch-{time.time_ns()}"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_BATCH_TASK, kwargs={"messages": messages}, task_id=task_id, queue=UPLOAD_QUEUE
    )
    said = "refused a malformed hoist.upload_batch message"
    wait_until(lambda: worker_said(hostile_fleet, said, task_id), timeout=60)
    assert worker_said(hostile_fleet, task_id, "a batch must be a list of 1 to 32 uploads")


def test_a_batch_larger_than_allowed_is_refused_before_any_upload(
    hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    TALLY.add("explicit: hostile messages")
    good = valid_upload(hostile_fleet, store_dir, "many.pt", b"many")
    task_id = f"{good['id']}+{MAX_BATCH}"
    sender(hostile_fleet.broker_url).send_task(
        UPLOAD_BATCH_TASK,
        kwargs={"messages": [good] * (MAX_BATCH + 1)},
        task_id=task_id,
        queue=UPLOAD_QUEUE,
    )
    said = "refused a malformed hoist.upload_batch message"
    wait_until(lambda: worker_said(hostile_fleet, said, task_id), timeout=60)
    assert not redis.Redis.from_url(redis_server.url).exists(f"hoist:artifact:{good['id']}")
    assert list((store_dir / "artifacts").rglob("*")) == []


def test_worker_keeps_serving_after_hostile_messages(
    hostile_fleet: WorkerFleet, redis_server: RedisServer, store_dir: Path
) -> None:
    """Runs last in this module: every hostile message above went to this same worker."""
    good = valid_upload(hostile_fleet, store_dir, "after.pt", b"still serving")
    message = UploadRequest.from_json(good)
    send(sender(hostile_fleet.broker_url), UPLOAD_TASK, message)
    records = Records.from_url(redis_server.url)
    status = wait_until(lambda: settled(records, message.id), timeout=60)
    assert status.state is State.DONE, status.error
    assert (store_dir / "artifacts" / "hostile" / "after.pt").read_bytes() == b"still serving"
    assert all(w.proc is not None and w.proc.poll() is None for w in hostile_fleet.workers)
