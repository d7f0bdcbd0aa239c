"""hiredis is installed and used, and the parser benchmark (benchmarks/redis_parser.py) reads
what it wrote through both parsers, against a real redis-server."""

from __future__ import annotations

from pathlib import Path

import redis.connection
import redis.utils

from benchmarks.redis_parser import RUN, read_once, write_records
from benchmarks.services import private_redis
from hoist.state.records import Records
from hoist.state.states import State


def test_redis_py_parses_with_hiredis() -> None:
    # hoist depends on redis[hiredis]: without it every reply is parsed in Python
    # (a run's records read 3.5x slower, benchmarks/redis_parser.py).
    assert redis.utils.HIREDIS_AVAILABLE
    assert redis.connection.DefaultParser is redis.connection._HiredisParser


def test_both_parsers_read_every_record_the_benchmark_wrote(tmp_path: Path) -> None:
    with private_redis(str(tmp_path / "redis")) as url:
        records = Records.from_url(url)
        write_records(records, 12)
        found = records.run_artifacts(RUN)
        assert [s.state for s in found] == [State.DONE] * 12
        assert found[0].fields["verified_by"] == "etag-md5"
        for parser in ("hiredis", "python"):
            assert 0 < read_once(url, parser, 12) < 5
