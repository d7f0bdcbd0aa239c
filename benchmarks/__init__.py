"""hoist's benchmark suite (issue 6): hoist against the tools users would pick instead.

Run everything with ``python -m benchmarks`` from the repository root (or
``bash deploy/bootstrap.sh bench``); see :mod:`benchmarks.__main__`.
"""
