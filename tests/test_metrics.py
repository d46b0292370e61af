"""Tests for course_lib.metrics: instruments fed by engine and pool events, and quantiles."""

from __future__ import annotations

import math
import random
import threading
import time

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from course_lib.backends import Backend
from course_lib.lessons.monitoring import bucket_of, exact_quantile
from course_lib.measure import count_statements
from course_lib.metrics import (
    DURATION_BUCKETS,
    EngineMetrics,
    histogram_quantile,
    instrument,
    statement_kind,
)
from course_lib.models import User


@pytest.fixture(params=["sqlite_db", "pg_service"])
def db(request: pytest.FixtureRequest) -> Backend:
    """The tiny dataset on SQLite and on the PostgreSQL service."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"),
        ("  select\n 1", "select"),
        ("INSERT INTO t VALUES (1)", "insert"),
        ("update t set a = 1", "update"),
        ("DELETE FROM t", "delete"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "select"),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", "update"),
        ("PRAGMA foreign_keys", "other"),
        ("BEGIN", "other"),
        ("", "other"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


def _work(db: Backend, lookups: int) -> None:
    """Lookups on both engines, and one failing statement."""
    with db.Session() as session:
        for i in range(1, lookups + 1):
            session.get(User, i)
        with pytest.raises(DBAPIError):
            session.execute(text("SELECT * FROM no_such_table"))

    async def more() -> None:
        async with db.AsyncSession() as session:
            await session.scalar(select(User.name).where(User.id == 1))

    db.run(more)


def test_instrument_counts_times_and_errors_by_kind(db: Backend) -> None:
    with instrument(db) as metrics, count_statements(db) as log:
        _work(db, 4)
    backend = db.name
    assert log.count == 5  # the failed statement never reaches after_cursor_execute
    assert metrics.value("sqlalchemy_statements_total", kind="select", backend=backend) == 6
    assert metrics.value("sqlalchemy_statements_total", kind="insert", backend=backend) == 0
    timed = metrics.value(
        "sqlalchemy_statement_duration_seconds_count", kind="select", backend=backend
    )
    assert timed == 5
    assert (
        metrics.value("sqlalchemy_statement_duration_seconds_sum", kind="select", backend=backend)
        > 0
    )
    errors = metrics.counts()
    select_row = errors[errors["kind"] == "select"].iloc[0]
    assert (select_row["statements"], select_row["errors"], select_row["timed"]) == (6, 1, 5)
    error_class = {"sqlite": "OperationalError", "postgresql": "UndefinedTable"}[backend]
    labels = {"kind": "select", "backend": backend, "error": error_class}
    assert metrics.value("sqlalchemy_statement_errors_total", **labels) == 1


def test_exposition_parses_and_checked_lines_are_deterministic(db: Backend) -> None:
    with instrument(db.sync_engine) as metrics:
        _lookups(db, 3)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition())}
    assert {"sqlalchemy_statements", "sqlalchemy_statement_duration_seconds"} <= set(families)
    assert {"sqlalchemy_pool_checked_out", "sqlalchemy_pool_checkout_seconds"} <= set(families)
    checked = metrics.checked()
    assert f'sqlalchemy_statements_total{{backend="{db.name}",kind="select"}} 3.0' in checked
    count_line = f'sqlalchemy_statement_duration_seconds_count{{backend="{db.name}",kind="select"}}'
    assert f"{count_line} 3.0" in checked
    for volatile in ("_bucket", "_sum", "_created", "sqlalchemy_pool"):
        assert volatile not in checked
    with instrument(db.sync_engine) as again:
        _lookups(db, 3)
    assert again.checked() == checked


def _lookups(db: Backend, n: int) -> None:
    with db.Session() as session:
        for i in range(1, n + 1):
            session.get(User, i)


def test_instrumenting_again_replaces_instead_of_doubling(sqlite_db: Backend) -> None:
    engine = sqlite_db.sync_engine
    first = instrument(engine)
    second = instrument(engine)  # a re-run cell: no "Duplicated timeseries", no double counts
    try:
        _lookups(sqlite_db, 2)
        assert first.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 0
        assert second.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 2
        assert first.registry is not second.registry
    finally:
        second.remove()
    assert "connect" not in engine.pool.__dict__  # the pool class's method again
    _lookups(sqlite_db, 2)
    assert second.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 2


def test_never_the_global_registry(sqlite_db: Backend) -> None:
    with instrument(sqlite_db.sync_engine) as metrics:
        _lookups(sqlite_db, 1)
    assert metrics.registry is not prometheus_client.REGISTRY
    names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("sqlalchemy_") for name in names)


def test_several_targets_feed_one_registry(sqlite_db: Backend, pg_service: Backend) -> None:
    with instrument(sqlite_db.sync_engine, pg_service.sync_engine) as metrics:
        _lookups(sqlite_db, 2)
        _lookups(pg_service, 3)
    assert metrics.backends == ("sqlite", "postgresql")
    assert metrics.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 2
    assert metrics.value("sqlalchemy_statements_total", kind="select", backend="postgresql") == 3


def test_pool_gauges_follow_checkouts(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_size=2, max_overflow=2)
    try:
        with instrument(engine, timeline=True) as metrics:
            held = [engine.connect() for _ in range(3)]
            assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 3
            assert metrics.value("sqlalchemy_pool_overflow", backend="sqlite") == 1
            for conn in held:
                conn.close()
            assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 0
            assert metrics.value("sqlalchemy_pool_overflow", backend="sqlite") == 0
        assert metrics.value("sqlalchemy_pool_checkout_seconds_count", backend="sqlite") == 3
        frame = metrics.pool_frame()
        assert frame["checked_out"].max() == 3 and frame["checked_out"].iloc[-1] == 0
        assert frame["ms"].is_monotonic_increasing
    finally:
        engine.dispose()


def test_a_request_waiting_for_the_pool_is_seen(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_size=1, max_overflow=0, pool_timeout=30)
    try:
        with instrument(engine, timeline=True) as metrics:
            holder = engine.connect()
            done = threading.Event()

            def second() -> None:
                with engine.connect() as conn:  # waits: the only connection is held
                    conn.execute(text("SELECT 1"))
                done.set()

            thread = threading.Thread(target=second)
            thread.start()
            deadline = time.monotonic() + 30
            while metrics.value("sqlalchemy_pool_waiting", backend="sqlite") < 1:
                assert time.monotonic() < deadline, "the second request never waited"
                time.sleep(0.001)
            assert not done.is_set()
            holder.close()
            thread.join(30)
            assert done.is_set()
        assert metrics.value("sqlalchemy_pool_waiting", backend="sqlite") == 0
        frame = metrics.pool_frame()
        waiting_while_full = frame[(frame["waiting"] == 1) & (frame["checked_out"] == 1)]
        assert not waiting_while_full.empty
    finally:
        engine.dispose()


def test_waiting_counts_only_requests_the_full_pool_makes_wait(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_size=2, max_overflow=1)
    try:
        with instrument(engine, timeline=True) as metrics:
            held = [engine.connect() for _ in range(3)]  # each opens one: nobody waits
            assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 3
            for conn in held:
                conn.close()
            with engine.connect(), engine.connect():  # idle ones are there: nobody waits
                pass
        assert metrics.pool_frame()["waiting"].max() == 0
        assert metrics.value("sqlalchemy_pool_checkout_seconds_count", backend="sqlite") == 5
    finally:
        engine.dispose()


def test_checked_out_starts_from_what_the_pool_has_out(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_size=2, max_overflow=0)
    try:
        before = engine.connect()  # checked out before instrumenting
        with instrument(engine) as metrics:
            assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 1
            before.close()
            assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 0
        null = create_engine(sqlite_db.sync_url, poolclass=NullPool)  # a pool that cannot say
        try:
            early = null.connect()
            with instrument(null) as metrics:
                early.close()
                assert metrics.value("sqlalchemy_pool_checked_out", backend="sqlite") == 0
        finally:
            null.dispose()
    finally:
        engine.dispose()


def test_option_engines_and_disposed_pools_are_timed(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_size=2, max_overflow=0)
    try:
        with instrument(engine) as metrics:
            fast = engine.execution_options(compiled_cache=None)  # shares the pool
            with fast.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()  # a new pool: wrapped again
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            old_pool = engine.pool
        assert metrics.value("sqlalchemy_pool_checkout_seconds_count", backend="sqlite") == 2
        assert metrics.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 2
        assert "connect" not in old_pool.__dict__
    finally:
        engine.dispose()


def test_durations_are_kept_per_backend(sqlite_db: Backend, pg_service: Backend) -> None:
    with instrument(sqlite_db.sync_engine, pg_service.sync_engine, record_durations=True) as m:
        _lookups(sqlite_db, 3)
        _lookups(pg_service, 5)
    assert m.durations is not None
    assert {key: len(values) for key, values in m.durations.items()} == {
        ("sqlite", "select"): 3,
        ("postgresql", "select"): 5,
    }
    for backend in ("sqlite", "postgresql"):
        exact = exact_quantile(m.durations[(backend, "select")], 0.95)
        lower, upper = bucket_of(exact)
        assert lower <= m.quantile(0.95, "select", backend=backend) <= upper


def test_async_engines_are_instrumented_through_sync_engine(db: Backend) -> None:
    async def lookups() -> None:
        async with db.AsyncSession() as session:
            for i in range(1, 4):
                await session.get(User, i)

    with instrument(db.engine) as metrics:
        db.run(lookups)
    assert metrics.value("sqlalchemy_statements_total", kind="select", backend=db.name) == 3
    assert metrics.value("sqlalchemy_pool_checkout_seconds_count", backend=db.name) >= 1
    assert metrics.value("sqlalchemy_pool_checked_out", backend=db.name) == 0


# ----------------------------------------------------------------------------- quantiles


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 2), (0.2, 6), (0.5, 10), (math.inf, 10)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.175)  # rank 5: 3/4 into (0.1, 0.2]
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.05)  # rank 1: half of (0, 0.1]
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.99, [(0.1, 1), (math.inf, 5)]) == 0.1  # in +Inf: highest bound
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]))
    # out of range, as PromQL answers: +Inf above 1, -Inf below 0, NaN for NaN
    assert histogram_quantile(1.01, buckets) == math.inf
    assert histogram_quantile(-0.5, buckets) == -math.inf
    assert math.isnan(histogram_quantile(math.nan, buckets))


@pytest.mark.parametrize("seed", range(20))
def test_interpolated_quantile_lies_in_the_exact_quantiles_bucket(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(rng.randint(1, 400))]
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=DURATION_BUCKETS, registry=registry)
    for value in values:
        histogram.observe(value)
    buckets = [
        (float(s.labels["le"]), s.value)
        for f in registry.collect()
        for s in f.samples
        if s.name == "h_bucket"
    ]
    for q in (0.5, 0.9, 0.95, 0.99):
        estimate = histogram_quantile(q, buckets)
        lower, upper = bucket_of(exact_quantile(values, q))
        if math.isinf(upper):  # PromQL answers the highest finite bound
            assert estimate == DURATION_BUCKETS[-1]
        else:
            assert lower <= estimate <= upper


def test_metrics_object_reads_its_own_buckets(sqlite_db: Backend) -> None:
    with instrument(sqlite_db.sync_engine, record_durations=True) as metrics:
        _lookups(sqlite_db, 20)
    assert isinstance(metrics, EngineMetrics)
    estimate = metrics.quantile(0.95, "select")
    exact = exact_quantile(metrics.durations[("sqlite", "select")], 0.95)
    lower, upper = bucket_of(exact)
    assert lower <= estimate <= upper
    frame = metrics.buckets()
    assert set(frame.columns) == {"kind", "backend", "le", "cumulative"}
    assert frame[frame["kind"] == "select"]["cumulative"].max() == 20


def test_remove_is_idempotent(sqlite_db: Backend) -> None:
    metrics = instrument(sqlite_db.sync_engine)
    metrics.remove()
    metrics.remove()
    _lookups(sqlite_db, 1)
    assert metrics.value("sqlalchemy_statements_total", kind="select", backend="sqlite") == 0


def test_instrument_needs_a_target() -> None:
    with pytest.raises(TypeError, match="at least one"):
        instrument()
