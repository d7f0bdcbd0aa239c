"""The state store: artifact records, leases and the deferred schedule, in Redis."""
