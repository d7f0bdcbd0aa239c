"""Real servers on loopback for the test suite: Redis, S3 (moto, rclone), sshd.

Each module holds one server as a small class with ``start()``/``stop()``; the
fixtures in ``tests/conftest.py`` start them once per session. Every server
runs on 127.0.0.1 and a free port, writes its log under the session's
temporary directory, and that log is printed when a test fails.
"""
