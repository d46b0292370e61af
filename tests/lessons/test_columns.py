"""Tests for course_lib.lessons.columns: time to first row, ratios, objects built, server-side cursors,
and notebook 02's exercise check (it rejects full entities and accepts a column select)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, load_only

from course_lib.backends import Backend
from course_lib.lessons.columns import (
    FIRST_ROW,
    atime_to_first_row,
    cursor_table,
    objects_built,
    ratios,
    reference_latest_posts,
    server_cursors,
    time_to_first_row,
)
from course_lib.exercises import check
from course_lib.models import Comment, Post, User

COMMENTS = select(Comment).order_by(Comment.id)


def _run(db: Backend, work: Awaitable[Any]) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(work)


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
    frame = time_to_first_row([fetch_all, batches], sqlite_db, 20, warmup=0, repeats=2)
    assert frame["strategy"].tolist() == ["fetch all", "yield_per batches"]
    assert frame["backend"].tolist() == ["sqlite", "sqlite"]
    assert (frame["n"] == 20).all()
    assert (frame["statements"] == 1).all()
    assert (frame[FIRST_ROW] <= frame["median"]).all()  # the first row comes before the end
    assert (frame["peak_kib"] > 0).all()
    assert frame.attrs["scales"] == ["tiny"]


def test_atime_to_first_row_mixes_sync_and_async(any_db: Backend) -> None:
    frame = _run(
        any_db, atime_to_first_row([batches, stream_batches], any_db, 20, repeats=1, memory=False)
    )
    assert frame["strategy"].tolist() == ["yield_per batches", "async stream batches"]
    assert "peak_kib" not in frame
    assert (frame["statements"] == 1).all()


def test_a_strategy_must_report_its_first_row(sqlite_db: Backend) -> None:
    def silent(db: Backend, n: int, first_row: Any) -> None:
        """never calls first_row"""

    with pytest.raises(RuntimeError, match="never called first_row"):
        time_to_first_row([silent], sqlite_db, 5, repeats=1, memory=False)


def test_sync_harness_refuses_async_strategies(sqlite_db: Backend) -> None:
    with pytest.raises(TypeError, match="atime_to_first_row"):
        time_to_first_row([stream_batches], sqlite_db, 5, repeats=1)


def test_harness_rejects_zero_repeats(sqlite_db: Backend) -> None:
    with pytest.raises(ValueError, match="repeats"):
        time_to_first_row([fetch_all], sqlite_db, 5, repeats=0)


# ---------------------------------------------------------------------------- ratios


def test_ratios_use_each_backends_largest_n() -> None:
    frame = pd.DataFrame(
        {
            "strategy": ["slow", "fast"] * 3,
            "backend": ["a", "a", "a", "a", "b", "b"],
            "n": [10, 10, 100, 100, 10, 10],
            "median": [2.0, 1.0, 30.0, 3.0, 8.0, 2.0],
            "peak_kib": [1.0, 1.0, 50.0, 5.0, 4.0, 1.0],
        }
    )
    result = ratios(frame, "slow", "fast").set_index("backend")
    assert result.loc["a", "n"] == 100
    assert result.loc["a", "median ×"] == pytest.approx(10.0)
    assert result.loc["b", "peak_kib ×"] == pytest.approx(4.0)
    only_time = ratios(frame, "slow", "fast", measures=["median"])
    assert list(only_time.columns) == ["backend", "n", "median ×"]


# --------------------------------------------------------------------- objects built


async def _built_at_first_row(db: Backend, **options: Any) -> int:
    async with db.AsyncSession() as session:
        with objects_built() as built:
            result = await session.stream_scalars(COMMENTS.execution_options(**options))
            async for _comment in result:
                break
            await result.close()
    return built["Comment"]


def test_stream_without_yield_per_builds_every_object_first(any_db: Backend) -> None:
    """The lesson of notebook 02's popular-guide callout, on the tiny data (72 comments)."""
    with any_db.Session() as session:
        total = len(session.scalars(select(Comment.id)).all())
    assert total > 10
    assert _run(any_db, _built_at_first_row(any_db)) == total
    assert _run(any_db, _built_at_first_row(any_db, yield_per=10)) == 10


def test_objects_built_counts_only_orm_objects(sqlite_db: Backend) -> None:
    with sqlite_db.Session() as session, objects_built() as built:
        session.scalars(select(User).limit(3)).all()
        session.execute(select(Post.id, Post.title).limit(5)).all()
    assert dict(built) == {"User": 3}


# ---------------------------------------------------------------- server-side cursors


@pytest.fixture(params=["pg_service", "pg_embedded"])
def pg(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


def _psycopg_cursors(db: Backend, **options: Any) -> pd.DataFrame:
    with db.Session() as session:
        session.execute(COMMENTS.execution_options(**options)).fetchmany(5)
        return server_cursors(session)


async def _asyncpg_cursors(db: Backend, stream: bool) -> pd.DataFrame:
    async with db.AsyncSession() as session:
        if stream:
            result = await session.stream(COMMENTS.execution_options(yield_per=5))
            await result.fetchmany(5)
        else:
            (await session.execute(COMMENTS)).fetchmany(5)
        return await session.run_sync(server_cursors)


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
    table = cursor_table({"plain": found.iloc[:0], "streamed": found})
    assert table.to_dict("index") == {
        "plain": {"open cursors": 0, "how": "-", "query": "-"},
        "streamed": {"open cursors": 1, "how": "portal", "query": "SELECT 1"},
    }


# ---------------------------------------------------------------------- the exercise

NEWEST_FIRST = (Post.created_at.desc(), Post.id.desc())


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


def oldest_first(session: Session) -> list[dict]:
    """Columns only, but the wrong order."""
    query = (
        select(Post.id, Post.title, User.name.label("author"))
        .join(Post.author)
        .order_by(Post.created_at, Post.id)
        .limit(50)
    )
    return [dict(row._mapping) for row in session.execute(query)]


def solution(session: Session) -> list[dict]:
    """The notebook's solution: three columns, one join, one statement."""
    query = (
        select(Post.id, Post.title, User.name.label("author"))
        .join(Post.author)
        .order_by(*NEWEST_FIRST)
        .limit(50)
    )
    return [dict(row._mapping) for row in session.execute(query)]


def _judge(fn: Any, db: Backend) -> Any:
    return check(fn, db, reference=reference_latest_posts, budget=1, forbid_entities=(Post, User))


def test_reference_is_newest_first(sqlite_db: Backend) -> None:
    with sqlite_db.Session() as session:
        answer = reference_latest_posts(session)
        dates = dict(session.execute(select(Post.id, Post.created_at)).all())
    assert 0 < len(answer) <= 50
    assert set(answer[0]) == {"id", "title", "author"}
    keys = [(dates[row["id"]], row["id"]) for row in answer]
    assert keys == sorted(keys, reverse=True)


def test_check_says_not_attempted_for_the_stub(any_db: Backend) -> None:
    assert _judge(stub, any_db).status == "not attempted"


def test_check_rejects_the_naive_lazy_version(any_db: Backend) -> None:
    verdict = _judge(reference_latest_posts, any_db)
    assert verdict.status == "over budget"
    assert verdict.statements > 1


@pytest.mark.parametrize("naive", [full_entities_joined, partial_entities])
def test_check_rejects_entities_in_one_statement(any_db: Backend, naive: Any) -> None:
    verdict = _judge(naive, any_db)
    assert verdict.status == "loaded entities", verdict
    assert verdict.statements == 1
    assert verdict.entities["Post"] > 0 and verdict.entities["User"] > 0


def test_check_rejects_a_wrong_order(any_db: Backend) -> None:
    assert _judge(oldest_first, any_db).status == "wrong result"


def test_check_accepts_the_solution(any_db: Backend) -> None:
    verdict = _judge(solution, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    assert verdict.entities == {}
