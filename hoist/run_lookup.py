"""Find a name a run logged in its records: the ``run=`` form of :mod:`hoist.download`.

Apart from :mod:`hoist.download` because it needs the records, and with them
redis: a download by URI or object name (a resume) never imports it.
"""

from __future__ import annotations

from hoist.errors import ConfigurationError, ObjectNotFoundError
from hoist.keys import FleetKeys
from hoist.protocol.messages import COMMIT_TASK
from hoist.protocol.pointers import POINTER_SUFFIX
from hoist.settings import CommandSettings
from hoist.state.connection import NO_CLUSTER, connect
from hoist.state.records import ArtifactStatus, Records
from hoist.state.states import State
from hoist.stores.base import ObjectStore
from hoist.stores.checksum import Checksum
from hoist.stores.spec import StoreSpec


def in_run(
    source: str,
    run: str,
    records: Records | None,
    state_url: str | None,
    fleet_key: str | FleetKeys | None,
) -> tuple[ObjectStore, str, bool, dict[str, Checksum]]:
    """The store and object of the name ``source`` the run logged, from its records,
    and the checksum each record of it says was uploaded."""
    if records is None:
        records = connect(
            state_url or configured_state_url(),
            sentinel=CommandSettings.from_environment().sentinel,
        )
    artifacts = records.run_artifacts(run)
    if not artifacts:
        raise ConfigurationError(
            f"the cluster has no artifacts of run {run!r}; `hoist status` lists the runs it knows"
        )
    matches = [a for a in artifacts if names(a, source)]
    done = [a for a in matches if a.state is State.DONE]
    if not done:
        if matches:
            states = ", ".join(sorted({a.state.value for a in matches}))
            raise ConfigurationError(
                f"{source!r} of run {run!r} is not uploaded ({states}); `hoist wait --run "
                f"{run}` waits for it, `hoist status --run {run}` shows why"
            )
        raise ObjectNotFoundError(
            f"run {run!r} logged nothing named {source!r}; give the artifact name as logged, "
            "or its object name"
        )
    objects = sorted({a.message["object_name"] for a in done})
    if len(objects) > 1:
        raise ConfigurationError(
            f"{source!r} names {len(objects)} objects of run {run!r} (one per rank?): "
            f"{', '.join(objects)}; give one of these object names"
        )
    newest = max(done, key=lambda a: a.message["order"])
    spec = StoreSpec.from_json(newest.message["store"])
    keys = fleet_key or CommandSettings.from_environment().keys
    # The newest upload's bytes are the object's; a pointer's record holds the
    # pointer's checksum, used only if the name resolves to the pointer itself.
    held = newest.fields.get("checksum")
    recorded = {objects[0]: Checksum.parse(held)} if held else {}
    return spec.build(keys), objects[0], True, recorded


def configured_state_url() -> str:
    """``HOIST_STATE_URL``, else ``HOIST_BROKER_URL``; no cluster configured is an error."""
    state = CommandSettings.from_environment().state_url
    if not state:
        raise ConfigurationError(NO_CLUSTER)
    return state


def names(artifact: ArtifactStatus, source: str) -> bool:
    object_name = artifact.message.get("object_name", "")
    if source in (artifact.artifact_name, object_name) or object_name == source + POINTER_SUFFIX:
        return True
    # log_checkpoint_dir's run-wide pointer ("latest") is recorded only by its
    # commit's object name, the template filled in ("bert-3/latest.symlink"):
    # a commit matches on that name's tail, so run= finds "latest" as documented.
    return artifact.fields.get("task") == COMMIT_TASK and object_name.endswith(
        f"/{source}{POINTER_SUFFIX}"
    )
