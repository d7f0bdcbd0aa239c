"""The one exception hierarchy of hoist.

Every error hoist raises derives from :class:`HoistError`. Store errors carry
``retryable``: the upload task retries those with backoff and fails the others
at once, so the split below is the retry policy, written down as types.

Where a built-in exception already names the situation (``ValueError``,
``FileNotFoundError``, ``PermissionError``, ``FileExistsError``), the hoist error
also derives from it, so callers that catch the built-in keep working.
"""

from __future__ import annotations


class HoistError(Exception):
    """Base class of every error hoist raises."""


class ConfigurationError(HoistError, ValueError):
    """An argument or setting is wrong; the message says which and how to fix it."""


class UnknownProviderError(ConfigurationError):
    """A Libcloud provider name or store URI scheme that hoist does not know."""


class InvalidObjectNameError(HoistError, ValueError):
    """An object name that is empty, has ``..`` segments or characters a store rejects."""


class SourceFileError(HoistError, OSError):
    """The local file to upload is missing, not a regular file or unreadable."""


class StoreError(HoistError):
    """A store refused or failed an operation.

    Parameters:
        message: one sentence that says what happened and what to do.
        retryable: whether the same request may succeed later unchanged.
    """

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class TransientStoreError(StoreError):
    """Timeouts, 5xx answers, throttling, dropped connections: worth retrying."""

    retryable = True


class StoreThrottledError(TransientStoreError):
    """The store asked for fewer requests (S3 ``SlowDown``, HTTP 429): the fleet
    lowers its concurrency toward that store, for every worker (:mod:`hoist.state.throttle`)."""


class StoreConnectionError(TransientStoreError):
    """The store could not be reached (refused, reset, timed out)."""


class ChecksumMismatchError(TransientStoreError):
    """What the store holds differs from the bytes that were sent."""


class PermanentStoreError(StoreError):
    """An error that retrying will not mend: the message says what to fix."""


class StoreAuthError(PermanentStoreError, PermissionError):
    """Credentials are missing or wrong, or they do not allow the operation."""


class HostKeyError(PermanentStoreError):
    """An SFTP server's host key is unknown or has changed."""


class ContainerNotFoundError(PermanentStoreError):
    """The bucket, container or remote directory does not exist."""


class ObjectNotFoundError(PermanentStoreError, FileNotFoundError):
    """The object does not exist in the store."""


class ObjectExistsError(PermanentStoreError, FileExistsError):
    """The object exists with other bytes and ``overwrite`` was not given."""


class StoreFullError(PermanentStoreError):
    """The store has no space left (for example a full SFTP disk)."""


class StagingError(HoistError, OSError):
    """A file could not be staged (the staging filesystem is full, read-only, …)."""


class InvalidMessageError(HoistError, ValueError):
    """A task message on the broker is malformed: refused by the worker, never run."""


class UnauthenticMessageError(InvalidMessageError):
    """A task message that no rank of this fleet signed: dropped without touching a record.

    Unlike other malformed messages, it may not fail the record of the id it
    names: whoever sent it could not have made that record's message.
    """


class UnsignedMessageError(UnauthenticMessageError):
    """A task message without a signature, on a worker that requires one."""


class ForgedMessageError(UnauthenticMessageError):
    """A task message whose signature does not match its body under any fleet key."""


class StoreNotAllowedError(InvalidMessageError):
    """A signed message names a store this fleet does not upload to (``--allow-store``)."""


class EnqueueError(HoistError):
    """Redis could not be reached to record an upload (``file_artifact``) or to send it
    again (``hoist retry``); the message names the URL, password masked, and what to do.

    A broker unreachable while the records' Redis is up does not raise this in
    ``file_artifact``: the rank's sending thread marks the artifact failed,
    and ``wait()`` reports it (see :mod:`hoist.logger.publisher`).
    """


class ArtifactFailed(HoistError):
    """Raised by a worker's task whose artifact (or a batch member) failed for good.

    The record already holds the outcome; raising makes Celery report the task
    as failed too, so Flower shows it as ``FAILURE`` with this text and
    ``flower_events_total{type="task-failed"}`` counts it. The worker logs it
    at INFO ("raised expected"), without a traceback: the job logged it already.
    """


class UploadFailedError(HoistError):
    """One or more uploads failed for good; the message names each with its cause.

    Parameters:
        message: one sentence counting what failed, then one line per name,
            checkpoints first, a name's versions folded into one line
            (:func:`hoist.logger.pending.failure_report` writes it).
        failures: ``(artifact name, object name, error)`` for each failed
            upload, every version of a name included, in the order found.
    """

    def __init__(self, message: str, failures: list[tuple[str, str, str]]) -> None:
        super().__init__(message)
        self.failures = failures


class WaitTimeoutError(HoistError, TimeoutError):
    """``wait()`` ran out of time with uploads still pending."""


class CheckpointError(HoistError):
    """A sharded checkpoint is incomplete, or its files do not match its manifest."""


class ClusterUnreachableError(HoistError):
    """The cluster is configured, but its Redis does not answer."""
