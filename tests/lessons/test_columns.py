"""Tests for course_lib.lessons.columns: time to first row, what a result fetches before its
first row, the raw driver, the gc helpers, server-side cursors, and notebook 02's exercise
check (each naive answer the notebook warns about fails, saying why; the solution passes)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Integer, Text, bindparam, func, select, text
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, joinedload, load_only, mapped_column

from course_lib.backends import Backend
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


def test_time_to_first_row_runs_on_the_harness(
    sqlite_db: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_collect, real_freeze = gc.collect, gc.freeze
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or real_collect(*a))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze") or real_freeze())
    frame = lesson.time_to_first_row(
        [fetch_all, batches], sqlite_db, 5, warmup=2, repeats=6, memory=False
    )
    # one collect + freeze per measurement, then one collect per kept sample of each strategy
    assert calls == ["collect", "freeze"] + ["collect"] * 12
    assert (frame["first_row_ms"] <= frame["median_ms"] * 1.01).all()
    calls.clear()
    lesson.time_to_first_row([fetch_all], sqlite_db, 5, collect=False, memory=False)
    assert calls == []


def test_time_to_first_row_interleaves_the_samples(sqlite_db: Backend) -> None:
    order: list[str] = []

    def a(db: Backend, n: int, first_row: Any) -> None:
        """a"""
        order.append("a")
        first_row()

    def b(db: Backend, n: int, first_row: Any) -> None:
        """b"""
        order.append("b")
        first_row()

    lesson.time_to_first_row([a, b], sqlite_db, 1, memory=True)
    # warm-up of each, then the samples alternate; the untimed memory runs come last
    assert order == ["a", "b"] + ["a", "b"] * 5 + ["a", "b"]


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
    assert "full_collections" not in table
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


def test_full_collections_counts_only_inside_the_samples(sqlite_db: Backend) -> None:
    counted = lesson.FullCollections(lambda: gc.collect(2))  # one full collection per call
    timing = _run(sqlite_db, abenchmark(counted, repeats=5, number=1))
    gc.collect()  # outside a call: not counted
    assert counted.per_call == [1] * 6  # the warm-up call, then 5 samples
    assert counted.in_samples(timing) == 5
    table = lesson.samples_table({"x": timing}, {"x": counted})
    assert table.loc["x", "full_collections"] == 5


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
LISTING_QUERY = select(*ANSWER_COLUMNS).join(Post.author).order_by(*NEWEST_FIRST)


class ListingBase(DeclarativeBase):
    """Notebook 02's own declarative base (not the course's Base)."""


class DeferredPost(ListingBase):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int]
    title: Mapped[str]
    body: Mapped[str] = mapped_column(Text, deferred=True, deferred_raiseload=True)
    created_at: Mapped[datetime]


def stub(session: Session, n: int) -> list[dict]:
    raise NotImplementedError("your turn")


def full_entities_joined(session: Session, n: int) -> list[dict]:
    """One statement, but full Post and User entities (bodies included)."""
    query = select(Post).options(joinedload(Post.author)).order_by(*NEWEST_FIRST).limit(n)
    return [{"id": p.id, "title": p.title, "author": p.author.name} for p in session.scalars(query)]


def partial_entities(session: Session, n: int) -> list[dict]:
    """One statement, partial entities: still Post and User objects."""
    query = (
        select(Post)
        .options(load_only(Post.id, Post.title), joinedload(Post.author).load_only(User.name))
        .order_by(*NEWEST_FIRST)
        .limit(n)
    )
    return [{"id": p.id, "title": p.title, "author": p.author.name} for p in session.scalars(query)]


def own_mapping_entities(session: Session, n: int) -> list[dict]:
    """Entities of the notebook's own DeferredPost mapping (another declarative base)."""
    query = (
        select(DeferredPost, User.name)
        .join(User, User.id == DeferredPost.author_id)
        .order_by(DeferredPost.created_at.desc(), DeferredPost.id.desc())
        .limit(n)
    )
    return [{"id": p.id, "title": p.title, "author": name} for p, name in session.execute(query)]


def with_only_columns_as_objects(session: Session, n: int) -> list[dict]:
    """The guide's idiom: with_only_columns read as if it gave partial Post objects."""
    query = select(Post).with_only_columns(Post.id, Post.title).order_by(*NEWEST_FIRST).limit(n)
    return [{"id": p.id, "title": p.title, "author": "?"} for p in session.scalars(query)]


def with_only_columns_without_join(session: Session, n: int) -> list[dict]:
    """with_only_columns adding the author's name but no join: every post x every user."""
    query = select(Post).with_only_columns(*ANSWER_COLUMNS).order_by(*NEWEST_FIRST).limit(n)
    return [dict(row._mapping) for row in session.execute(query)]


def columns_with_body(session: Session, n: int) -> list[dict]:
    """A column select that brings the 2 kB body along, then drops it."""
    query = select(*ANSWER_COLUMNS, Post.body).join(Post.author).order_by(*NEWEST_FIRST).limit(n)
    return [{"id": r.id, "title": r.title, "author": r.author} for r in session.execute(query)]


def whole_table_with_body(session: Session, n: int) -> list[dict]:
    """Core: the posts table (every column, the body too) and the author's name."""
    posts = Post.__table__
    query = (
        select(posts, User.name.label("author"))
        .join(User, User.id == posts.c.author_id)
        .order_by(posts.c.created_at.desc(), posts.c.id.desc())
        .limit(n)
    )
    return [{"id": r.id, "title": r.title, "author": r.author} for r in session.execute(query)]


def sort_and_slice_in_python(session: Session, n: int) -> list[dict]:
    """Columns of every post, sorted and sliced in Python."""
    query = select(Post.id, Post.title, Post.created_at, User.name).join(Post.author)
    rows = sorted(session.execute(query), key=lambda r: (r.created_at, r.id), reverse=True)
    return [{"id": r.id, "title": r.title, "author": r.name} for r in rows[:n]]


def order_in_sql_slice_in_python(session: Session, n: int) -> list[dict]:
    """The right ORDER BY, but no LIMIT: every row comes back, then rows[:n]."""
    rows = session.execute(LISTING_QUERY).all()
    return [dict(row._mapping) for row in rows[:n]]


def no_tie_break(session: Session, n: int) -> list[dict]:
    """Newest first by created_at only: posts with the same created_at in any order."""
    query = select(*ANSWER_COLUMNS).join(Post.author).order_by(Post.created_at.desc()).limit(n)
    return [dict(row._mapping) for row in session.execute(query)]


def oldest_first(session: Session, n: int) -> list[dict]:
    """Columns only, but the wrong order."""
    query = select(*ANSWER_COLUMNS).join(Post.author).order_by(Post.created_at, Post.id).limit(n)
    return [dict(row._mapping) for row in session.execute(query)]


def two_statements(session: Session, n: int) -> list[dict]:
    """Columns only, but the authors in a second statement."""
    posts = session.execute(
        select(Post.id, Post.title, Post.author_id).order_by(*NEWEST_FIRST).limit(n)
    ).all()
    ids = {p.author_id for p in posts}
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
    return [{"id": p.id, "title": p.title, "author": names[p.author_id]} for p in posts]


def solution(session: Session, n: int) -> list[dict]:
    """The notebook's solution: three columns, one join, one statement."""
    return [dict(row._mapping) for row in session.execute(LISTING_QUERY.limit(n))]


def body_only_in_where(session: Session, n: int) -> list[dict]:
    """Right: the body is used in the WHERE, never selected."""
    query = LISTING_QUERY.where(func.length(Post.body) > 0).limit(n)
    return [dict(row._mapping) for row in session.execute(query)]


def plain_sql(session: Session, n: int) -> list[dict]:
    """Right: the same query as text() SQL, with n as a bound parameter."""
    query = text(
        "SELECT posts.id, posts.title, users.name AS author FROM posts "
        "JOIN users ON users.id = posts.author_id "
        "ORDER BY posts.created_at DESC, posts.id DESC LIMIT :n"
    )
    return [dict(row._mapping) for row in session.execute(query, {"n": n})]


def _reference(any_db: Backend) -> list[dict]:
    data = lesson.check_data(any_db)
    with data.db.Session() as session:
        return lesson.reference_latest_posts(session, data.n)


def test_check_data_ties_across_the_nth_place(any_db: Backend) -> None:
    data = lesson.check_data(any_db)
    with any_db.Session() as session:
        total = session.scalar(select(func.count()).select_from(Post))
    assert data.posts == min(total, 2 * lesson.LATEST) and data.n == min(50, data.posts // 2)
    with data.db.Session() as session:
        ranked = session.execute(select(Post.id, Post.created_at).order_by(*NEWEST_FIRST)).all()
    assert len(ranked) == data.posts
    tied = ranked[data.n - 2 : data.n + 1]
    assert len({r.created_at for r in tied}) == 1 and tuple(r.id for r in tied) == data.tied
    assert ranked[data.n - 3].created_at > tied[0].created_at > ranked[data.n + 1].created_at
    assert lesson.check_data(any_db) is data  # made once per process


def test_reference_is_newest_first(sqlite_db: Backend) -> None:
    answer = _reference(sqlite_db)
    data = lesson.check_data(sqlite_db)
    with data.db.Session() as session:
        dates = dict(session.execute(select(Post.id, Post.created_at)).all())
    assert len(answer) == data.n
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


def test_check_rejects_entities_of_another_mapping(any_db: Backend) -> None:
    verdict = lesson.check_latest_posts(own_mapping_entities, any_db)
    assert verdict.status == "loaded entities", verdict
    n = lesson.check_data(any_db).n
    assert f"built ORM objects ({n} DeferredPost)" in verdict.message
    assert "select columns" in verdict.message


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


@pytest.mark.parametrize("naive", [columns_with_body, whole_table_with_body])
def test_check_rejects_selecting_the_body(any_db: Backend, naive: Any) -> None:
    verdict = lesson.check_latest_posts(naive, any_db)
    assert verdict.status == "loaded the body", verdict
    assert "selected the post body" in verdict.message
    assert verdict.statements == 1 and verdict.entities == {}


@pytest.mark.parametrize("naive", [sort_and_slice_in_python, order_in_sql_slice_in_python])
def test_check_rejects_sorting_or_slicing_in_python(any_db: Backend, naive: Any) -> None:
    verdict = lesson.check_latest_posts(naive, any_db)
    data = lesson.check_data(any_db)
    assert verdict.status == "too many rows", verdict
    assert f"{data.posts:,} rows came back from the database (at most {data.n:,})" in (
        verdict.message
    )
    assert "filter, sort and limit in SQL" in verdict.message


@pytest.mark.parametrize("naive", [no_tie_break, oldest_first])
def test_check_rejects_a_wrong_order(any_db: Backend, naive: Any) -> None:
    verdict = lesson.check_latest_posts(naive, any_db)
    assert verdict.status == "wrong result", verdict
    assert "differs from the reference" in verdict.message


def test_check_refuses_an_async_answer(sqlite_db: Backend) -> None:
    async def latest_posts(session: Any, n: int) -> list[dict]:
        return []

    with pytest.raises(TypeError, match="plain def"):
        lesson.check_latest_posts(latest_posts, sqlite_db)


@pytest.mark.parametrize("right", [solution, body_only_in_where, plain_sql])
def test_check_accepts_right_answers(any_db: Backend, right: Any) -> None:
    verdict = lesson.check_latest_posts(right, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    assert verdict.entities == {}
