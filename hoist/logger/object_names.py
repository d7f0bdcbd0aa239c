"""How a rank names its objects: the templates filled in, checked against the store's limits.

An artifact name becomes an object name through the logger's
``object_name`` template (``checkpoint_object_name`` for sharded
checkpoints), filled with the run and this rank's place in it. The result is
checked here against the store's own limits, so that a name the store
cannot hold fails in the caller rather than on a worker.
"""

from __future__ import annotations

from collections.abc import Callable

from hoist.errors import InvalidObjectNameError
from hoist.logger.ranks import RankInfo
from hoist.protocol.naming import ObjectNameTemplate


class ObjectNames:
    """A rank's object names of artifacts and of sharded checkpoints' files.

    Parameters:
        template: object names of ``file_artifact`` and ``symlink_artifact``.
        checkpoint_template: object names of ``log_checkpoint_dir``'s files.
        run_name: the run.
        ranks: this rank's place in the job.
        validate: the store's own check of a name (``ObjectStore.validate_name``),
            which returns the name or raises :class:`~hoist.errors.InvalidObjectNameError`.

    Example:
        >>> names = ObjectNames(ObjectNameTemplate("{run_name}/rank{rank}/{artifact_name}"),
        ...                     ObjectNameTemplate("{run_name}/{artifact_name}"), "llama",
        ...                     RankInfo.from_environment({}, rank=3, world_size=4),
        ...                     validate=lambda name: name)
        >>> names.artifact("ep1.pt"), names.checkpoint("checkpoints/step-00000100")
        ('llama/rank3/ep1.pt', 'llama/checkpoints/step-00000100')
    """

    def __init__(
        self,
        template: ObjectNameTemplate,
        checkpoint_template: ObjectNameTemplate,
        run_name: str,
        ranks: RankInfo,
        validate: Callable[[str], str],
    ) -> None:
        self.template = template
        self.checkpoint_template = checkpoint_template
        self._run_name = run_name
        self._ranks = ranks
        self._validate = validate

    def artifact(self, artifact_name: str) -> str:
        """The object name of an artifact (and, with ``.symlink``, of a pointer)."""
        return self._checked(self.template, artifact_name)

    def checkpoint(self, artifact_name: str) -> str:
        """The object name of a sharded checkpoint's file, directory or pointer."""
        return self._checked(self.checkpoint_template, artifact_name)

    def _checked(self, template: ObjectNameTemplate, artifact_name: str) -> str:
        ranks = self._ranks
        name = template.format(
            artifact_name=artifact_name,
            run_name=self._run_name,
            rank=ranks.rank,
            local_rank=ranks.local_rank,
            world_size=ranks.world_size,
            local_world_size=ranks.local_world_size,
            node_rank=ranks.node_rank,
        )
        try:
            # The store's own limits (a file name's 255 bytes on SFTP and local
            # stores), so that such a name fails here, not on a worker.
            return self._validate(name)
        except InvalidObjectNameError as exc:
            raise InvalidObjectNameError(
                f"artifact name {artifact_name!r} cannot be stored: {exc}; shorten it or "
                "change the object_name template"
            ) from None
