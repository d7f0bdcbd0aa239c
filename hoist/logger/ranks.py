"""Where this process sits in the training job: rank facts (and the job's name) from the launcher.

These are the launcher's variables, not hoist's (``HOIST_*`` come from
:class:`hoist.settings.RankSettings`); the logger's constructor reads them
once, through :meth:`RankInfo.from_environment` and :func:`launcher_run_name`.

Sources, first match wins for each field:

1. explicit arguments to :meth:`RankInfo.from_environment`;
2. the launcher's environment, read from *one* launcher: torchrun when
   ``RANK`` or ``WORLD_SIZE`` is set, otherwise Slurm when ``SLURM_PROCID`` is
   set. The two are never mixed field by field, because torchrun is commonly
   started by ``srun`` with one Slurm task per node: there ``SLURM_PROCID`` is
   the node's index and ``SLURM_NTASKS`` the node count, and taking either as
   a rank fact would be wrong;
3. values derived from the others (``local_world_size`` from the node count,
   ``local_rank`` and ``node_rank`` from ``rank`` and ``local_world_size``);
4. a single process: rank 0 of 1 on node 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from hoist.errors import ConfigurationError
from hoist.settings import environment

_TORCHRUN_MARKERS = ("RANK", "WORLD_SIZE")
_SLURM_MARKER = "SLURM_PROCID"

# One entry of Slurm's compressed per-node task list: "4" or "4(x2)".
_TASKS_ENTRY = re.compile(r"\s*(\d+)\s*(?:\(x\s*(\d+)\s*\))?\s*")


@dataclass(frozen=True)
class RankInfo:
    """Rank facts of one training process.

    Parameters:
        rank: global rank, ``0 <= rank < world_size``.
        local_rank: rank on this node, ``0 <= local_rank < local_world_size``.
        world_size: number of processes in the job.
        local_world_size: number of processes on this node.
        node_rank: index of this node, ``>= 0``.

    Raises:
        ConfigurationError: the values are inconsistent (see above).

    Example:
        >>> RankInfo.from_environment({"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16",
        ...                            "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1"})
        RankInfo(rank=9, local_rank=1, world_size=16, local_world_size=8, node_rank=1)
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int

    def __post_init__(self) -> None:
        _validate(
            {f.name: getattr(self, f.name) for f in fields(self)},
            {f.name: "argument" for f in fields(self)},
        )

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        local_world_size: int | None = None,
        node_rank: int | None = None,
    ) -> RankInfo:
        """Read the rank facts from the launcher's environment.

        Parameters:
            environ: the environment to read; the process's when ``None``.
            rank: overrides the environment when not ``None``.
            local_rank: overrides the environment when not ``None``.
            world_size: overrides the environment when not ``None``.
            local_world_size: overrides the environment when not ``None``.
            node_rank: overrides the environment when not ``None``.

        Returns:
            The rank facts; a single process (rank 0 of 1) when nothing is set.

        Raises:
            ConfigurationError: a variable is not an integer (the message names
                it and its value), or the values are inconsistent (the message
                names the values and where each came from).

        Example:
            >>> RankInfo.from_environment({"SLURM_PROCID": "5", "SLURM_LOCALID": "1",
            ...                            "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4",
            ...                            "SLURM_NODEID": "1"})
            RankInfo(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1)
            >>> RankInfo.from_environment({}, rank=2, world_size=4).local_rank
            2
        """
        env = environment(environ)
        values: dict[str, int] = {}
        sources: dict[str, str] = {}
        for name, value in (
            ("rank", rank),
            ("local_rank", local_rank),
            ("world_size", world_size),
            ("local_world_size", local_world_size),
            ("node_rank", node_rank),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be an int, not {value!r}")
            values[name] = value
            sources[name] = "argument"

        def take(field: str, variable: str) -> None:
            if field not in values and variable in env:
                values[field] = _parse_int(variable, env[variable])
                sources[field] = variable

        if any(marker in env for marker in _TORCHRUN_MARKERS):
            take("rank", "RANK")
            take("local_rank", "LOCAL_RANK")
            take("world_size", "WORLD_SIZE")
            take("local_world_size", "LOCAL_WORLD_SIZE")
            take("node_rank", "GROUP_RANK")
            take("node_rank", "NODE_RANK")
            node_count_variables: tuple[str, ...] = ("GROUP_WORLD_SIZE",)
        elif _SLURM_MARKER in env:
            take("rank", "SLURM_PROCID")
            take("local_rank", "SLURM_LOCALID")
            take("world_size", "SLURM_NTASKS")
            take("node_rank", "SLURM_NODEID")
            if "local_world_size" not in values:
                _slurm_local_world_size(env, values, sources)
            node_count_variables = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
        else:
            node_count_variables = ()

        values.setdefault("rank", 0)
        sources.setdefault("rank", "default")
        values.setdefault("world_size", 1)
        sources.setdefault("world_size", "default")
        if "local_world_size" not in values:
            _derive_local_world_size(env, node_count_variables, values, sources)
        lws = values["local_world_size"]
        if "local_rank" not in values:
            values["local_rank"] = values["rank"] % lws if lws > 0 else 0
            sources["local_rank"] = f"derived: rank % local_world_size ({sources['rank']})"
        if "node_rank" not in values:
            values["node_rank"] = values["rank"] // lws if lws > 0 else 0
            sources["node_rank"] = f"derived: rank // local_world_size ({sources['rank']})"
        _validate(values, sources)
        return cls(**values)


def launcher_run_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The job's name as the launcher gives it: torchrun's run id, else the Slurm job's.

    Every rank of a job sees the same value, so it can name the run when
    neither the logger's ``run_name`` nor ``HOIST_RUN_NAME`` does.

    Parameters:
        environ: the environment to read; the process's when ``None``.

    Returns:
        ``TORCHELASTIC_RUN_ID`` (unless torchrun's placeholder ``none``), else
        ``slurm-<SLURM_JOB_ID>``, else None.

    Example:
        >>> launcher_run_name({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "4242"})
        'slurm-4242'
        >>> launcher_run_name({}) is None
        True
    """
    env = environment(environ)
    torchrun = env.get("TORCHELASTIC_RUN_ID")
    if torchrun and torchrun != "none":
        return torchrun
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return None


def _parse_int(variable: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {variable}={text!r} is not an integer; "
            f"fix or unset {variable}, or pass the value to the logger explicitly"
        ) from None


def _parse_tasks_per_node(variable: str, text: str) -> list[int]:
    """Expand Slurm's compressed task list, ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for entry in text.split(","):
        match = _TASKS_ENTRY.fullmatch(entry)
        if match is None:
            raise ConfigurationError(
                f"environment variable {variable}={text!r} is not a Slurm task list "
                "such as '4' or '4(x2),3'; fix or unset it, or pass local_world_size"
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm_local_world_size(
    env: Mapping[str, str], values: dict[str, int], sources: dict[str, str]
) -> None:
    # The step's own layout first: srun may run fewer tasks than the job
    # requested. A list like "4(x2),3" differs per node; SLURM_NODEID picks
    # this node's entry, and the first one stands in when the index is off the
    # list (SLURM_NODEID counts the job's nodes, the step may use a subset).
    for variable in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if variable in env:
            counts = _parse_tasks_per_node(variable, env[variable])
            node = values.get("node_rank", 0)
            values["local_world_size"] = counts[node] if 0 <= node < len(counts) else counts[0]
            sources["local_world_size"] = variable
            return


def _derive_local_world_size(
    env: Mapping[str, str],
    node_count_variables: tuple[str, ...],
    values: dict[str, int],
    sources: dict[str, str],
) -> None:
    world_size = values["world_size"]
    for variable in node_count_variables:
        if variable in env:
            nodes = _parse_int(variable, env[variable])
            if nodes > 0 and world_size % nodes == 0:
                values["local_world_size"] = world_size // nodes
                sources["local_world_size"] = f"derived: world_size / {variable}"
                return
    # Nothing says how many nodes there are: assume one, which keeps every
    # rank valid and gives node_rank 0.
    values["local_world_size"] = world_size
    sources["local_world_size"] = "default: world_size (one node)"


def _validate(values: Mapping[str, int], sources: Mapping[str, str]) -> None:
    def show(name: str) -> str:
        return f"{name}={values[name]} (from {sources[name]})"

    for name in ("world_size", "local_world_size"):
        if values[name] < 1:
            raise ConfigurationError(f"{show(name)} must be at least 1")
    if not 0 <= values["rank"] < values["world_size"]:
        raise ConfigurationError(
            f"{show('rank')} must be in [0, world_size) with {show('world_size')}"
        )
    if not 0 <= values["local_rank"] < values["local_world_size"]:
        raise ConfigurationError(
            f"{show('local_rank')} must be in [0, local_world_size) with {show('local_world_size')}"
        )
    if values["node_rank"] < 0:
        raise ConfigurationError(f"{show('node_rank')} must not be negative")
