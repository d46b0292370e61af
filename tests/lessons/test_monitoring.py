"""Tests for course_lib.lessons.monitoring: the workloads, the detectors side by side, the
pytest runner, and the exercise check fed every naive answer the notebook warns about."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry, Counter, Histogram, Summary
from sqlalchemy import Engine, event, func, select

from course_lib.backends import Backend
from course_lib.data import reset_schema
from course_lib.lessons import monitoring as lesson
from course_lib.measure import count_statements
from course_lib.metrics import instrument, statement_kind
from course_lib.models import Post, User


@pytest.fixture(params=["sqlite_db", "pg_service"])
def db(request: pytest.FixtureRequest) -> Backend:
    """The tiny dataset (12 users, 25 dealerships) on SQLite and on the PostgreSQL service."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def scratch(db: Backend, fresh_database: Any) -> Iterator[Backend]:
    """Empty course tables beside ``db``, in a database unique to this run."""
    copy = reset_schema(fresh_database(db, "monitoring"))
    yield copy
    copy.run(copy.dispose)


# ------------------------------------------------------------------ the detectors, compared


def test_detectors_side_by_side(db: Backend) -> None:
    frame = db.run(lesson.compare_detectors([db], 10))
    rows = {row["case"]: row for row in frame.to_dict("records")}
    assert list(rows) == [lesson._label(fn) for fn, _ in lesson.CASES]
    spy = {case: row["queryspy"] for case, row in rows.items()}
    block = {case: row["course, per block"] for case, row in rows.items()}
    per_tx = {case: row["course, per transaction"] for case, row in rows.items()}
    dealerships = rows["01's exercise report (with_parent)"]["statements"] - 1
    assert dealerships >= 3
    # the course's detector, per block: every N+1 found, each with its count
    expected = {
        "lazy loads, sync (01's silent N+1)": "N+1 × 10",
        "awaitable_attrs, async (01's N+1)": "N+1 × 10",
        "01's exercise report (with_parent)": f"N+1 × {dealerships}",
        "a Core text() loop on a Connection": "N+1 × 10",
        "the text() loop through a Session": "N+1 × 10",
        "a Core select() loop through a Session": "N+1 × 10",
        "a loop carrying a constant IN list of 2": "N+1 × 10",
        "lazy loads, a commit after each user": "N+1 × 10",
        "session.get, one Session per id": "N+1 × 10",
    }
    for case, report in expected.items():
        assert block[case] == report, case
    # ... no false alarm on batches; concurrent requests look like a loop to it
    for case in (
        "selectinload",
        "selectinload(chunksize=n // 3): IN batches",
        "selectinload over every post (chunks of 500)",
    ):
        assert block[case] == per_tx[case] == "nothing", case
    assert block["session.get in 4 threads (concurrent requests)"] == "N+1 × 10"
    assert block["asyncio.to_thread lookups (concurrent requests)"] == "N+1 × 10"
    # per transaction: concurrent requests apart, but commit-per-item and session-per-id missed
    assert per_tx["session.get in 4 threads (concurrent requests)"] == "nothing"
    assert per_tx["asyncio.to_thread lookups (concurrent requests)"] == "nothing"
    assert per_tx["lazy loads, a commit after each user"] == "nothing"
    assert per_tx["session.get, one Session per id"] == "nothing"
    assert per_tx["lazy loads, sync (01's silent N+1)"] == "N+1 × 10"
    # queryspy 0.6 on SQLAlchemy 2.1: the ORM N+1s, sync and async, are found ...
    assert spy["lazy loads, sync (01's silent N+1)"] == "lazy_load × 10"
    assert spy["awaitable_attrs, async (01's N+1)"] == "lazy_load × 10"
    assert spy["lazy loads, a commit after each user"] == "lazy_load × 10"
    assert spy["01's exercise report (with_parent)"] == f"repeated_statement × {dealerships}"
    assert spy["a Core select() loop through a Session"] == "repeated_statement × 10"
    assert spy["a loop carrying a constant IN list of 2"] == "repeated_statement × 10"
    assert spy["session.get, one Session per id"] == "repeated_statement × 10"
    # ... text() is counted (budgets see it) but never detected, on a Connection or a Session
    for case in ("a Core text() loop on a Connection", "the text() loop through a Session"):
        assert spy[case] == "nothing" and rows[case]["queryspy counted"] == 11, case
    # ... selectinload's batches are reported from two chunks on, chunksize or not
    assert spy["selectinload(chunksize=n // 3): IN batches"] == "repeated_statement × 4"
    with db.Session() as session:
        posts = session.scalar(select(func.count()).select_from(Post))
    chunks = lesson.selectin_chunks(posts)
    every_post = "selectinload over every post (chunks of 500)"
    assert rows[every_post]["statements"] == 1 + chunks
    assert spy[every_post] == (f"repeated_statement × {chunks}" if chunks >= 2 else "nothing")
    # ... threads: to_thread copies the context, so queryspy sees it; a thread pool does not
    threads = rows["session.get in 4 threads (concurrent requests)"]
    assert threads["statements"] == 10 and threads["queryspy counted"] == 0
    to_thread = rows["asyncio.to_thread lookups (concurrent requests)"]
    assert to_thread["queryspy counted"] == 10
    assert spy["asyncio.to_thread lookups (concurrent requests)"] == ("repeated_statement × 10")
    verdicts = lesson.detector_verdicts(frame)
    assert verdicts.loc["course, per block", "missed N+1s"] == "none"
    assert verdicts.loc["course, per transaction", "false alarms"] == "none"
    assert "text() loop" in verdicts.loc["queryspy", "missed N+1s"]


def test_selectin_chunk_is_sqlalchemys_default() -> None:
    from sqlalchemy.orm import strategies

    assert strategies._SelectInLoader._chunksize == lesson.SELECTIN_CHUNK
    assert [lesson.selectin_chunks(n) for n in (36, 500, 501, 2_000)] == [1, 1, 2, 4]


def test_queryspy_message_is_machine_independent() -> None:
    error = AssertionError(
        "expected at most 2 queries, got 11\n\n0.4ms in the database\n\n"
        "N+1 detected: 10 queries for User.posts (lazy load)\n"
        "  triggered from /tmp/course-pytest-ab12/app.py:7 in users_page()"
    )
    assert lesson.queryspy_message(error) == (
        "expected at most 2 queries, got 11\n\n"
        "N+1 detected: 10 queries for User.posts (lazy load)\n"
        "  triggered from app.py:7 in users_page()"
    )


def test_the_guides_hand_counted_metrics_miss_the_lazy_loads(db: Backend) -> None:
    guide = lesson.GuideMetrics()
    with count_statements(db) as log, db.Session() as session:
        lesson.guide_users_page(guide, session, 5)
    counted = guide.registry.get_sample_value("db_queries_total", {"query": "get_user"})
    assert counted == 5 and log.count == 10


def test_the_guides_counter_defined_twice_raises_and_cleans_up() -> None:
    for _ in range(2):  # the cell can be run again
        with pytest.raises(ValueError) as raised:
            lesson.guide_counter_defined_twice()
        assert str(raised.value) == (
            "Duplicated timeseries in CollectorRegistry: "
            "guide_db_queries, guide_db_queries_created, guide_db_queries_total"
        )
    names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert "guide_db_queries" not in names


def test_the_instrumentation_sentence_names_no_installed_version() -> None:
    sentence = lesson.instrumentation_support()
    assert sentence.startswith('The instrumentation declares "sqlalchemy')
    assert sqlalchemy.__version__ not in sentence


# -------------------------------------------------------------------- metrics, pool, alerts


def test_app_workload_sends_the_same_statements_every_round(db: Backend, scratch: Backend) -> None:
    n = lesson.page_size(12)

    async def rounds() -> None:
        try:
            for _ in range(2):
                await lesson.app_workload(db, scratch, n)
        finally:
            await scratch.engine.dispose()  # its pool belongs to this event loop

    with instrument(db, scratch, record_durations=True) as metrics:
        db.run(rounds)
    counts = metrics.counts().set_index("kind")[["statements", "errors", "timed"]]
    # per round: 1 + n lazy page, 2 selectinload, a search, a count, and the failing select
    assert counts.loc["select", "statements"] == 2 * (1 + n + 2 + 2 + 1)
    assert counts.loc["select", "errors"] == 2
    assert counts.loc["select", "timed"] == 2 * (1 + n + 2 + 2)
    for kind in ("insert", "update", "delete"):
        assert counts.loc[kind].tolist() == [2, 0, 2]
    table = lesson.p95_table(metrics)
    assert table["same bucket"].all()
    assert table.set_index("kind").loc["select", "statements"] == 2 * (1 + n + 2 + 2)
    alerts = lesson.alert_table(metrics).set_index("alert")
    errors = alerts.loc["StatementErrors"]
    assert errors["value"] == pytest.approx(2 / (2 * (n + 9)))
    assert bool(errors["firing"])
    assert set(alerts.index) == {"SlowStatements", "PoolWait", "StatementErrors"}
    chart = lesson.histogram_chart(metrics, "statements per bucket")
    assert chart.axes


def test_p95_table_keeps_backends_apart(sqlite_db: Backend, pg_service: Backend) -> None:
    with instrument(sqlite_db.sync_engine, pg_service.sync_engine, record_durations=True) as m:
        for db, n in ((sqlite_db, 3), (pg_service, 6)):
            with db.Session() as session:
                for i in range(1, n + 1):
                    session.get(User, i)
    table = lesson.p95_table(m).set_index("backend")
    assert table.loc["sqlite", "statements"] == 3 and table.loc["postgresql", "statements"] == 6
    assert table["same bucket"].all()
    for backend in ("sqlite", "postgresql"):
        exact = lesson.exact_quantile(m.durations[(backend, "select")], 0.95)
        assert table.loc[backend, "exact p95 (ms)"] == round(exact * 1000, 3)


def test_p95_table_needs_the_durations(sqlite_db: Backend) -> None:
    with instrument(sqlite_db.sync_engine) as metrics, pytest.raises(ValueError):
        lesson.p95_table(metrics)


def test_concurrent_requests_fill_the_pool_and_no_more(db: Backend) -> None:
    async def run() -> dict[str, int]:
        engine = lesson.small_pool_engine(db, pool_size=2, max_overflow=1)
        try:
            with instrument(engine, timeline=True) as metrics:
                done = await lesson.concurrent_requests(engine, requests=8, think_s=0.005)
            assert done == 8
            return lesson.pool_facts(metrics)
        finally:
            await engine.dispose()

    facts = db.run(run)
    assert 1 < facts["max checked out"] <= 2 + 1
    assert facts["checkouts"] == 8
    assert facts["max waiting"] == 8 - (2 + 1)  # all ask at once; all but the pool's max wait


def test_requests_the_pool_can_serve_never_wait(db: Backend) -> None:
    async def run() -> dict[str, int]:
        engine = lesson.small_pool_engine(db, pool_size=2, max_overflow=1)
        try:
            with instrument(engine, timeline=True) as metrics:
                await lesson.concurrent_requests(engine, requests=3, think_s=0.005)
            return lesson.pool_facts(metrics)
        finally:
            await engine.dispose()

    facts = db.run(run)
    assert facts["max waiting"] == 0 and facts["checkouts"] == 3


def test_exact_quantile_and_buckets() -> None:
    assert lesson.exact_quantile([0.3, 0.1, 0.2], 0.5) == 0.2
    assert lesson.exact_quantile([1.0], 0.95) == 1.0
    assert lesson.bucket_of(0.0001) == (0.0, 0.0001)
    assert lesson.bucket_of(0.00011) == (0.0001, 0.00025)
    assert lesson.bucket_of(99.0) == (10.0, math.inf)


# --------------------------------------------------------------------------- tracing


def test_traced_pages_show_the_n_plus_one(db: Backend) -> None:
    frame = db.run(lesson.traced_pages(db, 5))
    summary = lesson.span_summary(frame).set_index("request")
    assert summary["statements"].tolist() == [1 + 5, 2]
    assert summary["connects"].tolist() == [1, 1]
    assert summary["spans"].tolist() == [1 + 1 + 6, 1 + 1 + 2]


# ------------------------------------------------------------------------ a pytest run


def test_run_pytest_reports_outcomes_and_first_lines(sqlite_db: Backend) -> None:
    files = {
        "conftest.py": 'pytest_plugins = ["course_lib.pytest_budgets"]\n',
        "test_x.py": (
            "from sqlalchemy import text\n"
            "from course_lib.backends import sqlite\n"
            "def test_fits(statement_budget):\n"
            "    db = sqlite('course_tiny')\n"
            "    with statement_budget(db.sync_engine, max_statements=0), db.Session() as s:\n"
            "        s.scalar(text('SELECT 1'))\n"
            "def test_ok():\n"
            "    pass\n"
        ),
    }
    run = lesson.run_pytest(files, ["sqlite"], "tiny")
    assert run.outcomes == {"test_fits": "failed", "test_ok": "passed"}
    assert run.returncode == 1
    assert run.summary(lines=2).splitlines() == [
        "test_fits: failed",
        "    course_lib.budgets.StatementBudgetExceeded: 1 statements, over the budget of 0:",
        "      1 × SELECT ?   first sent from test_x.py:6 in test_fits()",
        "test_ok: passed",
    ]


# ------------------------------------------------------------------------- the exercise


def _timed_listeners(
    engine: Engine,
    counter: Counter | None,
    histogram: Histogram | None,
    label: Callable[[str], str] | None,
) -> None:
    """Count in before_cursor_execute, time until after_cursor_execute (label None: none)."""
    if counter is not None:

        @event.listens_for(engine, "before_cursor_execute")
        def before(_c: Any, _cur: Any, sql: str, _p: Any, context: Any, _m: Any) -> None:
            context._t0 = time.perf_counter()
            (counter if label is None else counter.labels(label(sql))).inc()

    if histogram is not None:

        @event.listens_for(engine, "after_cursor_execute")
        def after(_c: Any, _cur: Any, sql: str, _p: Any, context: Any, _m: Any) -> None:
            timed = histogram if label is None else histogram.labels(label(sql))
            timed.observe(time.perf_counter() - context._t0)


def _instruments(registry: Any) -> tuple[Counter, Histogram]:
    counter = Counter("app_db_statements", "Statements.", ["kind"], registry=registry)
    histogram = Histogram(
        "app_db_statement_duration_seconds", "Durations.", ["kind"], registry=registry
    )
    return counter, histogram


def solution(engine: Engine) -> CollectorRegistry:
    """The notebook's solution: a registry per engine, a counter and a timed histogram."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    _timed_listeners(engine, counter, histogram, statement_kind)
    return registry


def stub(engine: Engine) -> CollectorRegistry:
    raise NotImplementedError("your turn")


def nothing(engine: Engine) -> CollectorRegistry:
    """Naive: instruments nothing."""
    return CollectorRegistry()


def by_hand(engine: Engine) -> CollectorRegistry:
    """Naive: the instruments exist, to be called by hand in the workload: no listeners."""
    registry = CollectorRegistry()
    _instruments(registry)
    return registry


_GLOBAL: list[Any] = []


def global_registry(engine: Engine) -> Any:
    """Naive: module-level instruments in the global default registry."""
    counter, histogram = _instruments(prometheus_client.REGISTRY)
    _GLOBAL.extend([counter, histogram])
    _timed_listeners(engine, counter, histogram, statement_kind)
    return prometheus_client.REGISTRY


def before_only(engine: Engine) -> CollectorRegistry:
    """Naive: only before_cursor_execute: counts, but no duration (empty histogram)."""
    registry = CollectorRegistry()
    counter, _histogram = _instruments(registry)
    _timed_listeners(engine, counter, None, statement_kind)
    return registry


def by_sql(engine: Engine) -> CollectorRegistry:
    """Naive: labelled by the SQL text (one time series per statement)."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    _timed_listeners(engine, counter, histogram, lambda sql: sql)
    return registry


def upper_kind(engine: Engine) -> CollectorRegistry:
    """Naive: the verb as written, SELECT, not select."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    _timed_listeners(engine, counter, histogram, lambda sql: sql.split()[0])
    return registry


def twice(engine: Engine) -> CollectorRegistry:
    """Naive: the listeners attached twice (every statement counted twice)."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    _timed_listeners(engine, counter, histogram, statement_kind)
    _timed_listeners(engine, counter, None, statement_kind)
    return registry


def hardcoded(engine: Engine) -> CollectorRegistry:
    """Naive: no listeners; the expected counts and durations typed in."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    for kind, n in {"insert": 1, "select": 5, "update": 1, "delete": 1}.items():
        counter.labels(kind).inc(n)
        for _ in range(n):
            histogram.labels(kind).observe(0.001)
    return registry


def fake_duration(engine: Engine) -> CollectorRegistry:
    """Naive: counts in before_cursor_execute and observes a constant there."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)

    @event.listens_for(engine, "before_cursor_execute")
    def before(_c: Any, _cur: Any, sql: str, _p: Any, _ctx: Any, _m: Any) -> None:
        counter.labels(statement_kind(sql)).inc()
        histogram.labels(statement_kind(sql)).observe(1e-6)

    return registry


def timer_in_before(engine: Engine) -> CollectorRegistry:
    """Naive: ``with histogram.time():`` inside before_cursor_execute times the listener."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)

    @event.listens_for(engine, "before_cursor_execute")
    def before(_c: Any, _cur: Any, sql: str, _p: Any, _ctx: Any, _m: Any) -> None:
        with histogram.labels(statement_kind(sql)).time():
            counter.labels(statement_kind(sql)).inc()

    return registry


def after_only(engine: Engine) -> CollectorRegistry:
    """Naive: only after_cursor_execute, timing from the previous statement."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)
    last = [time.perf_counter()]

    @event.listens_for(engine, "after_cursor_execute")
    def after(_c: Any, _cur: Any, sql: str, _p: Any, _ctx: Any, _m: Any) -> None:
        now = time.perf_counter()
        counter.labels(statement_kind(sql)).inc()
        histogram.labels(statement_kind(sql)).observe(now - last[0])
        last[0] = now

    return registry


def wall_clock(engine: Engine) -> CollectorRegistry:
    """Naive: the seed's time.time(), which follows the wall clock when it is set."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)

    @event.listens_for(engine, "before_cursor_execute")
    def before(_c: Any, _cur: Any, sql: str, _p: Any, context: Any, _m: Any) -> None:
        context._t0 = time.time()
        counter.labels(statement_kind(sql)).inc()

    @event.listens_for(engine, "after_cursor_execute")
    def after(_c: Any, _cur: Any, sql: str, _p: Any, context: Any, _m: Any) -> None:
        histogram.labels(statement_kind(sql)).observe(time.time() - context._t0)

    return registry


def summary(engine: Engine) -> CollectorRegistry:
    """Naive: a Summary (no buckets, no p95 across instances) instead of a Histogram."""
    registry = CollectorRegistry()
    counter = Counter("app_db_statements", "Statements.", ["kind"], registry=registry)
    durations = Summary("app_db_statement_duration_seconds", "D.", ["kind"], registry=registry)
    _timed_listeners(engine, counter, durations, statement_kind)  # type: ignore[arg-type]
    return registry


def unlabelled(engine: Engine) -> CollectorRegistry:
    """Naive: a counter and a histogram without labels."""
    registry = CollectorRegistry()
    counter = Counter("app_db_statements", "Statements.", registry=registry)
    histogram = Histogram("app_db_statement_duration_seconds", "D.", registry=registry)
    _timed_listeners(engine, counter, histogram, None)
    return registry


def unlabelled_histogram(engine: Engine) -> CollectorRegistry:
    """Naive: the counter labelled kind, the histogram not."""
    registry = CollectorRegistry()
    counter = Counter("app_db_statements", "Statements.", ["kind"], registry=registry)
    histogram = Histogram("app_db_statement_duration_seconds", "D.", registry=registry)
    _timed_listeners(engine, counter, None, statement_kind)
    _timed_listeners(engine, None, histogram, None)
    return registry


@pytest.fixture
def clean_global_registry() -> Iterator[None]:
    yield
    while _GLOBAL:
        prometheus_client.REGISTRY.unregister(_GLOBAL.pop())


NAIVE = [
    (nothing, "no counter", "has no `app_db_statements_total` counter"),
    (by_hand, "nothing counted", "Counting by hand in the workload does not count"),
    (global_registry, "global registry", "Duplicated timeseries"),
    (before_only, "empty histogram", "`before_cursor_execute` alone has no duration"),
    (by_sql, "wrong labels", "never the SQL text"),
    (upper_kind, "wrong labels", "one of select, insert, update, delete, other"),
    (twice, "wrong counts", "is a listener attached twice?"),
    (hardcoded, "filled in", "they were typed in, not counted"),
    (fake_duration, "durations too short", "no select was observed that long"),
    (timer_in_before, "durations too short", "a timer started and stopped inside one listener"),
    (after_only, "durations too long", "not at the previous statement"),
    (wall_clock, "wall clock", "`time.time()` followed it"),
    (summary, "not a histogram", "use a prometheus_client Histogram"),
    (unlabelled, "wrong labels", "`app_db_statements_total`: none, with values []. Label `kind`"),
    (unlabelled_histogram, "wrong labels", "`app_db_statement_duration_seconds`: none."),
]


@pytest.mark.parametrize(("answer", "status", "why"), NAIVE, ids=[n[0].__name__ for n in NAIVE])
def test_the_check_names_each_naive_answer(
    scratch: Backend, answer: Any, status: str, why: str, clean_global_registry: None
) -> None:
    verdict = scratch.run(lesson.acheck_metrics(answer, scratch))
    assert verdict.status == status, verdict
    assert why in verdict.message, verdict
    assert not verdict.passed


def test_the_check_passes_the_solution_and_waits_for_the_stub(scratch: Backend) -> None:
    verdict = scratch.run(lesson.acheck_metrics(solution, scratch))
    assert verdict.passed, verdict
    assert verdict.statements == 8  # the check's slow select, then the 7 of the workload
    assert "{'select': 5, 'insert': 1, 'update': 1, 'delete': 1}" in verdict.message
    assert scratch.run(lesson.acheck_metrics(stub, scratch)).status == "not attempted"


def test_the_check_leaves_the_scratch_as_it_was(scratch: Backend) -> None:
    scratch.run(lesson.acheck_metrics(solution, scratch))
    with scratch.Session() as session:
        lesson.workload(session)  # the workload rolls back: the tags it adds never stay
    with count_statements(scratch) as log, scratch.Session() as session:
        lesson.workload(session)
    assert log.count == 7


def kind_from_context(engine: Engine) -> CollectorRegistry:
    """Another right answer: the kind from the execution context's flags."""
    registry = CollectorRegistry()
    counter, histogram = _instruments(registry)

    def kind(context: Any) -> str:
        flags = ("insert", "update", "delete")
        return next((k for k in flags if getattr(context, f"is{k}")), "select")

    @event.listens_for(engine, "before_cursor_execute")
    def before(_c: Any, _cur: Any, _sql: str, _p: Any, context: Any, _m: Any) -> None:
        context._t0 = time.perf_counter()
        counter.labels(kind(context)).inc()

    @event.listens_for(engine, "after_cursor_execute")
    def after(_c: Any, _cur: Any, _sql: str, _p: Any, context: Any, _m: Any) -> None:
        histogram.labels(kind(context)).observe(time.perf_counter() - context._t0)

    return registry


def test_the_check_accepts_another_right_answer_and_restores_the_clock(scratch: Backend) -> None:
    real = time.time
    verdict = scratch.run(lesson.acheck_metrics(kind_from_context, scratch))
    assert verdict.passed, verdict
    assert time.time is real
    scratch.run(lesson.acheck_metrics(wall_clock, scratch))
    assert time.time is real


def test_the_slow_statement_takes_at_least_its_pause(scratch: Backend) -> None:
    fresh = lesson._fresh(scratch)
    try:
        with count_statements(fresh.sync_engine) as log, fresh.Session() as session:
            session.execute(lesson.pause_statement(fresh.name))
        assert log.count == 1 and log.statements[0].seconds >= lesson.PAUSE_S
    finally:
        fresh.sync_engine.dispose()
        fresh.run(fresh.engine.dispose)
