"""The ``hoist`` subcommands, one module each.

Each module has ``register(commands)``, which adds its parser to the
``argparse`` subparsers and sets ``func`` to the function that runs it.
A command returns its exit code and raises :class:`~hoist.errors.HoistError`
for a failure the user can mend; ``hoist.cli`` prints that as one sentence.

``hoist.cli`` imports only the module of the command a command line names
(every one for ``hoist --help`` or a name it does not know). Measured on a
2-core machine: building every command's parser took 0.45 s, of which about
0.2 s is Celery (the worker, Flower, up and retry commands need it), and a
`hoist download` of a checkpoint, which a restarted job waits for, paid it
all (issue 17).
"""

COMMANDS = (
    "up",
    "down",
    "demo",
    "status",
    "wait",
    "retry",
    "verify",
    "gc",
    "download",
    "worker",
    "flower",
    "exporter",
    "selfcheck",
    "keygen",
)
"""In the order ``hoist --help`` lists them."""
