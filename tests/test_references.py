"""Notebook 00's exercise: the check rejects each naive answer, says why, and passes the solution.

Every test calls :func:`check_comments_written`, the same call the notebook's check cell makes.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from course_lib.backends import Backend
from course_lib.data import build
from course_lib.models import Comment, User
from course_lib.references import check_comments_written, comments_written, rows_fetched


def solution(session: Session) -> dict[int, int]:
    """The notebook's solution: one grouped outer join, columns only."""
    stmt = (
        select(User.id, func.count(Comment.id))
        .outerjoin(Comment, Comment.user_id == User.id)
        .group_by(User.id)
    )
    return dict(session.execute(stmt).all())


def one_query_per_user(session: Session) -> dict[int, int]:
    """N+1: one count per user."""
    ids = session.scalars(select(User.id)).all()
    return {
        user_id: session.scalar(select(func.count(Comment.id)).where(Comment.user_id == user_id))
        for user_id in ids
    }


def entities_in_one_statement(session: Session) -> dict[int, int]:
    """One statement, but every Comment comes back as an ORM object."""
    counts: dict[int, int] = {}
    for user_id, comment in session.execute(
        select(User.id, Comment).outerjoin(Comment, Comment.user_id == User.id)
    ):
        counts[user_id] = counts.get(user_id, 0) + (comment is not None)
    return counts


def columns_counted_in_python(session: Session) -> dict[int, int]:
    """One statement, no objects, but one row per comment counted in Python."""
    counts: dict[int, int] = {}
    for user_id, comment_id in session.execute(
        select(User.id, Comment.id).outerjoin(Comment, Comment.user_id == User.id)
    ):
        counts[user_id] = counts.get(user_id, 0) + (comment_id is not None)
    return counts


def inner_join(session: Session) -> dict[int, int]:
    """Forgets users without comments."""
    stmt = select(Comment.user_id, func.count(Comment.id)).group_by(Comment.user_id)
    return dict(session.execute(stmt).all())


def count_star(session: Session) -> dict[int, int]:
    """count(*) over the outer join counts the NULL row: 1 for a user with no comments."""
    stmt = (
        select(User.id, func.count())
        .outerjoin(Comment, Comment.user_id == User.id)
        .group_by(User.id)
    )
    return dict(session.execute(stmt).all())


def stub(session: Session) -> dict[int, int]:
    raise NotImplementedError("your turn")


@pytest.fixture(scope="module")
def silent_user(sqlite_db: Backend) -> Backend:
    """A tiny copy with one extra user who wrote no comment (the course data has none)."""
    probe = sqlite_db.sibling(f"probe_{uuid.uuid4().hex[:8]}")
    build(probe, "tiny", force=True, progress=False)
    with probe.Session() as session, session.begin():
        session.add(
            User(name="Silent", email="silent@example.com", created_at=datetime(2026, 1, 1))
        )
    return probe


def test_reference_counts_every_user(any_db: Backend) -> None:
    """The reference includes every user and adds up to the number of comments."""
    with any_db.Session() as session:
        counts = comments_written(session)
        assert len(counts) == session.scalar(select(func.count(User.id)))
        assert sum(counts.values()) == session.scalar(select(func.count(Comment.id)))


def test_stub_is_not_attempted(any_db: Backend) -> None:
    """The untouched stub gives the friendly verdict, not a failure."""
    assert check_comments_written(stub, any_db).status == "not attempted"


def test_rejects_loading_everything_in_python(any_db: Backend) -> None:
    """The reference itself (users, then every Comment, counted in Python) is over budget."""
    verdict = check_comments_written(comments_written, any_db)
    assert verdict.status == "over budget"
    assert "2 statements: the budget is 1" in verdict.message


def test_rejects_one_query_per_user(any_db: Backend) -> None:
    """N+1: one count per user is 1 + users statements."""
    verdict = check_comments_written(one_query_per_user, any_db)
    assert verdict.status == "over budget"
    assert "one statement per row" in verdict.message
    assert verdict.statements == 1 + len(comments_written_on(any_db))


def test_rejects_comment_entities(any_db: Backend) -> None:
    """One statement that builds a Comment object per row fails on the entities."""
    verdict = check_comments_written(entities_in_one_statement, any_db)
    assert verdict.status == "loaded entities"
    assert "loaded full ORM objects" in verdict.message
    assert "Comment" in verdict.message


def test_rejects_counting_rows_in_python(any_db: Backend) -> None:
    """One statement of columns, but one row per comment: the database should count."""
    verdict = check_comments_written(columns_counted_in_python, any_db)
    assert verdict.status == "too many rows"
    assert "let the database count" in verdict.message
    with any_db.Session() as session:
        comments = session.scalar(select(func.count(Comment.id)))
    assert f"{comments:,} rows came back" in verdict.message


def test_rejects_a_wrong_result(any_db: Backend) -> None:
    """An answer that leaves users out is a wrong result."""

    def first_half(session: Session) -> dict[int, int]:
        counts = solution(session)
        return dict(list(counts.items())[: len(counts) // 2])

    verdict = check_comments_written(first_half, any_db)
    assert verdict.status == "wrong result"
    assert "differs from the reference" in verdict.message


@pytest.mark.parametrize("naive", [inner_join, count_star])
def test_rejects_missing_zero_counts(silent_user: Backend, naive) -> None:
    """With a user who wrote nothing, an inner join drops them and count(*) says 1."""
    verdict = check_comments_written(naive, silent_user)
    assert verdict.status == "wrong result"
    assert "differs from the reference" in verdict.message
    assert check_comments_written(solution, silent_user).passed


def test_accepts_the_solution(any_db: Backend) -> None:
    """The grouped outer join passes: right result, 1 statement, no entities, 1 row per user."""
    verdict = check_comments_written(solution, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    assert verdict.message == "✓ Passed: right result in 1 statement(s) (budget 1)."


def test_rows_fetched_counts_every_row(sqlite_db: Backend) -> None:
    """rows_fetched sees execute, scalars and the rows each returns."""
    with sqlite_db.Session() as session, rows_fetched(session) as rows:
        users = session.scalars(select(User)).all()
        session.execute(select(Comment.id).limit(5)).all()
    assert rows == [len(users) + 5]


def comments_written_on(db: Backend) -> dict[int, int]:
    with db.Session() as session:
        return comments_written(session)
