"""The logger's constructor arguments, resolved once against the rank's settings.

Every choice a logger makes from its environment is made here, when it is
built: explicit arguments first, then :class:`~hoist.settings.RankSettings`
(the ``HOIST_*`` variables; ``HOIST_STORE_URI`` is the store of a logger
given no store arguments), then the launcher (``RANK``, ``TORCHELASTIC_RUN_ID``,
``SLURM_JOB_ID``…, see :mod:`hoist.logger.ranks`), then defaults. A bad
value is a :class:`~hoist.errors.ConfigurationError` raised by the
constructor; nothing the logger does later reads the environment.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hoist.errors import ConfigurationError
from hoist.keys import FLEET_KEY_ENV, FleetKeys, keys_from
from hoist.logger.backlog import StagingFull, staging_full_mode
from hoist.logger.ranks import RankInfo, launcher_run_name
from hoist.logger.staging import StagingMode, staging_mode
from hoist.protocol.layout import staging_root_from
from hoist.protocol.messages import node_queue as node_queue_name
from hoist.protocol.naming import ObjectNameTemplate, validate_run_name
from hoist.settings import RankSettings, SentinelSettings, environment
from hoist.stores.base import ObjectStore
from hoist.stores.spec import StoreSpec, kind_of
from hoist.stores.uri import parse_store_uri

log = logging.getLogger("hoist.rank")

DEFAULT_OBJECT_NAME = "{run_name}/artifacts/{artifact_name}"
"""Object names of ``file_artifact`` and ``symlink_artifact`` unless ``object_name`` says."""
DEFAULT_CHECKPOINT_OBJECT_NAME = "{run_name}/{artifact_name}"
"""Sharded checkpoints: one directory per step for all ranks, and the run's pointer."""


NO_STORE = (
    "the logger has no store: pass one (ObjectStoreLogger(provider='s3', container='bucket', "
    "provider_kwargs={...}) or ObjectStoreLogger(object_store_cls=S3ObjectStore, "
    "object_store_kwargs={'bucket': ...})), or set HOIST_STORE_URI to a store URI; for the "
    "embedded store run `hoist up` and `set -a; . ./.hoist/env; set +a`, which sets it"
)
"""The error of a logger given neither store arguments nor ``HOIST_STORE_URI``."""


@dataclass(frozen=True)
class StoreArguments:
    """Where to upload, in either of Composer's forms (see :class:`ObjectStoreLogger`).

    None of them given means the default store, ``HOIST_STORE_URI``.

    Parameters:
        provider, container, provider_kwargs: the Libcloud form.
        object_store_cls, object_store_kwargs: the store-class form.
    """

    provider: str | None = None
    container: Any = None
    provider_kwargs: dict[str, Any] | None = None
    object_store_cls: type[ObjectStore] | None = None
    object_store_kwargs: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        provider: str | type[ObjectStore] | None,
        container: str | dict[str, Any] | None,
        provider_kwargs: dict[str, Any] | None,
        object_store_cls: type[ObjectStore] | None,
        object_store_kwargs: dict[str, Any] | None,
    ) -> StoreArguments:
        """The arguments as given, the store class also accepted in the provider's place.

        Example:
            >>> from hoist.stores.base import ObjectStore
            >>> arguments = StoreArguments.of(ObjectStore, {"bucket": "b"}, None, None, None)
            >>> arguments.object_store_cls is ObjectStore, arguments.object_store_kwargs
            (True, {'bucket': 'b'})
        """
        if isinstance(provider, type):  # ObjectStoreLogger(S3ObjectStore, {...}) positionally
            object_store_cls, provider = provider, None
            if isinstance(container, dict):
                object_store_kwargs, container = container, None
        return cls(provider, container, provider_kwargs, object_store_cls, object_store_kwargs)

    @property
    def given(self) -> bool:
        """Whether any store argument was passed (else the default store applies).

        Example:
            >>> StoreArguments().given, StoreArguments(provider="local").given
            (False, True)
        """
        return any(
            value is not None
            for value in (
                self.provider,
                self.container,
                self.provider_kwargs,
                self.object_store_cls,
                self.object_store_kwargs,
            )
        )

    def spec(self, keys: FleetKeys, default_uri: str | None = None) -> StoreSpec:
        """The store's description as sent to workers, its credentials sealed with ``keys``.

        Parameters:
            keys: the fleet keys.
            default_uri: the store when no argument names one (``HOIST_STORE_URI``).

        Raises:
            ConfigurationError: the arguments are incomplete or contradictory,
                or there are none and no ``default_uri``.

        Example:
            >>> from hoist.keys import keys_from, new_fleet_key
            >>> keys = keys_from(new_fleet_key())
            >>> spec = StoreArguments().spec(keys, "file:///srv/hoist/store")
            >>> spec.kind, spec.kwargs["container"]
            ('libcloud', 'store')
        """
        if not self.given:
            if not default_uri:
                raise ConfigurationError(NO_STORE)
            # Parsed on the rank: a relative file:// path means this rank's directory.
            kind, kwargs = parse_store_uri(default_uri)
            return StoreSpec.describe(kind, kwargs, keys)
        if self.object_store_cls is not None:
            if self.provider is not None:
                raise ConfigurationError(
                    "give either provider/container or object_store_cls, not both"
                )
            return StoreSpec.describe(
                kind_of(self.object_store_cls), dict(self.object_store_kwargs or {}), keys
            )
        if self.provider is None or self.container is None:
            raise ConfigurationError(
                "say where to upload: ObjectStoreLogger(provider='s3', container='bucket', "
                "provider_kwargs={...}) or ObjectStoreLogger(object_store_cls=S3ObjectStore, "
                "object_store_kwargs={'bucket': ...})"
            )
        kwargs = {
            "provider": self.provider,
            "container": self.container,
            "provider_kwargs": self.provider_kwargs or {},
        }
        return StoreSpec.describe("libcloud", kwargs, keys)


@dataclass(frozen=True)
class LoggerConfiguration:
    """Everything a logger takes from its arguments and environment, resolved and checked.

    Parameters:
        ranks: where this process sits in the job.
        template, checkpoint_template: object names of artifacts and of
            sharded checkpoints' files.
        run_name: the run, the same on every rank.
        staging_root: the absolute staging root (created if missing).
        keys: the fleet keys that sign messages and seal credentials.
        spec: the store, as workers are told of it.
        staging: the default :class:`~hoist.logger.staging.StagingMode`.
        enqueue_timeout: seconds to retry an unreachable Redis.
        max_staged_bytes: the bound on this rank's staged bytes; 0 for none.
        when_staging_full: what a call does at the bound (:mod:`hoist.logger.backlog`).
        upload_queue: this node's upload queue, or "" for the shared one.
        broker_url, state_url: the broker and the Redis holding records.
        retention_seconds: how long finished records are kept.
        sentinel: how ``sentinel://`` URLs are followed (``HOIST_SENTINEL_*``).
    """

    ranks: RankInfo
    template: ObjectNameTemplate
    checkpoint_template: ObjectNameTemplate
    run_name: str
    staging_root: str
    keys: FleetKeys = field(repr=False)  # secrets: never in a log line or traceback
    spec: StoreSpec
    staging: StagingMode
    enqueue_timeout: float
    max_staged_bytes: int
    when_staging_full: StagingFull
    upload_queue: str
    broker_url: str
    state_url: str
    retention_seconds: int
    sentinel: SentinelSettings = field(default_factory=SentinelSettings)

    @classmethod
    def resolve(
        cls,
        store: StoreArguments,
        *,
        object_name: str,
        checkpoint_object_name: str,
        upload_staging_folder: str | None,
        run_name: str | None,
        broker_url: str | None,
        state_url: str | None,
        ranks: Mapping[str, int | None],
        fleet_key: str | None,
        enqueue_timeout: float | None,
        staging: StagingMode | str,
        node_queue: str | None,
        max_staged_bytes: int | None = None,
        when_staging_full: StagingFull | str = StagingFull.WAIT,
        settings: RankSettings | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> LoggerConfiguration:
        """Resolve the constructor's arguments; each None falls back to ``settings``.

        Parameters:
            store: where to upload.
            ranks: the ``rank``, ``local_rank``, ``world_size``,
                ``local_world_size`` and ``node_rank`` arguments.
            settings: the rank's ``HOIST_*`` settings (default: read from
                the environment now).
            environ: the launcher's environment (default: the process's).
            (the others): :class:`ObjectStoreLogger`'s arguments of those names.

        Raises:
            ConfigurationError: an argument or a variable is invalid; the
                message names it.
        """
        env = environment(environ)
        settings = RankSettings.from_environment() if settings is None else settings
        info = RankInfo.from_environment(env, **ranks)
        template = ObjectNameTemplate(object_name)
        checkpoint_template = ObjectNameTemplate(checkpoint_object_name)
        name = validate_run_name(_run_name(run_name, settings, info, env))
        staging_root = staging_root_from(upload_staging_folder or settings.staging_dir)
        keys = _fleet_keys(fleet_key, settings)
        spec = store.spec(keys, settings.store_uri)
        node = (settings.node_queue or "") if node_queue is None else node_queue
        broker = broker_url or settings.broker_url
        return cls(
            ranks=info,
            template=template,
            checkpoint_template=checkpoint_template,
            run_name=name,
            staging_root=staging_root,
            keys=keys,
            spec=spec,
            staging=staging_mode(staging),
            enqueue_timeout=_enqueue_timeout(enqueue_timeout, settings),
            max_staged_bytes=(
                settings.max_staged_bytes if max_staged_bytes is None else max_staged_bytes
            ),
            when_staging_full=staging_full_mode(when_staging_full),
            upload_queue=node_queue_name(node) if node else "",
            broker_url=broker,
            # HOIST_STATE_URL unset means "the broker the logger uses", which an
            # explicit broker_url may have changed.
            state_url=state_url or settings.state_url or broker,
            retention_seconds=settings.retention_seconds,
            sentinel=settings.sentinel,
        )


def _enqueue_timeout(explicit: float | None, settings: RankSettings) -> float:
    value = settings.enqueue_timeout if explicit is None else float(explicit)
    if not value > 0:
        raise ConfigurationError(f"enqueue_timeout must be more than 0 seconds, not {value}")
    return value


def _run_name(
    explicit: str | None, settings: RankSettings, ranks: RankInfo, environ: Mapping[str, str]
) -> str:
    for name in (explicit, settings.run_name, launcher_run_name(environ)):
        if name:
            return name
    if ranks.world_size > 1:
        raise ConfigurationError(
            "every rank must log under the same run name: pass run_name= or set HOIST_RUN_NAME"
        )
    generated = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    log.warning("no run name given; logging as %r (set HOIST_RUN_NAME to choose)", generated)
    return generated


def _fleet_keys(fleet_key: str | None, settings: RankSettings) -> FleetKeys:
    keys = keys_from(fleet_key) if fleet_key else settings.keys
    if keys is None:
        raise ConfigurationError(
            f"the logger has no fleet key, and hoist workers act only on messages signed with "
            f"it: set {FLEET_KEY_ENV} to the fleet's key (`hoist up` writes it to "
            "./.hoist/env; `hoist keygen` makes one for a fleet of your own), or pass fleet_key="
        )
    return keys
