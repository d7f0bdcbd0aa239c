"""Flower's configuration file for hoist, passed as ``--conf`` by ``hoist flower``.

Flower executes this file and keeps the names it knows as options. Naming
it explicitly also keeps Flower from executing a ``flowerconfig.py`` that
happens to lie in the working directory.
"""

from hoist.workers.flower import TASKS_COLUMNS

tasks_columns = TASKS_COLUMNS
