"""The fleet's worker core: the Celery app, its thin task adapters, and the jobs they run."""
