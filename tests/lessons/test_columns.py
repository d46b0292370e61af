"""Tests for course_lib.lessons.columns: time to first row, what a result fetches before its
first row, the raw driver, the gc helpers, server-side cursors, and notebook 02's exercise
check (each naive answer the notebook warns about fails, saying why; the solution passes)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Integer, bindparam, func, select
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session, joinedload, load_only

from course_lib.backends import Backend
from course_lib.claims import ClaimFailed
from course_lib.lessons import columns as lesson
from course_lib.measure import abenchmark, count_statements
from course_lib.models import Comment, Post, User

COMMENTS = select(Comment).order_by(Comment.id)
COMMENT_COLUMNS = select(Comment.id, Comment.text).order_by(Comment.id)


def _run(db: Backend, work: Awaitable[Any]) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(work)


def _total_comments(db: Backend) -> int:
    with db.Session() as session:
        return session.scalar(select(func.count()).select_from(Comment))


# ------------------------------------------------------------------ time to first row


def fetch_all(db: Backend, n: int, first_row: Any) -> int:
    """fetch all"""
    with db.Session() as session:
        comments = session.scalars(COMMENTS.limit(n)).all()
        first_row()
        return len(comments)


def batches(db: Backend, n: int, first_row: Any) -> int:
    """yield_per batches"""
    count = 0
    with db.Session() as session:
        for batch in session.scalars(COMMENTS.limit(n).execution_options(yield_per=5)).partitions():
            first_row()
            count += len(batch)
    return count


async def stream_batches(db: Backend, n: int, first_row: Any) -> int:
    """async stream batches"""
    count = 0
    async with db.AsyncSession() as session:
        result = await session.stream_scalars(COMMENTS.limit(n).execution_options(yield_per=5))
        async for batch in result.partitions():
            first_row()
            count += len(batch)
    return count


def test_time_to_first_row_reports_each_strategy(sqlite_db: Backend) -> None:
    frame = lesson.time_to_first_row([fetch_all, batches], sqlite_db, 20)
    assert frame["strategy"].tolist() == ["fetch all", "yield_per batches"]
    assert frame["backend"].tolist() == ["sqlite", "sqlite"]
    assert list(frame.columns) == [
        "strategy",
        "backend",
        "n",
        "first_row_ms",
        "first_row_q1_ms",
        "first_row_q3_ms",
        "median_ms",
        "q1_ms",
        "q3_ms",
        "iqr_ms",
        "statements",
        "gc_ms",
        "peak_kib",
    ]
    assert (frame["n"] == 20).all()
    assert (frame["statements"] == 1).all()
    assert (frame["first_row_ms"] <= frame["median_ms"]).all()  # the first row comes first
    assert (frame["first_row_q1_ms"] <= frame["first_row_q3_ms"]).all()
    assert (frame["q1_ms"] <= frame["median_ms"]).all()
    assert (frame["median_ms"] <= frame["q3_ms"]).all()
    assert (frame["peak_kib"] > 0).all()
    assert frame.attrs["scales"] == ["tiny"]


def test_time_to_first_row_collects_before_each_sample(
    sqlite_db: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or real(*a))
    lesson.time_to_first_row([fetch_all], sqlite_db, 5, warmup=2, repeats=6, memory=False)
    assert len(calls) == 6  # one per kept sample, none for the warm-up runs
    calls.clear()
    lesson.time_to_first_row([fetch_all], sqlite_db, 5, collect=False, memory=False)
    assert calls == []


def test_atime_to_first_row_mixes_sync_and_async(any_db: Backend) -> None:
    frame = _run(
        any_db, lesson.atime_to_first_row([batches, stream_batches], any_db, 20, memory=False)
    )
    assert frame["strategy"].tolist() == ["yield_per batches", "async stream batches"]
    assert "peak_kib" not in frame
    assert (frame["statements"] == 1).all()


def test_a_strategy_must_report_its_first_row(sqlite_db: Backend) -> None:
    def silent(db: Backend, n: int, first_row: Any) -> None:
        """never calls first_row"""

    with pytest.raises(RuntimeError, match="never called first_row"):
        lesson.time_to_first_row([silent], sqlite_db, 5, memory=False)


def test_sync_harness_refuses_async_strategies(sqlite_db: Backend) -> None:
    with pytest.raises(TypeError, match="atime_to_first_row"):
        lesson.time_to_first_row([stream_batches], sqlite_db, 5)


@pytest.mark.parametrize(("warmup", "repeats"), [(1, 4), (0, 5)])
def test_harness_needs_quartiles_and_a_warmup(
    sqlite_db: Backend, warmup: int, repeats: int
) -> None:
    with pytest.raises(ValueError, match=r"repeats|warmup"):
        lesson.time_to_first_row([fetch_all], sqlite_db, 5, warmup=warmup, repeats=repeats)


# ------------------------------------------------------------------- ratios and claims


def test_ratios_use_each_backends_largest_n() -> None:
    frame = pd.DataFrame(
        {
            "strategy": ["slow", "fast"] * 3,
            "backend": ["a", "a", "a", "a", "b", "b"],
            "n": [10, 10, 100, 100, 10, 10],
            "median_ms": [2.0, 1.0, 30.0, 3.0, 8.0, 2.0],
            "peak_kib": [1.0, 1.0, 50.0, 5.0, 4.0, 1.0],
        }
    )
    result = lesson.ratios(frame, "slow", "fast").set_index("backend")
    assert result.loc["a", "n"] == 100
    assert result.loc["a", "median_ms ×"] == pytest.approx(10.0)
    assert result.loc["b", "peak_kib ×"] == pytest.approx(4.0)
    only_time = lesson.ratios(frame, "slow", "fast", measures=["median_ms"])
    assert list(only_time.columns) == ["backend", "n", "median_ms ×"]


def test_claims_need_enough_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert lesson.claim_with_rows("a is faster", False, rows=lesson.MIN_ROWS - 1) is None
    assert "Not claimed with 999 rows" in capsys.readouterr().out
    assert lesson.claim_with_rows("a is faster", True, rows=lesson.MIN_ROWS) is True
    with pytest.raises(ClaimFailed, match="a is faster"):
        lesson.claim_with_rows("a is faster", pd.Series([True, False]), rows=10_000)


# ------------------------------------------------------- what a result fetches, and when


def test_driver_rows_counts_what_the_driver_returned(any_db: Backend) -> None:
    async def read_all() -> int:
        async with any_db.AsyncSession() as session:
            await session.execute(select(1))  # connect first: a new connection fetches too
            return len((await session.execute(COMMENT_COLUMNS)).all())

    originals = [cls.__dict__[name] for cls, name in lesson._driver_fetch_methods()]
    with lesson.driver_rows() as fetched:
        rows = _run(any_db, read_all())
    assert fetched.rows >= rows == _total_comments(any_db)
    assert [cls.__dict__[name] for cls, name in lesson._driver_fetch_methods()] == originals


async def orm_async_for(db: Backend, query: Any) -> Any:
    """stream(): async for"""
    async with db.AsyncSession() as session:
        result = await session.stream(query)
        async for row in result:
            return row


def _ways(batch: int) -> list[Any]:
    async def orm_yield_per(db: Backend, query: Any) -> Any:
        """stream(), yield_per: async for"""
        async with db.AsyncSession() as session:
            result = await session.stream(query.execution_options(yield_per=batch))
            async for row in result:
                return row

    async def orm_partitions(db: Backend, query: Any) -> Any:
        """stream(): partitions(n)"""
        async with db.AsyncSession() as session:
            result = await session.stream(query)
            async for part in result.partitions(batch):
                return part[0]

    async def orm_fetchmany(db: Backend, query: Any) -> Any:
        """stream(): fetchmany(n)"""
        async with db.AsyncSession() as session:
            result = await session.stream(query)
            return (await result.fetchmany(batch))[0]

    async def core_stream(db: Backend, query: Any) -> Any:
        """Core conn.stream(): async for"""
        async with db.engine.connect() as conn:
            result = await conn.stream(query)
            async for row in result:
                return row

    return [orm_async_for, orm_yield_per, orm_partitions, orm_fetchmany, core_stream]


@pytest.mark.parametrize("batch", [5, 60])  # below and above asyncpg's 50-row top-up
def test_only_batching_or_core_streams_before_the_first_row(any_db: Backend, batch: int) -> None:
    """Notebook 02's table: session.stream() + async for fetches everything first, for
    entities and column rows alike; yield_per, partitions(n), fetchmany(n) batch; Core streams."""
    n = _total_comments(any_db)
    assert n > batch
    queries = {"entities": COMMENTS, "columns": COMMENT_COLUMNS}
    table = _run(any_db, lesson.before_first_row(_ways(batch), queries, [any_db]))
    first = 1 if any_db.name == "sqlite" else min(lesson.ASYNCPG_PREFETCH, n)
    assert table[(any_db.name, "objects built")].tolist() == [n, 0] + [batch, 0] * 3 + [0, 0]
    assert table[(any_db.name, "driver rows")].tolist() == (
        [n, n] + [max(batch, first)] * 6 + [first, first]
    )
    assert table.index.names == ["way", "query"]


def test_before_first_row_needs_a_row(sqlite_db: Backend) -> None:
    empty = {"none": COMMENTS.where(Comment.id < 0)}
    with pytest.raises(RuntimeError, match="returned no row"):
        _run(sqlite_db, lesson.before_first_row([orm_async_for], empty, [sqlite_db]))


# ---------------------------------------------------------------------- the raw driver


def test_driver_query_sends_sqlalchemys_sql_and_gets_the_same_rows(any_db: Backend) -> None:
    statement = select(Post.id, Post.title).order_by(Post.id.desc())
    raw = lesson.DriverQuery(statement.limit(bindparam("n", type_=Integer)))

    async def both() -> tuple[list[Any], list[Any], str]:
        async with any_db.AsyncSession() as session:
            with count_statements(any_db) as log:
                orm = (await session.execute(statement.limit(4))).all()
        return [tuple(r) for r in await raw.fetch(any_db, n=4)], [tuple(r) for r in orm], log.sql[0]

    driver_rows, orm_rows, sent = _run(any_db, both())
    assert driver_rows == orm_rows and len(driver_rows) == 4
    assert raw.sql(any_db) == sent


# ----------------------------------------------------------------- the garbage collector


def test_samples_table_reports_quartiles_and_pauses(sqlite_db: Backend) -> None:
    alive = lesson.live_objects(1000)
    assert len(alive) == 1000 and gc.is_tracked(alive[0])
    timings = {
        "default": _run(sqlite_db, abenchmark(lambda: sum(range(100)), repeats=5)),
        "off": _run(sqlite_db, abenchmark(lambda: sum(range(100)), repeats=5, collect=False)),
    }
    table = lesson.samples_table(timings)
    assert table.index.tolist() == ["default", "off"]
    assert list(table.columns) == [
        "samples",
        "median_ms",
        "q1_ms",
        "q3_ms",
        "iqr_ms",
        "max_ms",
        "gc_ms",
        "gc_max_ms",
    ]
    assert (table["samples"] == 5).all()
    assert (table["q1_ms"] <= table["max_ms"]).all()
    assert len(lesson.samples_chart(timings, "demo").axes) == 2


# ---------------------------------------------------------------- server-side cursors


@pytest.fixture(params=["pg_service", "pg_embedded"])
def pg(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


def _psycopg_cursors(db: Backend, **options: Any) -> pd.DataFrame:
    with db.Session() as session:
        session.execute(COMMENTS.execution_options(**options)).fetchmany(5)
        return lesson.server_cursors(session)


async def _asyncpg_cursors(db: Backend, stream: bool) -> pd.DataFrame:
    async with db.AsyncSession() as session:
        if stream:
            result = await session.stream(COMMENTS.execution_options(yield_per=5))
            await result.fetchmany(5)
        else:
            (await session.execute(COMMENTS)).fetchmany(5)
        return await session.run_sync(lesson.server_cursors)


def test_psycopg_yield_per_declares_a_named_cursor(pg: Backend) -> None:
    assert _psycopg_cursors(pg).empty
    found = _psycopg_cursors(pg, yield_per=5)
    assert found["how"].tolist() == ["SQL cursor: DECLARE … CURSOR"]
    assert found["query"].iloc[0].startswith("SELECT comments.id, comments.post_id")
    assert not found["query"].iloc[0].startswith("DECLARE")  # the driver's name is gone


def test_asyncpg_stream_binds_a_portal(pg: Backend) -> None:
    assert _run(pg, _asyncpg_cursors(pg, stream=False)).empty
    found = _run(pg, _asyncpg_cursors(pg, stream=True))
    assert found["how"].tolist() == ["protocol portal: Bind + Execute"]


def test_cursor_table_keeps_cases_without_cursors() -> None:
    found = pd.DataFrame([{"how": "portal", "query": "SELECT 1"}])
    table = lesson.cursor_table({"plain": found.iloc[:0], "streamed": found})
    assert table.to_dict("index") == {
        "plain": {"open cursors": 0, "how": "-", "query": "-"},
        "streamed": {"open cursors": 1, "how": "portal", "query": "SELECT 1"},
    }


def test_objects_built_counts_only_orm_objects(sqlite_db: Backend) -> None:
    with sqlite_db.Session() as session, lesson.objects_built() as built:
        session.scalars(select(User).limit(3)).all()
        session.execute(select(Post.id, Post.title).limit(5)).all()
    assert dict(built) == {"User": 3}


# ---------------------------------------------------------------------- the exercise

NEWEST_FIRST = (Post.created_at.desc(), Post.id.desc())
ANSWER_COLUMNS = (Post.id, Post.title, User.name.label("author"))


def stub(session: Session) -> list[dict]:
    raise NotImplementedError("your turn")


def full_entities_joined(session: Session) -> list[dict]:
    """One statement, but full Post and User entities (bodies included)."""
    query = select(Post).options(joinedload(Post.author)).order_by(*NEWEST_FIRST).limit(50)
    return [{"id": p.id, "title": p.title, "author": p.author.name} for p in session.scalars(query)]


def partial_entities(session: Session) -> list[dict]:
    """One statement, partial entities: still Post and User objects."""
    query = (
        select(Post)
        .options(load_only(Post.id, Post.title), joinedload(Post.author).load_only(User.name))
        .order_by(*NEWEST_FIRST)
        .limit(50)
    )
    return [{"id": p.id, "title": p.title, "author": p.author.name} for p in session.scalars(query)]


def with_only_columns_as_objects(session: Session) -> list[dict]:
    """The guide's idiom: with_only_columns read as if it gave partial Post objects."""
    query = select(Post).with_only_columns(Post.id, Post.title).order_by(*NEWEST_FIRST).limit(50)
    return [{"id": p.id, "title": p.title, "author": "?"} for p in session.scalars(query)]


def with_only_columns_without_join(session: Session) -> list[dict]:
    """with_only_columns adding the author's name but no join: every post x every user."""
    query = select(Post).with_only_columns(*ANSWER_COLUMNS).order_by(*NEWEST_FIRST).limit(50)
    return [dict(row._mapping) for row in session.execute(query)]


def columns_with_body(session: Session) -> list[dict]:
    """A column select that brings the 2 kB body along, then drops it."""
    query = select(*ANSWER_COLUMNS, Post.body).join(Post.author).order_by(*NEWEST_FIRST).limit(50)
    return [{"id": r.id, "title": r.title, "author": r.author} for r in session.execute(query)]


def oldest_first(session: Session) -> list[dict]:
    """Columns only, but the wrong order."""
    query = select(*ANSWER_COLUMNS).join(Post.author).order_by(Post.created_at, Post.id).limit(50)
    return [dict(row._mapping) for row in session.execute(query)]


def two_statements(session: Session) -> list[dict]:
    """Columns only, but the authors in a second statement."""
    posts = session.execute(
        select(Post.id, Post.title, Post.author_id).order_by(*NEWEST_FIRST).limit(50)
    ).all()
    ids = {p.author_id for p in posts}
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
    return [{"id": p.id, "title": p.title, "author": names[p.author_id]} for p in posts]


def solution(session: Session) -> list[dict]:
    """The notebook's solution: three columns, one join, one statement."""
    query = select(*ANSWER_COLUMNS).join(Post.author).order_by(*NEWEST_FIRST).limit(50)
    return [dict(row._mapping) for row in session.execute(query)]


def test_reference_is_newest_first(sqlite_db: Backend) -> None:
    with sqlite_db.Session() as session:
        answer = lesson.reference_latest_posts(session)
        dates = dict(session.execute(select(Post.id, Post.created_at)).all())
    assert 0 < len(answer) <= lesson.LATEST
    assert set(answer[0]) == {"id", "title", "author"}
    keys = [(dates[row["id"]], row["id"]) for row in answer]
    assert keys == sorted(keys, reverse=True)


def test_check_says_not_attempted_for_the_stub(any_db: Backend) -> None:
    assert lesson.check_latest_posts(stub, any_db).status == "not attempted"


def test_check_rejects_the_naive_lazy_version(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(lesson.reference_latest_posts, any_db)
    assert verdict.status == "over budget"
    assert verdict.statements > 1
    assert "the budget is 1" in verdict.message


def test_check_rejects_a_second_statement(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(two_statements, any_db)
    assert verdict.status == "over budget", verdict
    assert "2 statements: the budget is 1" in verdict.message


@pytest.mark.parametrize("naive", [full_entities_joined, partial_entities])
def test_check_rejects_entities_in_one_statement(any_db: Backend, naive: Any) -> None:
    verdict = lesson.check_latest_posts(naive, any_db)
    assert verdict.status == "loaded entities", verdict
    assert "loaded full ORM objects" in verdict.message and "select columns" in verdict.message
    assert verdict.statements == 1
    assert verdict.entities["Post"] > 0 and verdict.entities["User"] > 0


def test_check_rejects_with_only_columns_read_as_objects(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(with_only_columns_as_objects, any_db)
    assert verdict.status == "raised", verdict
    assert "AttributeError" in verdict.message
    assert "with_only_columns: it gives rows" in verdict.message


def test_check_rejects_with_only_columns_without_a_join(any_db: Backend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # SQLAlchemy warns of the cartesian product
        verdict = lesson.check_latest_posts(with_only_columns_without_join, any_db)
    assert verdict.status == "wrong result", verdict
    assert "differs from the reference" in verdict.message


def test_check_rejects_loading_the_body(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(columns_with_body, any_db)
    assert verdict.status == "loaded the body", verdict
    assert "selected the post body" in verdict.message
    assert verdict.statements == 1 and verdict.entities == {}


def test_check_rejects_a_wrong_order(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(oldest_first, any_db)
    assert verdict.status == "wrong result"
    assert "differs from the reference" in verdict.message


def test_check_refuses_an_async_answer(sqlite_db: Backend) -> None:
    async def latest_posts(session: Any) -> list[dict]:
        return []

    with pytest.raises(TypeError, match="plain def"):
        lesson.check_latest_posts(latest_posts, sqlite_db)


def test_check_accepts_the_solution(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(solution, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    assert verdict.entities == {}
