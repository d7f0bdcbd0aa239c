"""The Celery app and its tasks: upload, symlink; records, leases, retry and verify policy."""
