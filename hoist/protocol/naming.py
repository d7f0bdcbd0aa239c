"""Object names: the ``object_name`` template and the checks on artifact names.

Every check here runs in the training process, before anything is staged, so a
bad template or artifact name fails in the caller's stack trace with a message
that names the template and the value at fault, rather than later in a worker.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from hoist.errors import ConfigurationError

OBJECT_NAME_FIELDS = (
    "artifact_name",
    "run_name",
    "rank",
    "local_rank",
    "world_size",
    "local_world_size",
    "node_rank",
)
"""The fields an ``object_name`` template may use."""

_ALLOWED = ", ".join("{" + field + "}" for field in OBJECT_NAME_FIELDS)

# Stand-in values for the eager trial format in ObjectNameTemplate.__post_init__:
# a string for the string fields and an int for the rank fields, so that a format
# spec that does not fit the field's type (``{artifact_name:03d}``) fails at
# construction time, not on the first artifact of a long run.
_SAMPLE_VALUES: dict[str, str | int] = {
    "artifact_name": "artifact",
    "run_name": "run",
    "rank": 0,
    "local_rank": 0,
    "world_size": 1,
    "local_world_size": 1,
    "node_rank": 0,
}


RUN_NAME_MAX_BYTES = 255
"""Longest run name, in UTF-8 bytes: it is a directory name under the staging root."""


def _not_utf8(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, so cannot be sent as UTF-8.

    Object stores take UTF-8 keys, Redis keys and JSON messages are UTF-8, and a
    ``str`` can still hold ``"\\ud800"`` (from ``os.fsdecode`` of a non-UTF-8 file
    name, for example); refused here, it never becomes an ``UnicodeEncodeError``
    deep inside a client library.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def validate_run_name(run_name: str) -> str:
    """Check a run name and return it unchanged.

    The run name becomes a directory under the staging root, part of every
    artifact id (the Celery task id) and of Redis keys, so it must be one safe
    path segment.

    Raises:
        ConfigurationError: it is not a string, is empty, ``.`` or ``..``, has a
            ``/`` or NUL, is not valid UTF-8, is longer than 255 bytes, or has
            whitespace or a control character (``"my run 1"``).

    Example:
        >>> validate_run_name("bert-3")
        'bert-3'
    """
    problem = None
    if not isinstance(run_name, str):
        problem = f"is a {type(run_name).__name__}, not a str"
    elif not run_name or run_name in (".", "..") or "/" in run_name or "\0" in run_name:
        problem = "cannot be a directory name"
    elif _not_utf8(run_name):
        problem = "is not valid UTF-8 (it holds a lone surrogate)"
    elif len(run_name.encode("utf-8")) > RUN_NAME_MAX_BYTES:
        problem = f"is longer than {RUN_NAME_MAX_BYTES} bytes"
    elif any(c.isspace() or not c.isprintable() for c in run_name):
        # It is printed in URIs, commands to copy (`hoist wait --run NAME`) and
        # Flower's table, unquoted: a space would split it.
        problem = "has whitespace or a control character"
    if problem is not None:
        raise ConfigurationError(
            f"run name {run_name!r} {problem}: give a non-empty name of at most "
            f"{RUN_NAME_MAX_BYTES} bytes without whitespace, control characters or '/', "
            "not '.' or '..' (e.g. 'my-run-1')"
        )
    return run_name


def validate_artifact_name(name: str) -> str:
    """Check an artifact name given by the user and return it unchanged.

    An artifact name is what the user passes to ``file_artifact`` or
    ``symlink_artifact``; it may contain ``/`` (it becomes a "directory" in the
    store) and a leading ``/`` (the template strips it).

    Parameters:
        name: the artifact name.

    Returns:
        ``name``, unchanged.

    Raises:
        ConfigurationError: ``name`` is not a string, is empty, contains a NUL
            character, is not valid UTF-8 or has a ``..`` segment.

    Example:
        >>> validate_artifact_name("checkpoints/ep1.pt")
        'checkpoints/ep1.pt'
        >>> validate_artifact_name("../ep1.pt")
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: artifact name '../ep1.pt' has a '..' segment; ...
    """
    if not isinstance(name, str):
        raise ConfigurationError(
            f"artifact name must be a str, not {type(name).__name__} ({name!r}); "
            "pass str(path) for a path"
        )
    if not name.strip("/"):
        raise ConfigurationError(
            f"artifact name {name!r} is empty; give the artifact a name such as 'ep1.pt'"
        )
    if "\0" in name:
        raise ConfigurationError(f"artifact name {name!r} contains a NUL character")
    if _not_utf8(name):
        raise ConfigurationError(
            f"artifact name {name!r} is not valid UTF-8 (it holds a lone surrogate); "
            "object stores take UTF-8 names only"
        )
    if ".." in name.split("/"):
        raise ConfigurationError(
            f"artifact name {name!r} has a '..' segment; "
            "object names cannot climb out of their prefix"
        )
    return name


@dataclass(frozen=True)
class ObjectNameTemplate:
    """The ``object_name`` template that maps an artifact to its object name.

    The template is a :meth:`str.format` string over :data:`OBJECT_NAME_FIELDS`;
    format specs such as ``{rank:03d}`` are allowed. It is checked when it is
    created, so a typo fails when the logger is built, not at the first upload.

    Parameters:
        template: the template, for example ``"{run_name}/rank{rank}/{artifact_name}"``.

    Raises:
        ConfigurationError: the template is malformed, uses a field that is not
            in :data:`OBJECT_NAME_FIELDS`, a positional field (``{}``, ``{0}``),
            attribute or index access (``{rank.real}``, ``{rank[0]}``), a format
            spec that does not fit its field, or does not use
            ``{artifact_name}`` (every artifact would land on the same object).

    Example:
        >>> template = ObjectNameTemplate("{run_name}/rank{rank:02d}/{artifact_name}")
        >>> template.format(
        ...     artifact_name="ep1.pt", run_name="llama", rank=3, local_rank=3,
        ...     world_size=8, local_world_size=8, node_rank=0,
        ... )
        'llama/rank03/ep1.pt'
    """

    template: str

    def __post_init__(self) -> None:
        if not isinstance(self.template, str):
            raise ConfigurationError(
                f"object_name template must be a str, not {type(self.template).__name__}"
            )
        if _not_utf8(self.template):
            raise ConfigurationError(
                f"object_name template {self.template!r} is not valid UTF-8 "
                "(it holds a lone surrogate); object stores take UTF-8 names only"
            )
        fields = self._fields(self.template)
        if "artifact_name" not in fields:
            raise ConfigurationError(
                f"object_name template {self.template!r} does not use {{artifact_name}}, "
                "so every artifact would get the same object name; "
                f"add it, e.g. '{{run_name}}/{{artifact_name}}'; allowed: {_ALLOWED}"
            )
        try:
            self.template.format(**_SAMPLE_VALUES)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"object_name template {self.template!r} cannot be formatted: {exc}; "
                "string fields ({artifact_name}, {run_name}) take string format specs, "
                "the others integer ones such as {rank:03d}"
            ) from exc

    def _fields(self, text: str) -> set[str]:
        """Return the field names used in ``text``, raising on any that is not allowed."""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigurationError(
                f"object_name template {self.template!r} is malformed: {exc}; "
                "write a literal brace as '{{' or '}}'"
            ) from exc
        fields: set[str] = set()
        for _literal, field, spec, _conversion in parsed:
            if field is None:
                continue
            if field == "" or field.isdigit():
                raise ConfigurationError(
                    f"object_name template {self.template!r} uses a positional field "
                    f"'{{{field}}}'; name the field instead; allowed: {_ALLOWED}"
                )
            if "." in field or "[" in field:
                raise ConfigurationError(
                    f"object_name template {self.template!r} uses '{{{field}}}': "
                    f"attribute and index access are not supported; allowed: {_ALLOWED}"
                )
            if field not in OBJECT_NAME_FIELDS:
                raise ConfigurationError(
                    f"object_name template {self.template!r} uses unknown field "
                    f"'{field}'; allowed: {_ALLOWED}"
                )
            fields.add(field)
            # A format spec may hold nested fields ("{rank:0{width}d}"): they
            # are formatted from the same keywords, so they obey the same rules.
            if spec:
                fields |= self._fields(spec)
        return fields

    def format(
        self,
        *,
        artifact_name: str,
        run_name: str,
        rank: int,
        local_rank: int,
        world_size: int,
        local_world_size: int,
        node_rank: int,
    ) -> str:
        """Return the object name of one artifact.

        The leading ``/`` of the formatted name is stripped: users write
        artifact names like ``/checkpoints/ep1.pt`` and mean a key without one.

        Parameters:
            artifact_name: the name the user gave the artifact.
            run_name: the training run's name.
            rank: global rank of this process.
            local_rank: rank of this process on its node.
            world_size: number of processes in the run.
            local_world_size: number of processes on this node.
            node_rank: index of this node.

        Returns:
            The object name, without a leading ``/``.

        Raises:
            ConfigurationError: the artifact name is invalid (see
                :func:`validate_artifact_name`), or the formatted name is empty,
                has a ``..``, ``.`` or empty segment (``a//b``, a trailing ``/``),
                a NUL character or is not valid UTF-8; the message quotes the
                template, the artifact name and the resulting name.

        Example:
            >>> ObjectNameTemplate("/{run_name}/{artifact_name}").format(
            ...     artifact_name="ep1.pt", run_name="r", rank=0, local_rank=0,
            ...     world_size=1, local_world_size=1, node_rank=0,
            ... )
            'r/ep1.pt'
        """
        validate_artifact_name(artifact_name)
        name = self.template.format(
            artifact_name=artifact_name,
            run_name=run_name,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=node_rank,
        ).lstrip("/")
        problem = None
        if not name:
            problem = "is empty"
        elif "\0" in name:
            problem = "contains a NUL character"
        elif ".." in name.split("/"):
            problem = "has a '..' segment"
        elif _not_utf8(name):
            problem = "is not valid UTF-8"
        elif any(segment in ("", ".") for segment in name.split("/")):
            # SFTP and local stores map names to paths, where 'a//b', 'a/./b'
            # and 'a/b' are one file and 'a/.' or 'a/' is a directory: refused
            # rather than silently rewritten, so an object is where it was named.
            problem = "has an empty or '.' segment ('a//b', 'a/./b' or a trailing '/')"
        if problem is not None:
            raise ConfigurationError(
                f"object name {name!r} (template {self.template!r}, "
                f"artifact name {artifact_name!r}, run name {run_name!r}) {problem}; "
                "change the template, the run name or the artifact name"
            )
        return name
