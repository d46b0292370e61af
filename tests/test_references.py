"""Notebook 00's exercise: the check rejects each naive answer, says why, and passes the solution.

Every test calls :func:`check_comments_written`, the same call the notebook's check cell makes.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from course_lib.backends import Backend
from course_lib.models import Comment, User
from course_lib.references import (
    check_comments_written,
    comments_written,
    rows_fetched,
    with_silent_user,
)


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


def _count_pairs(rows) -> dict[int, int]:
    counts: dict[int, int] = {}
    for user_id, comment_id in rows:
        counts[user_id] = counts.get(user_id, 0) + (comment_id is not None)
    return counts


def core_connection(session: Session) -> dict[int, int]:
    """Core through the session's connection: one row per comment, counted in Python."""
    stmt = select(User.id, Comment.id).outerjoin(Comment, Comment.user_id == User.id)
    return _count_pairs(session.connection().execute(stmt))


def driver_sql(session: Session) -> dict[int, int]:
    """Plain SQL through exec_driver_sql: one row per comment, counted in Python."""
    sql = (
        "SELECT users.id, comments.id FROM users LEFT JOIN comments ON comments.user_id = users.id"
    )
    return _count_pairs(session.connection().exec_driver_sql(sql))


def packed_ids(session: Session) -> dict[int, int]:
    """One row per user, but every comment id packed into a string, split in Python."""
    if session.get_bind().dialect.name == "sqlite":
        packed = func.group_concat(Comment.id)
    else:
        packed = func.string_agg(cast(Comment.id, Text), ",")
    stmt = select(User.id, packed).outerjoin(Comment, Comment.user_id == User.id).group_by(User.id)
    return {user_id: len(ids.split(",")) if ids else 0 for user_id, ids in session.execute(stmt)}


def committing_solution(session: Session) -> dict[int, int]:
    """The solution, then a commit: the check's extra user must still be rolled back."""
    counts = solution(session)
    session.commit()
    return counts


def stub(session: Session) -> dict[int, int]:
    raise NotImplementedError("your turn")


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
    """The reference itself (users, then every Comment) is over budget by one: no 'loop'."""
    verdict = check_comments_written(comments_written, any_db)
    assert verdict.status == "over budget"
    assert "2 statements: the budget is 1. Let one statement do it all" in verdict.message
    assert "loop" not in verdict.message


def test_rejects_one_query_per_user(any_db: Backend) -> None:
    """N+1: one count per user is 1 + users statements."""
    verdict = check_comments_written(one_query_per_user, any_db)
    assert verdict.status == "over budget"
    assert "one statement per row" in verdict.message
    assert verdict.statements == 1 + len(comments_written_on(any_db)) + 1  # + the silent user


def test_rejects_comment_entities(any_db: Backend) -> None:
    """One statement that builds a Comment object per row fails on the entities."""
    verdict = check_comments_written(entities_in_one_statement, any_db)
    assert verdict.status == "loaded entities"
    assert "loaded full ORM objects" in verdict.message
    assert "Comment" in verdict.message


@pytest.mark.parametrize("naive", [columns_counted_in_python, core_connection, driver_sql])
def test_rejects_counting_rows_in_python(any_db: Backend, naive) -> None:
    """One statement, but one row per comment (ORM, Core or plain SQL): the database should count.

    The outer join gives every comment a row, and the silent user one more.
    """
    verdict = check_comments_written(naive, any_db)
    assert verdict.status == "too many rows", verdict
    assert "let the database count" in verdict.message
    with any_db.Session() as session:
        comments = session.scalar(select(func.count(Comment.id)))
        users = session.scalar(select(func.count(User.id)))
    assert f"{comments + 1:,} rows came back for {users + 1:,} users" in verdict.message


def test_rejects_ids_packed_into_one_value(any_db: Backend) -> None:
    """group_concat / string_agg: one row per user, but every comment travels inside it."""
    verdict = check_comments_written(packed_ids, any_db)
    assert verdict.status == "packed rows", verdict
    name = "group_concat" if any_db.name == "sqlite" else "string_agg"
    assert f"but {name} packs every comment into one value per user" in verdict.message


def test_rejects_a_wrong_result(any_db: Backend) -> None:
    """An answer that leaves users out is a wrong result."""

    def first_half(session: Session) -> dict[int, int]:
        counts = solution(session)
        return dict(list(counts.items())[: len(counts) // 2])

    verdict = check_comments_written(first_half, any_db)
    assert verdict.status == "wrong result"
    assert "differs from the reference" in verdict.message


@pytest.mark.parametrize("naive", [inner_join, count_star])
def test_rejects_missing_zero_counts(any_db: Backend, naive) -> None:
    """On the course data itself: the check's silent user is dropped (inner join) or gets 1."""
    verdict = check_comments_written(naive, any_db)
    assert verdict.status == "wrong result"
    assert "differs from the reference" in verdict.message
    assert "adds one user who wrote no comment" in verdict.message


def test_the_silent_user_is_rolled_back(any_db: Backend) -> None:
    """Even a solution that commits leaves the dataset as it was."""
    before = comments_written_on(any_db)
    assert check_comments_written(committing_solution, any_db).passed
    assert comments_written_on(any_db) == before


def test_silent_user_is_seen_by_every_api(any_db: Backend) -> None:
    """Inside the block, ORM, Core and plain SQL all see one more user, with no comment."""
    users = len(comments_written_on(any_db))
    with with_silent_user(any_db) as probe, probe.Session() as session:
        assert len(comments_written(session)) == users + 1
        assert 0 in comments_written(session).values()
        sql = "SELECT count(*) FROM users"
        assert session.connection().exec_driver_sql(sql).scalar() == users + 1


def test_accepts_the_solution(any_db: Backend) -> None:
    """The grouped outer join passes: right result, 1 statement, no entities, 1 row per user."""
    verdict = check_comments_written(solution, any_db)
    assert verdict.passed, verdict
    assert verdict.statements == 1
    assert verdict.message == "✓ Passed: right result in 1 statement(s) (budget 1)."


def test_rows_fetched_counts_every_row(any_db: Backend) -> None:
    """rows_fetched sees ORM execute and scalars, Core, plain SQL, and lazy loads."""
    with any_db.Session() as session, rows_fetched(any_db) as tally:
        users = session.scalars(select(User).order_by(User.id)).all()
        session.execute(select(Comment.id).limit(5)).all()
        session.connection().execute(select(Comment.id).limit(3)).all()
        session.connection().exec_driver_sql("SELECT id FROM comments LIMIT 2").all()
        posts = len(users[0].posts)
    assert tally.rows == len(users) + 5 + 3 + 2 + posts
    assert len(tally.sql) == 5


def comments_written_on(db: Backend) -> dict[int, int]:
    with db.Session() as session:
        return comments_written(session)
