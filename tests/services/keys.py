"""The fleet key the whole suite shares: set once, before any logger or worker starts.

Workers act only on messages signed with the fleet key, and loggers need one
to sign; a test that wants another key (a rotation, a foreign key) passes it
explicitly to both sides.
"""

from __future__ import annotations

import os

from hoist.keys import FleetKeys, new_fleet_key

FLEET_KEY = os.environ.setdefault("HOIST_FLEET_KEY", new_fleet_key())

KEYS = FleetKeys.parse(FLEET_KEY)
"""The suite's keys, for tests that build and sign messages as a rank does."""
