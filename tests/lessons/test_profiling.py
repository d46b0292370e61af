"""Notebook 07's lesson module: captured logs, the seed's slow log, the time split, the exercise."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, joinedload, selectinload

from course_lib.backends import Backend
from course_lib.data import reset_schema
from course_lib.lessons import profiling as lesson
from course_lib.measure import count_statements
from course_lib.models import Car, Post, User
from course_lib.query_log import log_slow_queries, top_statements

ABSOLUTE_PATH = re.compile(r"(?<![\w.-])(?:/work/|/root/|/home/[^/\s]+/|/tmp/[^/\s]+/|/Users/)")


# ----------------------------------------------------------------------- captured logs


def test_echo_levels_as_the_notebook_states_them(any_db: Backend) -> None:
    info, debug = lesson.echo_log(any_db, echo=True), lesson.echo_log(any_db, echo="debug")
    pool_info = lesson.echo_log(any_db, echo=True, echo_pool=True)
    pool_debug = lesson.echo_log(any_db, echo=True, echo_pool="debug")
    assert info.kinds() == {"transaction": 2, "statement": 2, "parameters": 2}
    assert debug.kinds()["row"] == 4 and debug.kinds()["columns"] == 2
    assert pool_info.kinds()["checkout"] == 0 and pool_debug.kinds()["checkout"] == 3
    markers = [line.message.split("]")[0] + "]" for line in info.select("parameters")]
    assert markers == ["[generated in …]", "[cached since … ago]"]
    assert all("0x" not in line.message for line in pool_debug.lines)
    assert "<connection>" in pool_debug.text("checkout")


def test_echo_kinds_table(any_db: Backend) -> None:
    kinds = lesson.echo_kinds(any_db)
    assert list(kinds.columns) == list(lesson.ECHO_SETTINGS)
    assert (kinds.loc["parameters"] == kinds.loc["statement"]).all()  # INFO: one per statement
    assert kinds.loc["row", "echo=True"] == 0 and kinds.loc["row", "echo='debug'"] == 4
    assert kinds.loc["checkout", "echo=True, echo_pool=True"] == 0
    assert kinds.loc["checkout", "echo=True, echo_pool='debug'"] == 3


def test_echo_is_the_engines_own_threshold(any_db: Backend) -> None:
    """echo sets no logger level: sqlalchemy.engine at WARNING does not silence echo=True."""
    quiet = lesson.echo_log(any_db, echo=True, levels={"sqlalchemy.engine": "WARNING"})
    assert quiet.kinds()["statement"] == 2
    assert logging.getLogger("sqlalchemy.engine").level != logging.INFO
    silent = lesson.echo_log(any_db, levels={"sqlalchemy.engine": "WARNING"})
    assert silent.lines == []
    with pytest.raises(KeyError, match="info"):
        create_engine(any_db.sync_url, echo="info")


def test_pool_at_info_logs_invalidations_not_checkouts(any_db: Backend) -> None:
    logs = lesson.pool_at_info(any_db)
    assert logs.kinds()["checkout"] == 0
    assert any(line.message.startswith("Invalidate connection") for line in logs.lines)
    assert all(line.level == "INFO" for line in logs.lines)


def test_driver_transaction_after_a_select(any_db: Backend) -> None:
    said = lesson.driver_transaction(any_db)
    if any_db.name == "sqlite":  # sqlite3 defers BEGIN until the first INSERT/UPDATE/DELETE
        assert said.endswith("in a transaction after the SELECT: False")
    else:  # psycopg sends BEGIN before the first statement
        assert said.endswith("transaction status after the SELECT: INTRANS")


def test_captured_logs_print_nothing_and_restore(
    sqlite_db: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    engine_logger = logging.getLogger("sqlalchemy.engine")
    before = (engine_logger.level, logging.getLogger("sqlalchemy").propagate)
    with lesson.captured_logs({"sqlalchemy.engine": "INFO"}) as logs:
        with sqlite_db.Session() as session:
            session.execute(select(User.id).limit(1)).all()
        engine = create_engine(sqlite_db.sync_url, echo=True)  # echo adds no stdout handler here
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    assert capsys.readouterr().out == ""
    assert logs.kinds()["statement"] == 2
    assert (engine_logger.level, logging.getLogger("sqlalchemy").propagate) == before
    assert not any(
        isinstance(h, lesson._Collect)
        for name in logging.root.manager.loggerDict
        for h in logging.getLogger(name).handlers
    )


def test_stable_replaces_volatile_parts() -> None:
    assert lesson.stable("[generated in 0.00012s] (1,)") == "[generated in …] (1,)"
    assert lesson.stable("[cached since 1.5e-05s ago] {}") == "[cached since … ago] {}"
    psycopg = "Connection <psycopg.Connection [IDLE] (host=/x/y user=p database=d) at 0x7f1> ok"
    assert lesson.stable(psycopg) == "Connection <connection> ok"
    nested = "Connection <AdaptedConnection <asyncpg.connection.Connection object at 0x7f>> ok"
    assert lesson.stable(nested) == "Connection <connection> ok"
    assert (
        lesson.stable("slow query: 12.5 ms (threshold 1 ms)") == "slow query: … ms (threshold 1 ms)"
    )
    assert lesson.stable("slow query: 9.0 ms (8.9 ms of it fetching 3 rows)") == (
        "slow query: … ms (… ms of it fetching 3 rows)"
    )
    assert lesson.stable("[no key 0.00012s] (1,)") == "[no key …] (1,)"
    assert lesson.stable("[caching disabled 0.00034s] ()") == "[caching disabled …] ()"
    assert lesson.stable("[caching disabled (why) 0.0003s ] ()") == "[caching disabled (why) …] ()"
    assert lesson.stable("[dialect a+b does not support caching 0.0001s] ()") == (
        "[dialect a+b does not support caching …] ()"
    )


def test_line_kinds() -> None:
    def kind(logger: str, message: str) -> str:
        return lesson.LogLine("INFO", logger, message).kind

    engine = "sqlalchemy.engine.Engine"
    assert kind(engine, "BEGIN (implicit)") == "transaction"
    assert kind(engine, "[raw sql] {}") == "parameters"
    assert kind(engine, "[caching disabled …] ()") == "parameters"
    assert kind(engine, "Row (1,)") == "row" and kind(engine, "Col ('id',)") == "columns"
    assert kind(engine, "SELECT 1") == "statement"
    assert kind("sqlalchemy.pool.impl.QueuePool", "Pool disposed. ...") == "pool"
    assert kind("sqlalchemy.pool.impl.QueuePool", "Connection <c> checked out from pool") == (
        "checkout"
    )
    assert kind("sqlalchemy.orm.mapper.Mapper", "(A|a) constructed") == "orm"
    assert kind("seed.slow_queries", "Slow query") == "other"


def test_orm_loggers_report_configuration_not_queries(sqlite_db: Backend) -> None:
    with lesson.captured_logs({"sqlalchemy.orm": "INFO"}) as logs, sqlite_db.Session() as session:
        session.scalars(select(User).limit(2)).all()
    assert logs.kinds()["orm"] == 0
    with lesson.captured_logs({"sqlalchemy.orm": "INFO"}) as logs:
        assert lesson.configure_demo_mapping() == ["Lot", "Vehicle"]
    assert any("ONETOMANY" in line.message for line in logs.select("orm"))


def test_hide_parameters_hides_them_from_logs_and_errors(any_db: Backend) -> None:
    leaks = lesson.parameter_leaks([any_db])
    assert leaks["hide_parameters"].tolist() == [False, True]
    assert leaks["token in the log"].tolist() == [True, False]
    assert leaks["token in the error"].tolist() == [True, False]
    lines = leaks["the error's parameter line"].tolist()
    assert lines[0].startswith("[parameters:") and lines[1].startswith("[SQL parameters hidden")
    assert lesson.error_parameters(ValueError("no parameters here")) == ""


def test_what_hide_parameters_does_not_hide(
    any_db: Backend, fresh_database: Callable[[Backend, str], Backend]
) -> None:
    scratch = reset_schema(fresh_database(any_db, "hide"))
    caveats = lesson.hide_parameters_caveats([any_db], [scratch])
    shown = caveats[any_db.name].to_dict()
    assert shown == {
        "a DEBUG Row line (the row looked up)": True,
        "the INFO parameter line": False,
        "error.params of the failed lookup": True,
        # PostgreSQL's DETAIL quotes the duplicate value; SQLite names the column only
        "str(error) of a unique violation": any_db.name == "postgresql",
    }
    with scratch.Session() as session:  # the duplicate insert was rolled back
        assert session.scalar(select(func.count()).select_from(User)) == 0


# ------------------------------------------------------------------- workload and seed


def test_workload_statements(any_db: Backend) -> None:
    sizes = lesson.workload_sizes(any_db)
    assert sizes == {"users": 12, "cars": 5}  # tiny: 12 users
    expected = 1 + sizes["users"] + 3 + sizes["cars"]
    with count_statements(any_db) as log, any_db.Session() as session:
        sync = lesson.workload(session, **sizes)

    async def run() -> Any:
        async with any_db.AsyncSession() as session:
            return await lesson.aworkload(session, **sizes)

    with count_statements(any_db) as async_log:
        result = any_db.run(run)
    assert log.count == async_log.count == expected and result == sync
    top = top_statements(log, by="count")
    assert top["count"].iloc[0] == sizes["users"]


def test_origin_counts_name_the_line_by_its_code(sqlite_db: Backend) -> None:
    sizes = lesson.workload_sizes(sqlite_db)
    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as log,
        sqlite_db.Session() as session,
    ):
        lesson.workload(session, **sizes)
    lines = lesson.origin_counts(log).splitlines()
    assert f"{sizes['users']:>4} × profiling.py workload: posts[user.id] = len(user.posts)" in lines
    assert not re.search(r"\.py:\d", "\n".join(lines))  # no line numbers
    assert 0 <= lesson.threshold_at(log, 0.9) <= max(q.duration_ms for q in log.records)
    text_ = lesson.top_text(top_statements(log, by="count"))
    assert "profiling.py workload  SELECT posts.id" in text_ and not re.search(r"\.py:\d", text_)
    with (
        pytest.raises(ValueError, match="no statement"),
        log_slow_queries(sqlite_db.sync_engine, logger=None) as empty,
    ):
        lesson.threshold_at(empty)


def test_seed_overlap_swaps_start_times(pg_service: Backend) -> None:
    """Two statements in flight on one AsyncConnection: the seed pops the other's start."""
    frame = pg_service.run(lesson.seed_overlap(pg_service))
    (long, short) = frame.index
    gap_ms = lesson.OVERLAP["gap_s"] * 1000
    assert frame.loc[long, "ours_ms"] >= frame.loc[long, "sleep_ms"]
    assert frame.loc[long, "seed_ms"] < frame.loc[long, "ours_ms"] - gap_ms * 0.75  # too short
    assert frame.loc[short, "seed_ms"] > frame.loc[long, "sleep_ms"]  # longer than the long one
    waited = frame.loc[short, "waited_ms"]  # in line behind the long one, on the adapter's lock
    assert waited > 0 and frame.loc[short, "ours_ms"] >= waited + 0.9 * frame.loc[short, "sleep_ms"]


def test_seed_slow_log_leaks_one_start_time_per_failure(any_db: Backend) -> None:
    engine = create_engine(any_db.sync_url, pool_size=1)
    engine.connect().close()
    remove = lesson.install_seed_slow_log(engine)
    for _ in range(3):
        with pytest.raises(DBAPIError), engine.connect() as conn:
            conn.execute(text("SELECT nosuchcolumn FROM users"))
    with engine.connect() as conn:
        conn.execute(select(User.id).limit(1)).all()
    assert lesson.seed_start_times(engine) == 3  # the failures' entries, never popped
    remove()
    with engine.connect() as conn:
        conn.execute(select(User.id).limit(1)).all()
    assert lesson.seed_start_times(engine) == 3  # removed: nothing more is pushed
    engine.dispose()


def test_seed_slow_log_survives_nesting(sqlite_db: Backend) -> None:
    """A statement run inside another on the same connection pushes and pops its own entry."""
    engine = create_engine(sqlite_db.sync_url, pool_size=1)
    engine.connect().close()
    remove = lesson.install_seed_slow_log(engine)
    nested: list[int] = []

    def inner(conn: Any, *_args: Any) -> None:
        if not nested:  # once: the nested statement fires this listener too
            nested.append(len(conn.info["query_start_time"]))
            conn.exec_driver_sql("SELECT 2")

    event.listen(engine, "before_cursor_execute", inner)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    event.remove(engine, "before_cursor_execute", inner)
    remove()
    assert nested == [1] and lesson.seed_start_times(engine) == 0  # balanced
    engine.dispose()


def test_seed_slow_log_logs_only_above_one_second(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url)
    remove = lesson.install_seed_slow_log(engine)
    with lesson.captured_logs() as logs, engine.connect() as conn:
        conn.execute(select(func.count()).select_from(Car)).all()
    remove()
    engine.dispose()
    assert logs.select("other") == []  # a tiny count is far below one second


def test_clock_facts() -> None:
    facts = lesson.clock_facts()
    assert bool(facts.loc["time.time()", "adjustable"])
    assert not bool(facts.loc["time.perf_counter()", "adjustable"])
    assert bool(facts.loc["time.perf_counter()", "monotonic"])


# ----------------------------------------------------------------- pg_stat_statements


def test_pgss_note_says_why_there_is_no_server_view(any_db: Backend) -> None:
    note = lesson.pgss_note(any_db)
    if any_db.name == "sqlite":
        assert note == "pg_stat_statements is a PostgreSQL module."
        assert lesson.side_by_side(any_db, lambda session: None) == note
        return
    with any_db.sync_engine.connect() as conn:
        preload = conn.exec_driver_sql("SHOW shared_preload_libraries").scalar() or ""
    if "pg_stat_statements" in preload:
        pytest.skip("this server preloads pg_stat_statements")
    assert "shared_preload_libraries" in note


def test_pgss_diff_and_merge() -> None:
    before = pd.DataFrame(
        {"queryid": [1, 2], "query": ["SELECT a FROM t WHERE id = $1", "BEGIN"],
         "calls": [10, 4], "total_exec_time": [5.0, 0.1]}
    )  # fmt: skip
    after = pd.DataFrame(
        {"queryid": [1, 2, 3, 4],
         "query": ["SELECT a FROM t WHERE id = $1", "BEGIN", "SELECT b FROM t",
                   "SELECT s.queryid FROM pg_stat_statements AS s"],
         "calls": [13, 4, 1, 1], "total_exec_time": [8.0, 0.1, 2.0, 0.5]}
    )  # fmt: skip
    diff = lesson.pgss_diff(before, after)
    assert diff["query"].tolist() == ["SELECT a FROM t WHERE id = $1", "SELECT b FROM t"]
    assert diff["calls"].tolist() == [3, 1] and diff["total_ms"].tolist() == [3.0, 2.0]
    assert diff["mean_ms"].tolist() == [1.0, 2.0]
    client = top_statements(
        [("SELECT a FROM t WHERE id = ?", 0.002)] * 3 + [("SELECT c FROM t", 0.001)]
    )
    merged = lesson.merge_top(client, diff)
    row = merged.set_index("shape").loc["SELECT a FROM t WHERE id = ?"]
    assert (row["client_count"], row["server_calls"]) == (3, 3)
    assert row["client_ms"] == pytest.approx(6.0) and row["server_ms"] == pytest.approx(3.0)
    assert set(merged["shape"]) == {"SELECT a FROM t WHERE id = ?", "SELECT b FROM t",
                                    "SELECT c FROM t"}  # fmt: skip


# ---------------------------------------------------------------- where the time goes


def _entities(db: Backend, n: int) -> Any:
    """ORM entities"""
    with db.Session() as session:
        return session.scalars(select(Car).order_by(Car.id).limit(n)).all()


def _core(db: Backend, n: int) -> Any:
    """Core rows"""
    with db.sync_engine.connect() as conn:
        return conn.execute(select(Car.__table__).order_by(Car.id).limit(n)).all()


def test_driver_time_counts_execute_and_fetch(any_db: Backend) -> None:
    with lesson.driver_time(any_db) as clock:
        rows = _core(any_db, 50)
    assert len(rows) == 50 and clock.statements == 1
    assert clock.execute_s > 0 and clock.fetch_s > 0
    assert clock.seconds == clock.execute_s + clock.fetch_s


def test_driver_time_composes_with_the_slow_query_log(any_db: Backend) -> None:
    """Both wrap the cursor; whichever listens first, both see the fetch."""
    with (
        log_slow_queries(any_db.sync_engine, threshold_ms=0, logger=None) as slow,
        lesson.driver_time(any_db) as clock,
    ):
        rows = _core(any_db, 50)
    assert len(rows) == slow.records[0].rows == 50
    assert clock.fetch_s > 0 and slow.records[0].fetch_ms > 0


def test_time_split_frame(sqlite_db: Backend) -> None:
    split = lesson.time_split([_entities, _core], [sqlite_db], 30, repeats=3)
    assert split["strategy"].tolist() == ["ORM entities", "Core rows"]
    assert (split["total_ms"] > 0).all() and (split["driver_ms"] > 0).all()
    assert set(split.columns) >= {"python_ms", "python_share", "n", "backend", "q1_ms", "q3_ms"}
    assert (split["q1_ms"] <= split["total_ms"]).all() and (
        split["total_ms"] <= split["q3_ms"]
    ).all()
    assert isinstance(lesson.split_chart(split, "demo"), Figure)


def test_profiles_show_no_machine_paths(sqlite_db: Backend) -> None:
    table = lesson.profile_table(lambda: _entities(sqlite_db, 30), top=40)
    assert not any(ABSOLUTE_PATH.search(name) for name in table["function"])
    assert not any(" at 0x" in name for name in table["function"])
    assert table.attrs["total_ms"] > 0 and table.attrs["plain_ms"] > 0
    assert any("sqlalchemy/orm/loading.py" in name for name in table["function"])
    calls = table.attrs["calls"]  # deterministic: once per row, whatever the timings
    assert calls["sqlalchemy/orm/loading.py:_instance"] == 30
    assert calls["sqlalchemy/orm/instrumentation.py:new_instance"] == 30
    report = lesson.pyinstrument_report(lambda: _entities(sqlite_db, 2_000), interval=0.0001)
    assert "Profile at" not in report and not ABSOLUTE_PATH.search(report)


def test_profile_file_names() -> None:
    site = "/usr/lib/python3.11/site-packages/sqlalchemy/orm/loading.py"
    assert lesson._short_file(site) == "sqlalchemy/orm/loading.py"
    assert lesson._short_file("/home/me/project/app.py") == "app.py"
    assert lesson._short_file("~") == "~"
    assert lesson._ABSOLUTE.sub(r"\1", "x  /tmp/ab/cd/e.py:3 and sqlalchemy/orm/a.py:1") == (
        "x  e.py:3 and sqlalchemy/orm/a.py:1"
    )


def test_top_text_is_deterministic() -> None:
    assert lesson.top_text(top_statements([], by="count")) == ""
    lines = lesson.top_text(top_statements([("SELECT b", 0.1), ("SELECT a", 0.2)], by="count"))
    assert lines.splitlines() == ["    1 × SELECT a", "    1 × SELECT b"]
    frame = pd.DataFrame(
        {"shape": ["SELECT 1"], "count": [3], "origin": ["views.py:42 list_users"]}
    )
    assert lesson.top_text(frame) == "    3 × views.py list_users  SELECT 1"


# -------------------------------------------------------------------------- the exercise


def _stub(session: Session, n: int) -> Any:
    raise NotImplementedError("your turn")


def _joined(session: Session, n: int) -> Any:
    """Half-fix: the N+1 gone (joinedload), the entities still built."""
    stmt = (
        select(Post)
        .options(joinedload(Post.author))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(n)
    )
    return [(post.title, post.author.name) for post in session.scalars(stmt)]


def _selectin(session: Session, n: int) -> Any:
    """Half-fix: two statements (selectinload), the entities still built."""
    stmt = (
        select(Post)
        .options(selectinload(Post.author))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(n)
    )
    return [(post.title, post.author.name) for post in session.scalars(stmt)]


def _columns_then_lookups(session: Session, n: int) -> Any:
    """Half-fix: columns only, the N+1 kept (one name lookup per author)."""
    stmt = (
        select(Post.title, Post.author_id).order_by(Post.created_at.desc(), Post.id.desc()).limit(n)
    )
    names: dict[int, str] = {}
    report = []
    for title, author_id in session.execute(stmt):
        if author_id not in names:
            names[author_id] = session.scalar(select(User.name).where(User.id == author_id))
        report.append((title, names[author_id]))
    return report


def _all_rows_sorted_in_python(session: Session, n: int) -> Any:
    """Columns, one statement, but every post fetched and sorted in Python."""
    stmt = select(Post.title, User.name, Post.created_at, Post.id).join(Post.author)
    rows = sorted(session.execute(stmt), key=lambda r: (r.created_at, r.id), reverse=True)
    return [(r.title, r.name) for r in rows[:n]]


def _oldest_first(session: Session, n: int) -> Any:
    """Columns, one statement, the wrong order."""
    stmt = select(Post.title, User.name).join(Post.author).order_by(Post.created_at).limit(n)
    return session.execute(stmt).all()


def _raises(session: Session, n: int) -> Any:
    return session.execute(text("SELECT nosuchcolumn FROM posts")).all()


def _solution(session: Session, n: int) -> Any:
    stmt = (
        select(Post.title, User.name)
        .join(Post.author)
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(n)
    )
    return session.execute(stmt).all()


def _two_statements(session: Session, n: int) -> Any:
    """Also right: the posts' columns, then the authors' names in one IN statement."""
    stmt = (
        select(Post.title, Post.author_id).order_by(Post.created_at.desc(), Post.id.desc()).limit(n)
    )
    posts = session.execute(stmt).all()
    ids = {author_id for _, author_id in posts}
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
    return [(title, names[author_id]) for title, author_id in posts]


_ORDER = (Post.created_at.desc(), Post.id.desc())

#: What the check's copy returned to `_precomputed` before (a result kept from earlier).
_KEPT: dict[tuple[str, int], Any] = {}


def _precomputed_on_the_dataset(session: Session, n: int) -> Any:
    """Gaming: the answer computed once on the shared dataset, served without a statement."""
    return _DATASET_ANSWERS[(session.get_bind().dialect.name, n)]


_DATASET_ANSWERS: dict[tuple[str, int], Any] = {}


def _memoised(session: Session, n: int) -> Any:
    """Gaming: right the first time, then served from a cache (no statement)."""
    key = (str(session.get_bind().url), n)
    if key not in _KEPT:
        _KEPT[key] = _solution(session, n)
    return _KEPT[key]


def _raw_dbapi_n_plus_one(session: Session, n: int) -> Any:
    """Gaming: the N+1 through the raw DBAPI cursor, where no SQLAlchemy event sees it."""
    raw = session.connection().connection.dbapi_connection
    mark = "?" if session.get_bind().dialect.name == "sqlite" else "%s"
    cursor = raw.cursor()
    cursor.execute(
        f"SELECT title, author_id FROM posts ORDER BY created_at DESC, id DESC LIMIT {mark}", (n,)
    )
    report = []
    for title, author_id in cursor.fetchall():
        cursor.execute(f"SELECT name FROM users WHERE id = {mark}", (author_id,))
        report.append((title, cursor.fetchone()[0]))
    return report


def _second_engine_n_plus_one(session: Session, n: int) -> Any:
    """Gaming: the N+1 on an engine of its own, which the check's listeners do not watch."""
    engine = create_engine(session.get_bind().url)
    try:
        with engine.connect() as conn:
            posts = conn.execute(select(Post.title, Post.author_id).order_by(*_ORDER).limit(n))
            return [
                (title, conn.execute(select(User.name).where(User.id == author)).scalar_one())
                for title, author in posts.all()
            ]
    finally:
        engine.dispose()


def _calls_the_reference(session: Session, n: int) -> Any:
    """Gaming: the check's own reference function."""
    return lesson._reference_recent_posts(session, n)


def _limit_in_an_f_string(session: Session, n: int) -> Any:
    """The limit pasted into the SQL text."""
    sql = (
        "SELECT p.title, u.name FROM posts p JOIN users u ON u.id = p.author_id "
        f"ORDER BY p.created_at DESC, p.id DESC LIMIT {n}"
    )
    return [tuple(row) for row in session.execute(text(sql))]


def _no_tie_breaker(session: Session, n: int) -> Any:
    """Columns, one statement, but equal created_at left in any order."""
    stmt = select(Post.title, User.name).join(Post.author).order_by(Post.created_at.desc())
    return session.execute(stmt.limit(n)).all()


def _one_row_too_many(session: Session, n: int) -> Any:
    """Fetches n + 1 rows and drops the last."""
    return _solution(session, n + 1)[:n]


def _every_users_name(session: Session, n: int) -> Any:
    """Two statements, the second fetching every user's name (not only the authors')."""
    posts = session.execute(select(Post.title, Post.author_id).order_by(*_ORDER).limit(n)).all()
    names = dict(session.execute(select(User.id, User.name)).all())
    return [(title, names[author]) for title, author in posts]


NAIVE = [
    (lesson.naive_recent_posts, "over budget", "loop that sends one statement per row"),
    (_joined, "loaded entities", "loaded full ORM objects"),
    (_selectin, "loaded entities", "loaded full ORM objects"),
    (_columns_then_lookups, "over budget", "loop that sends one statement per row"),
    (_all_rows_sorted_in_python, "too many rows", "filter, sort and limit in SQL"),
    (_oldest_first, "wrong result", "differs from the reference"),
    (_raises, "raised", "It raised"),
    (_precomputed_on_the_dataset, "wrong result", "differs from the reference"),
    (_raw_dbapi_n_plus_one, "raw driver", "raw DBAPI connection"),
    (_second_engine_n_plus_one, "other engine", "engine of its own"),
    (_calls_the_reference, "read the reference", "reference function"),
    (_limit_in_an_f_string, "values in the SQL", "pasted into the SQL text"),
    (_no_tie_breaker, "wrong result", "differs from the reference"),
    (_one_row_too_many, "too many rows", "at most"),
    (_every_users_name, "too many rows", "at most"),
]


@pytest.mark.parametrize(("naive", "status", "why"), NAIVE, ids=[n[0].__name__ for n in NAIVE])
def test_check_rejects_each_naive_answer(
    any_db: Backend, naive: Any, status: str, why: str
) -> None:
    with any_db.Session() as session:  # what a learner could compute on the shared dataset
        name = any_db.sync_engine.dialect.name
        for size in (lesson.RECENT, lesson.FEW):
            _DATASET_ANSWERS[(name, size)] = _solution(session, size)
    verdict = lesson.check_recent_posts(naive, any_db)
    assert verdict.status == status and why in verdict.message, verdict


def test_check_rejects_a_cached_answer(any_db: Backend) -> None:
    _KEPT.clear()
    assert lesson.check_recent_posts(_memoised, any_db).passed  # the first time, it queries
    verdict = lesson.check_recent_posts(_memoised, any_db)
    assert verdict.status == "no statement" and "sent no statement" in verdict.message


def test_unfixed_function_points_at_the_top_statements(any_db: Backend) -> None:
    verdict = lesson.check_recent_posts(lesson.naive_recent_posts, any_db)
    assert "top-statements table" in verdict.message and "With n=50" in verdict.message
    data = lesson.check_data(any_db)
    assert verdict.statements == 1 + lesson._expected_counts(data, lesson.RECENT)[1]


def _hard_coded_limit(session: Session, n: int) -> Any:
    """Columns, one statement, but always 50 posts."""
    return _solution(session, lesson.RECENT)


def test_check_asks_for_a_second_size(any_db: Backend) -> None:
    verdict = lesson.check_recent_posts(_hard_coded_limit, any_db)
    assert verdict.status == "wrong result" and f"n={lesson.FEW}" in verdict.message


def _bound_text(session: Session, n: int) -> Any:
    """Also right: text() with the limit bound."""
    sql = (
        "SELECT p.title, u.name FROM posts p JOIN users u ON u.id = p.author_id "
        "ORDER BY p.created_at DESC, p.id DESC LIMIT :n"
    )
    return [tuple(row) for row in session.execute(text(sql), {"n": n})]


@pytest.mark.parametrize("right", [_solution, _two_statements, _bound_text])
def test_check_accepts_right_answers(any_db: Backend, right: Any) -> None:
    verdict = lesson.check_recent_posts(right, any_db)
    assert verdict.passed, verdict
    assert verdict.entities == {}


def test_check_says_not_attempted_for_the_stub(any_db: Backend) -> None:
    assert lesson.check_recent_posts(_stub, any_db).status == "not attempted"


def test_the_reference_is_not_public() -> None:
    assert "reference_recent_posts" not in lesson.__all__
    assert not hasattr(lesson, "reference_recent_posts")


def test_check_data_has_a_fresh_post_and_ties(any_db: Backend) -> None:
    data = lesson.check_data(any_db)
    assert data.posts == 36 + 1  # tiny: every post, and the one newer than all of them
    with data.db.Session() as session:
        report = lesson.naive_recent_posts(session)
        assert report[0][0] == data.fresh_title
        assert report == lesson._reference_recent_posts(session)
        (tied,) = data.tied.values()  # tiny: only FEW has a place n + 2 to tie across
        created = session.execute(select(Post.created_at).where(Post.id.in_(tied)).distinct()).all()
        assert len(tied) == 4 and len(created) == 1
    with any_db.Session() as session:  # the shared dataset is untouched
        assert session.scalar(select(func.count()).select_from(Post)) == 36
    posts, authors = lesson._expected_counts(data, lesson.FEW)
    assert posts == lesson.FEW and 1 <= authors <= lesson.FEW


def test_slow_log_finds_the_hidden_n_plus_one(sqlite_db: Backend) -> None:
    with (
        log_slow_queries(sqlite_db.sync_engine, threshold_ms=0, logger=None) as log,
        sqlite_db.Session() as session,
    ):
        lesson.naive_recent_posts(session)
    top = top_statements(log, by="count")
    assert top["origin"].iloc[0].endswith(" byline")
    assert "posts.body" in top["shape"].iloc[1]  # the full-entity load: the body too


def test_module_is_importable_without_ipython_cells() -> None:
    assert lesson._cell_files() == {} or "IPython" in sys.modules
