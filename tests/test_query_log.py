"""course_lib.query_log: the slow-query log, the top-statements table and origin tags."""

from __future__ import annotations

import doctest
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from course_lib import query_log
from course_lib.backends import Backend
from course_lib.measure import count_statements
from course_lib.models import User
from course_lib.query_log import (
    Origin,
    find_origin,
    log_slow_queries,
    normalize_sql,
    parse_sql_comment,
    sql_comment,
    tag_origin,
    top_statements,
)

#: Absolute paths of a machine (as tests/test_notebook_hygiene.py looks for them).
ABSOLUTE_PATH = re.compile(r"(?<![\w.-])(?:/work/|/root/|/home/[^/\s]+/|/tmp/[^/\s]+/|/Users/)")

NASTY = [
    "report'*/ DROP TABLE users; --",
    "100% done",
    "a\\'b",
    "*/",
    "it's /* nested */ %(name)s $1 ?",
    "naïve ünïcode\nnewline",
]


def _run(db: Backend, work: Callable[[], Any]) -> Any:
    """Run an async callable to completion (the async pool is disposed in the same loop)."""
    return db.run(work)


def _named(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` with its code renamed (as a frame sees it: co_name and co_qualname)."""
    fn.__code__ = fn.__code__.replace(co_name=name, co_qualname=name)
    return fn


def test_module_doctests() -> None:
    assert doctest.testmod(query_log).failed == 0


# ------------------------------------------------------------------------------ origins


def test_find_origin_skips_internal_modules() -> None:
    def view() -> Origin | None:
        return find_origin()

    origin = view()
    assert origin is not None and origin.function.endswith("view")
    assert origin.module == __name__ and origin.line > 0
    beyond = find_origin(skip=(*query_log.INTERNAL_MODULES, __name__))
    assert beyond is not None and beyond.module != __name__  # pytest's frames come next


def test_origin_file_is_never_absolute(tmp_path: Any) -> None:
    outside = Origin("m", "f", str(tmp_path / "deep" / "views.py"), 3)
    assert outside.file == "views.py" and outside.where == "views.py:3 f"
    inside = Origin("m", "f", os.path.join(os.getcwd(), "app", "views.py"), 3)
    assert inside.file == os.path.join("app", "views.py")
    assert inside.where == "views.py:3 f"
    assert not ABSOLUTE_PATH.search(outside.where + inside.where)


def test_origin_of_a_sync_statement(sqlite_db: Backend) -> None:
    def list_users(session: Any) -> Any:
        return session.execute(select(User.id).limit(2)).all()

    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as slow,
        sqlite_db.Session() as session,
    ):
        list_users(session)
    assert [q.origin.function.rsplit(".", 1)[-1] for q in slow.records] == ["list_users"]


def test_origin_crosses_the_greenlet_of_an_async_session(any_db: Backend) -> None:
    async def helper(session: Any) -> Any:
        return (await session.execute(select(User.id).limit(2))).all()

    async def handler() -> Any:
        async with any_db.AsyncSession() as session:
            return await helper(session)

    with log_slow_queries(any_db.engine, threshold_ms=0, logger=None) as slow:
        _run(any_db, handler)
    functions = [q.origin.function.rsplit(".", 1)[-1] for q in slow.records]
    assert functions == ["helper"], functions


# --------------------------------------------------------------------------- slow log


def test_threshold_decides_what_is_recorded(sqlite_db: Backend) -> None:
    engine = sqlite_db.sync_engine
    with (
        log_slow_queries(engine, threshold_ms=10_000, logger=None) as slow,
        engine.connect() as conn,
    ):
        conn.execute(text("SELECT 1")).all()
        assert slow.records == type(slow.records)()
        slow.threshold_ms = 0  # a setting: changed while the log runs
        conn.execute(text("SELECT 2")).all()
    assert [q.sql for q in slow.records] == ["SELECT 2"]
    assert all(q.duration_ms >= 0 and q.seconds == q.duration_ms / 1000 for q in slow.records)


def test_slow_query_goes_to_a_named_logger(
    sqlite_db: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=query_log.LOGGER_NAME)

    def nightly_report(conn: Any) -> Any:
        return conn.execute(text("SELECT count(*) FROM cars WHERE price > :p"), {"p": 7}).all()

    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0),
        sqlite_db.sync_engine.connect() as c,
    ):
        nightly_report(c)
    (record,) = [r for r in caplog.records if r.name == query_log.LOGGER_NAME]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "slow query:" in message and "nightly_report" in message
    assert "SELECT count(*) FROM cars WHERE price > ?" in message
    assert record.slow_query.parameters is None  # parameters stay out unless asked for
    assert "(7,)" not in message


def test_parameters_only_when_asked(sqlite_db: Backend) -> None:
    with (
        log_slow_queries(sqlite_db.sync_engine, 0, logger=None, with_parameters=True) as slow,
        sqlite_db.sync_engine.connect() as conn,
    ):
        conn.execute(text("SELECT :secret"), {"secret": "hunter2"})
    assert slow.records[0].parameters == ("hunter2",)


def test_records_are_bounded_and_listeners_removed(sqlite_db: Backend) -> None:
    engine = sqlite_db.sync_engine
    slow = log_slow_queries(engine, threshold_ms=0, logger=None, keep=3)
    with engine.connect() as conn:
        for i in range(10):
            conn.exec_driver_sql(
                (
                    "SELECT 0",
                    "SELECT 1",
                    "SELECT 2",
                    "SELECT 3",
                    "SELECT 4",
                    "SELECT 5",
                    "SELECT 6",
                    "SELECT 7",
                    "SELECT 8",
                    "SELECT 9",
                )[i]
            )
    assert [q.sql for q in slow.records] == ["SELECT 7", "SELECT 8", "SELECT 9"]
    assert event.contains(engine, "after_cursor_execute", slow._after)
    slow.remove()
    slow.remove()  # idempotent
    assert not event.contains(engine, "before_cursor_execute", slow._before)
    assert not event.contains(engine, "handle_error", slow._error)
    assert "removed" in repr(slow)


def test_a_failed_statement_is_logged_with_its_error(sqlite_db: Backend) -> None:
    def broken(conn: Any) -> None:
        conn.execute(text("SELECT nosuchcolumn FROM users"))

    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as slow,
        pytest.raises(OperationalError),
        sqlite_db.sync_engine.connect() as conn,
    ):
        broken(conn)
    (failed,) = slow.records
    assert failed.error == "OperationalError" and "nosuchcolumn" in failed.sql
    assert failed.origin.function.endswith("broken")
    assert list(slow.frame().columns) == [
        "sql",
        "duration_ms",
        "fetch_ms",
        "rows",
        "origin",
        "error",
    ]


def test_a_statement_cancelled_by_statement_timeout_is_logged(pg_service: Backend) -> None:
    with (
        log_slow_queries(pg_service.sync_engine, threshold_ms=20, logger=None) as slow,
        pytest.raises(DBAPIError),
        pg_service.Session() as session,
    ):
        session.execute(text("SET LOCAL statement_timeout = '30ms'"))
        session.execute(select(func.pg_sleep(0.5)))
    (cancelled,) = [q for q in slow.records if "pg_sleep" in q.sql]
    assert cancelled.error == "QueryCanceled" and cancelled.duration_ms >= 30


def test_concurrent_statements_each_keep_their_own_start(pg_service: Backend) -> None:
    """The start time rides on each statement's context: two threads never mix them up."""
    engine = pg_service.sync_engine

    def sleep(seconds: float) -> None:
        with engine.connect() as conn:
            conn.execute(select(func.pg_sleep(seconds)))

    with log_slow_queries(engine, threshold_ms=0, logger=None) as slow:
        threads = [threading.Thread(target=sleep, args=(s,)) for s in (0.3, 0.05)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sleeps = sorted(q.duration_ms for q in slow.records if "pg_sleep" in q.sql)
    assert len(sleeps) == 2 and sleeps[0] >= 50 and sleeps[1] >= 300


def test_targets(sqlite_db: Backend) -> None:
    assert query_log._engines(sqlite_db.engine) == [sqlite_db.engine.sync_engine]
    assert query_log._engines(sqlite_db) == [sqlite_db.sync_engine, sqlite_db.engine.sync_engine]
    with pytest.raises(TypeError, match="Engine"):
        log_slow_queries("sqlite://")  # type: ignore[arg-type]


def test_async_engine_statements_are_logged(any_db: Backend) -> None:
    async def work() -> None:
        async with any_db.engine.connect() as conn:
            await conn.execute(select(User.id).where(User.id == 1))

    with log_slow_queries(any_db.engine, threshold_ms=0, logger=None) as slow:
        _run(any_db, work)
    assert len(slow.records) == 1 and "users" in slow.records[0].sql


# ------------------------------------------------------------------- fetch time counts

NAP_MS = 2.0  # what the test function `nap` sleeps per row: a floor on the fetch time
NAP_ROWS = 60
_NAP_ROWS_SQL = (
    f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {NAP_ROWS}) "
    "SELECT x, nap(x) AS y FROM g"
)


def _napping_sqlite() -> Any:
    """An in-memory SQLite engine with ``nap(x)``: sleeps NAP_MS, returns x. SQLite runs it
    for each row while the row is stepped, so in the fetch, not in ``cursor.execute``."""
    engine = create_engine("sqlite://")

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, _record: Any) -> None:
        def nap(x: int) -> int:
            time.sleep(NAP_MS / 1000)
            return x

        dbapi_connection.create_function("nap", 1, nap)

    return engine


def test_fetch_time_counts_on_sqlite() -> None:
    """sqlite3's execute steps to the first row only: the rest of the work is in the fetch,
    and a log timing only execute would miss it (0.1 ms logged for an 847 ms SELECT)."""
    engine = _napping_sqlite()
    floor_ms = (NAP_ROWS - 1) * NAP_MS  # every row after the first is stepped in the fetch
    with log_slow_queries(engine, floor_ms / 2, logger=None) as slow, engine.connect() as conn:
        rows = conn.exec_driver_sql(_NAP_ROWS_SQL).all()
        conn.exec_driver_sql("SELECT 1").all()  # fast: below the threshold
    (query,) = slow.records
    assert len(rows) == query.rows == NAP_ROWS
    assert query.fetch_ms >= floor_ms and query.duration_ms >= query.fetch_ms
    assert list(slow.frame()[["rows"]].iloc[0]) == [NAP_ROWS]
    engine.dispose()


def test_a_stream_is_timed_in_its_fetches_not_between_them() -> None:
    """``yield_per``: the statement is judged when the stream is exhausted; the fetches count,
    the time the loop body spends between them does not."""
    engine = _napping_sqlite()
    pause_s = 0.1
    with (
        log_slow_queries(engine, threshold_ms=0, logger=None) as slow,
        engine.connect() as conn,
    ):
        start = time.perf_counter()
        stream = conn.execution_options(yield_per=10).exec_driver_sql(_NAP_ROWS_SQL)
        seen, partitions = 0, 0
        for partition in stream.partitions(10):
            assert list(slow.records) == []  # still streaming: not finished yet
            seen += len(partition)
            partitions += 1
            time.sleep(pause_s)  # the application's own work between two fetches
        wall_ms = (time.perf_counter() - start) * 1000
    (query,) = slow.records
    assert seen == query.rows == NAP_ROWS and partitions == NAP_ROWS // 10
    assert query.fetch_ms >= (NAP_ROWS - 1) * NAP_MS
    assert query.duration_ms <= wall_ms - partitions * pause_s * 1000  # the pauses are out
    engine.dispose()


def test_a_server_side_cursor_is_timed_in_its_fetches(pg_service: Backend) -> None:
    """PostgreSQL with ``stream_results``: each FETCH goes back to the server, which runs
    the query there (``pg_sleep`` per row)."""
    stmt = text("SELECT g, pg_sleep(:s) FROM generate_series(1, :n) AS g")
    with (
        log_slow_queries(pg_service.sync_engine, threshold_ms=0, logger=None) as slow,
        pg_service.sync_engine.connect() as conn,
    ):
        stream = conn.execution_options(stream_results=True, max_row_buffer=10)
        rows = stream.execute(stmt, {"s": NAP_MS / 1000, "n": 50}).all()
    (query,) = [q for q in slow.records if "pg_sleep" in q.sql]
    assert len(rows) == query.rows == 50
    assert query.duration_ms >= 50 * NAP_MS and query.fetch_ms >= 40 * NAP_MS


def test_fetch_timing_composes_with_other_cursor_wrappers(sqlite_db: Backend) -> None:
    """Another listener that wraps the cursor (the course's row counter) still sees every row."""
    from course_lib.exercises import rows_fetched

    with (
        rows_fetched(sqlite_db) as tally,
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as slow,
        sqlite_db.sync_engine.connect() as conn,
    ):
        rows = conn.execute(select(User.id)).all()
    assert tally.rows == len(rows) == slow.records[0].rows == 12


def test_an_error_while_fetching_is_logged_once() -> None:
    engine = create_engine("sqlite://")

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, _record: Any) -> None:
        def boom(x: int) -> int:
            if x == 3:
                raise ValueError("row 3")
            return x

        dbapi_connection.create_function("boom", 1, boom)

    sql = "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 5) "
    with (
        log_slow_queries(engine, threshold_ms=0, logger=None) as slow,
        engine.connect() as conn,
        pytest.raises(OperationalError),
    ):
        conn.exec_driver_sql(sql + "SELECT boom(x) FROM g").all()
    (failed,) = slow.records
    assert failed.error == "OperationalError" and failed.rows is not None
    engine.dispose()


def test_parameters_stay_hidden_when_the_engine_hides_them(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, hide_parameters=True)
    with (
        log_slow_queries(engine, 0, logger=None, with_parameters=True) as slow,
        engine.connect() as conn,
    ):
        conn.execute(text("SELECT :secret"), {"secret": "hunter2"}).all()
        with pytest.raises(OperationalError):
            conn.execute(text("SELECT nosuch FROM users WHERE id = :s"), {"s": "hunter3"})
    assert [q.parameters for q in slow.records] == [None, None]
    assert "hunter" not in repr(list(slow.records))
    engine.dispose()


# ---------------------------------------------------------------------- top statements


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        ("SELECT a FROM t WHERE id = ?", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = %(id_1)s::INTEGER", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = $1::INTEGER", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = :id", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = %s", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE id = 42", "SELECT a FROM t WHERE id = ?"),
        ("SELECT a FROM t WHERE x = -1.5e3", "SELECT a FROM t WHERE x = ?"),
        (
            "SELECT a FROM t WHERE d > $1::TIMESTAMP WITHOUT TIME ZONE AND b",
            "SELECT a FROM t WHERE d > ? AND b",
        ),
        ("SELECT a FROM t WHERE n = 'it''s'", "SELECT a FROM t WHERE n = ?"),
        ("SELECT a FROM t WHERE n = '12:30' AND m = ':x'", "SELECT a FROM t WHERE n = ? AND m = ?"),
        ("SELECT a\n  FROM   t\n", "SELECT a FROM t"),
        ("SELECT a FROM t /*function='f',module='m'*/", "SELECT a FROM t"),
        ("SELECT a FROM t -- trailing\nWHERE b", "SELECT a FROM t WHERE b"),
        ("SELECT a FROM t WHERE id IN (?, ?, ?)", "SELECT a FROM t WHERE id IN (...)"),
        (
            "SELECT a FROM t WHERE id IN ($1::INTEGER, $2::INTEGER)",
            "SELECT a FROM t WHERE id IN (...)",
        ),
        ("SELECT a FROM t WHERE id IN (__[POSTCOMPILE_id_1])", "SELECT a FROM t WHERE id IN (...)"),
        ("SELECT a FROM t WHERE id IN (1, 2, 3)", "SELECT a FROM t WHERE id IN (...)"),
        ("INSERT INTO t (a) VALUES (?), (?), (?)", "INSERT INTO t (a) VALUES (?), ..."),
        (
            "SELECT users_1.id, t2.x FROM users AS users_1, t2",
            "SELECT users_1.id, t2.x FROM users AS users_1, t2",
        ),
        ("SELECT x::text FROM t LIMIT ? OFFSET ?", "SELECT x::text FROM t LIMIT ? OFFSET ?"),
        # a sign after an operand is an operator, not part of the number
        ("SELECT a FROM t WHERE price -1 > 0", "SELECT a FROM t WHERE price -? > ?"),
        ("SELECT a - -1, (-1), f(x, -2), b-1 FROM t", "SELECT a - ?, (?), f(x, ?), b-? FROM t"),
        ("SELECT a FROM t WHERE id IN (1, -2)", "SELECT a FROM t WHERE id IN (...)"),
        # quoted identifiers are names, kept as they are; E'' strings have backslash escapes
        ('SELECT "2024 total", "a\'b", "x?" FROM t', 'SELECT "2024 total", "a\'b", "x?" FROM t'),
        ("SELECT a FROM t WHERE n = E'it\\'s' AND m = 1", "SELECT a FROM t WHERE n = ? AND m = ?"),
    ],
)
def test_normalize_sql(sql: str, shape: str) -> None:
    assert normalize_sql(sql) == shape


def test_top_statements_from_a_statement_log(sqlite_db: Backend) -> None:
    with count_statements(sqlite_db) as log, sqlite_db.Session() as session:
        for user_id in (1, 2, 3):
            session.execute(select(User.name).where(User.id == user_id)).all()
        session.execute(select(func.count()).select_from(User)).all()
    top = top_statements(log, by="count")
    assert list(top.columns) == query_log.TOP_COLUMNS  # no origins in a StatementLog
    assert top["count"].tolist() == [3, 1]
    assert top["shape"].iloc[0] == "SELECT users.name FROM users WHERE users.id = ?"
    assert top["share"].sum() == pytest.approx(100)
    assert top_statements(log, by="count", limit=1).shape[0] == 1


def test_top_statements_statistics_and_origins() -> None:
    class Item:
        def __init__(self, sql: str, ms: float, where: str):
            self.sql, self.duration_ms = sql, ms
            self.origin = Origin("m", where, "x.py", 1)

    times = [1.0, 2.0, 3.0, 4.0, 10.0]
    items = [Item(f"SELECT a FROM t WHERE id = {i}", ms, "f") for i, ms in enumerate(times)]
    items += [Item("SELECT b FROM t", 30.0, "g"), Item("SELECT a FROM t WHERE id = 9", 1.0, "h")]
    top = top_statements(items)
    first = top.iloc[0]
    assert first["shape"] == "SELECT b FROM t" and first["origin"] == "x.py:1 g"
    second = top.iloc[1]
    assert second["count"] == 6 and second["total_ms"] == pytest.approx(21.0)
    assert second["mean_ms"] == pytest.approx(3.5)
    assert second["p95_ms"] == pytest.approx(np.percentile([*times, 1.0], 95))
    assert second["origin"] == "x.py:1 f"  # the most frequent origin of the shape


def test_top_statements_edge_cases() -> None:
    assert top_statements([]).empty and list(top_statements([]).columns) == query_log.TOP_COLUMNS
    pairs = [("SELECT 1", 0.001), ("SELECT 2", 0.003)]
    top = top_statements(pairs)
    assert top["count"].tolist() == [2] and top["total_ms"].tolist() == [pytest.approx(4.0)]
    with pytest.raises(ValueError, match="by must be"):
        top_statements(pairs, by="mean_ms")
    tie = top_statements([("SELECT b", 0.001), ("SELECT a", 0.001)], by="count")
    assert tie["shape"].tolist() == ["SELECT a", "SELECT b"]  # ties: by shape, stable


def test_top_statements_from_a_slow_log_keep_origins(sqlite_db: Backend) -> None:
    def page(conn: Any, n: int) -> Any:
        return conn.execute(select(User.id).where(User.id > n)).all()

    with (
        log_slow_queries(sqlite_db.sync_engine, 0, logger=None) as slow,
        sqlite_db.sync_engine.connect() as conn,
    ):
        for n in range(4):
            page(conn, n)
    top = top_statements(slow)
    assert top["count"].tolist() == [4] and top["origin"].iloc[0].endswith("page")


# ------------------------------------------------------------------------- origin tags


def test_sql_comment_follows_sqlcommenter() -> None:
    comment = sql_comment({"route": "/users", "action": "index", "empty": "", "none": None})
    assert comment == "/*action='index',route='%2Fusers'*/"
    assert sql_comment({}) == "" and sql_comment({"a": ""}) == ""
    assert sql_comment({"a": "100%"}, paramstyle="pyformat") == "/*a='100%%25'*/"
    assert sql_comment({"a": "100%"}, paramstyle="qmark") == "/*a='100%25'*/"


@pytest.mark.parametrize("value", NASTY)
def test_sql_comment_cannot_be_escaped(value: str) -> None:
    comment = sql_comment({"function": value, value: "key too"})
    body = comment[2:-2]
    assert "*/" not in body and "/*" not in body
    assert comment.count("'") == 4  # only the quotes around the two values
    assert "\n" not in comment and ";" not in comment and " " not in comment
    assert parse_sql_comment(f"SELECT 1 {comment}") == {"function": value, value: "key too"}
    doubled = sql_comment({"function": value}, paramstyle="pyformat")
    assert parse_sql_comment(f"SELECT 1 {doubled}") == {"function": value}


def test_parse_sql_comment_without_a_comment() -> None:
    assert parse_sql_comment("SELECT 1") == {}


_ACTIVITY = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"


def _server_view() -> Callable[[Any], str]:
    """A function returning the SQL text the PostgreSQL server received for its statement."""

    def view(conn: Any) -> str:
        return conn.execute(text(_ACTIVITY)).scalar_one()

    return view


@pytest.mark.parametrize("value", NASTY)
def test_a_tagged_statement_reaches_the_server_intact_psycopg(
    pg_service: Backend, value: str
) -> None:
    view = _named(_server_view(), value)
    with tag_origin(pg_service.sync_engine), pg_service.sync_engine.connect() as conn:
        received = view(conn)
        users = conn.execute(select(func.count()).select_from(User)).scalar_one()
    assert parse_sql_comment(received)["function"] == value  # one %, as psycopg sent it
    assert received.startswith(_ACTIVITY)
    assert users == 12  # the statement ran, and the table is still there


def test_a_tagged_statement_reaches_the_server_intact_asyncpg(pg_service: Backend) -> None:
    value = NASTY[0] + " 100%"
    view = _named(_server_view(), value)

    async def work() -> str:
        async with pg_service.engine.connect() as conn:
            return await conn.run_sync(view)

    with tag_origin(pg_service.engine, fields=("function",)):
        received = _run(pg_service, work)
    assert parse_sql_comment(received) == {"function": value}


def test_no_parameters_statements_keep_a_single_percent(pg_service: Backend) -> None:
    def view(conn: Any) -> str:
        query = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        return conn.execution_options(no_parameters=True).exec_driver_sql(query).scalar_one()

    with tag_origin(pg_service.sync_engine), pg_service.sync_engine.connect() as conn:
        received = _named(view, "50%")(conn)
    assert "%%" not in received and parse_sql_comment(received)["function"] == "50%"


@pytest.mark.parametrize("value", NASTY)
def test_a_tagged_statement_runs_on_sqlite(sqlite_db: Backend, value: str) -> None:
    def view(session: Any) -> int:
        return session.scalar(select(func.count()).select_from(User))

    with (
        tag_origin(sqlite_db.sync_engine) as tags,
        count_statements(sqlite_db) as log,
        sqlite_db.Session() as session,
    ):
        assert _named(view, value)(session) == 12
    assert tags.tagged == 1
    assert parse_sql_comment(log.sql[0]) == {"function": value, "module": __name__}


def test_tag_origin_options_and_removal(sqlite_db: Backend) -> None:
    engine = sqlite_db.sync_engine

    def job(conn: Any, sql: str) -> str:
        return conn.exec_driver_sql(sql).all()

    tags = tag_origin(engine, fields=("function", "line", "file"), static={"app": "shop"})
    with count_statements(engine) as log, engine.connect() as conn:
        job(conn, "SELECT 1")
        job(conn, "SELECT 2 /* already commented */")
        job(conn, "SELECT 3;")
    tags.remove()
    tags.remove()
    with count_statements(engine) as after, engine.connect() as conn:
        job(conn, "SELECT 4")
    first = parse_sql_comment(log.sql[0])
    assert first["app"] == "shop" and first["function"].endswith("job")
    assert first["file"].endswith("test_query_log.py") and int(first["line"]) > 0
    assert not os.path.isabs(first["file"])
    assert log.sql[1] == "SELECT 2 /* already commented */"  # never touch a commented statement
    assert log.sql[2].startswith("SELECT 3 /*") and log.sql[2].endswith("*/;")
    assert after.sql == ["SELECT 4"] and tags.tagged == 2
    with pytest.raises(ValueError, match="unknown origin field"):
        tag_origin(engine, fields=("function", "request_id"))


def test_tags_keep_the_compile_cache(any_db: Backend, caplog: pytest.LogCaptureFixture) -> None:
    cold = any_db.fresh()  # nothing compiled yet
    cold.sync_engine.connect().close()

    def a(session: Any) -> Any:
        return session.execute(select(User.id).where(User.id <= 3)).all()

    def b(session: Any) -> Any:
        return session.execute(select(User.id).where(User.id <= 3)).all()

    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    with (
        tag_origin(cold.sync_engine),
        count_statements(cold.sync_engine) as log,
        cold.Session() as session,
    ):
        for fn in (a, b, a):
            fn(session)
    cold.sync_engine.dispose()
    markers = [
        r.getMessage().split(" ", 1)[0]
        for r in caplog.records
        if r.name.startswith("sqlalchemy.engine") and r.getMessage().startswith("[")
    ]
    assert markers == ["[generated", "[cached", "[cached"]
    functions = [parse_sql_comment(sql)["function"].rsplit(".", 1)[-1] for sql in log.sql]
    assert functions == ["a", "b", "a"]


def test_tag_origin_on_async_engines(any_db: Backend) -> None:
    async def handler() -> None:
        async with any_db.AsyncSession() as session:
            await session.execute(select(User.id).limit(1))

    with tag_origin(any_db.engine), count_statements(any_db.engine) as log:
        _run(any_db, handler)
    assert parse_sql_comment(log.sql[0])["function"].endswith("handler")


def test_no_frame_walk_unless_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a high threshold no origin is looked up (the stack is walked only when slow)."""
    engine = create_engine("sqlite://")
    calls = []
    original = query_log.find_origin

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(query_log, "find_origin", counting)
    with log_slow_queries(engine, threshold_ms=60_000, logger=None), engine.connect() as conn:
        for _ in range(5):
            conn.exec_driver_sql("SELECT 1")
    assert calls == []
    with log_slow_queries(engine, threshold_ms=0, logger=None), engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert calls == [1]
    engine.dispose()


def test_event_loop_frames_are_internal() -> None:
    assert query_log._is_internal("asyncio.events", query_log.INTERNAL_MODULES)
    assert query_log._is_internal("sqlalchemy", query_log.INTERNAL_MODULES)
    assert not query_log._is_internal("sqlalchemy_utils", query_log.INTERNAL_MODULES)
    assert not query_log._is_internal("course_lib.lessons.profiling", query_log.INTERNAL_MODULES)


def test_a_comprehension_stands_for_its_function(sqlite_db: Backend) -> None:
    """Python 3.11 runs a list comprehension as a frame of its own; 3.12 inlines it: the
    origin is the function either way."""

    def titles(session: Any) -> list[Any]:
        return [row for row in session.execute(select(User.name).limit(3))]

    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as slow,
        sqlite_db.Session() as session,
    ):
        titles(session)
    (query,) = slow.records
    assert query.origin is not None and query.origin.function.endswith("titles")
