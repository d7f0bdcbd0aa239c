"""The ``hoist`` subcommands, one module each.

Each module has ``register(commands)``, which adds its parser to the
``argparse`` subparsers and sets ``func`` to the function that runs it.
A command returns its exit code and raises :class:`~hoist.errors.HoistError`
for a failure the user can mend; ``hoist.cli`` prints that as one sentence.

``hoist.cli`` imports every command module to build its parser (``--help``
lists them all). Measured on a 2-core machine: ``import hoist.cli`` takes
0.05 s, building the parser 0.45 s, of which about 0.2 s is Celery (the
worker, Flower, up and retry commands need it); a command that needs no
Celery (``status``) would start about 0.15 s sooner if only its module were
imported. That would take a parser module per command apart from its code,
which is not worth it for a command-line tool's start-up; so they load
eagerly, with their imports at the top.
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
