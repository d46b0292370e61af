"""Notebook 00's exercise: the check rejects the naive answer and accepts the solution."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from course_lib.backends import Backend
from course_lib.exercises import check
from course_lib.models import Comment, User
from course_lib.references import comments_written as reference


def solution(session: Session) -> dict[int, int]:
    """The notebook's solution: one grouped outer join, columns only."""
    stmt = (
        select(User.id, func.count(Comment.id))
        .outerjoin(Comment, Comment.user_id == User.id)
        .group_by(User.id)
    )
    return dict(session.execute(stmt).all())


def test_reference_counts_every_user(any_db: Backend) -> None:
    """The reference includes every user and adds up to the number of comments."""
    with any_db.Session() as session:
        counts = reference(session)
        assert len(counts) == session.scalar(select(func.count(User.id)))
        assert sum(counts.values()) == session.scalar(select(func.count(Comment.id)))


def test_check_rejects_the_naive_answer(any_db: Backend) -> None:
    """Loading every Comment takes 2 statements and builds entities: over budget."""
    verdict = check(reference, any_db, reference=reference, budget=1, forbid_entities=(Comment,))
    assert verdict.status == "over budget"
    assert not verdict.passed


def test_check_rejects_entities_even_within_budget(any_db: Backend) -> None:
    """A one-statement answer that loads Comment objects still fails."""

    def entities(session: Session) -> dict[int, int]:
        counts = dict.fromkeys(session.scalars(select(User.id)), 0)
        return counts

    def one_statement_entities(session: Session) -> dict[int, int]:
        counts: dict[int, int] = {}
        for comment in session.scalars(select(Comment)):
            counts[comment.user_id] = counts.get(comment.user_id, 0) + 1
        return counts

    verdict = check(
        one_statement_entities, any_db, reference=reference, budget=5, forbid_entities=(Comment,)
    )
    assert verdict.status in {"wrong result", "loaded entities"}
    assert not verdict.passed
    assert check(entities, any_db, reference=reference, budget=5).status == "wrong result"


def test_check_accepts_the_solution(any_db: Backend) -> None:
    """The grouped outer join passes: right result, 1 statement, no entities."""
    verdict = check(solution, any_db, reference=reference, budget=1, forbid_entities=(Comment,))
    assert verdict.passed, verdict
    assert verdict.statements == 1
