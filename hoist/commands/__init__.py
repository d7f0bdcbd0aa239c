"""The ``hoist`` subcommands, one module each.

Each module has ``register(commands)``, which adds its parser to the
``argparse`` subparsers and sets ``func`` to the function that runs it.
A command returns its exit code and raises :class:`~hoist.errors.HoistError`
for a failure the user can mend; ``hoist.cli`` prints that as one sentence.
"""

COMMANDS = (
    "up",
    "down",
    "demo",
    "status",
    "wait",
    "retry",
    "verify",
    "download",
    "worker",
    "flower",
    "selfcheck",
    "keygen",
)
"""In the order ``hoist --help`` lists them."""
