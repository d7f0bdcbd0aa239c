"""The state store: artifact records, leases and the deferred schedule, in Redis.

==============================  ====================================================
:mod:`~hoist.state.records`     the record of each artifact: create, claim, renew,
                                settle, read (:class:`~hoist.state.records.Records`)
:mod:`~hoist.state.states`      the words of a record: ``State`` and ``Claim``
:mod:`~hoist.state.keys`        every Redis key, and the marker's one format
:mod:`~hoist.state.schedule`    when a deferred artifact is sent again: backoff,
                                holding back, the watchdog's due times and trigger
:mod:`~hoist.state.leases`      fleet-wide concurrency limits that expire
:mod:`~hoist.state.scripts`     the Lua scripts (``scripts/*.lua``) behind each
                                atomic decision, and their loader
:mod:`~hoist.state.connection`  reaching the records on a URL, or why not
==============================  ====================================================
"""
