"""Reference answers for the exercises, and the checks that need more than ``check()``.

A reference is written the obvious (slow but clearly right) way, so reading it gives
nothing away; a check compares a learner's result with it.

>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> with db.Session() as session:
...     len(comments_written(session))
12
>>> check_comments_written(comments_written, db).status
'over budget'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import ORMExecuteState, Session

from .backends import Backend
from .exercises import CheckResult, check
from .models import Comment, User

__all__ = ["check_comments_written", "comments_written", "rows_fetched"]


def comments_written(session: Session) -> dict[int, int]:
    """Notebook 00: user id -> how many comments that user wrote (0 included)."""
    counts = {user.id: 0 for user in session.scalars(select(User))}
    for comment in session.scalars(select(Comment)):
        counts[comment.user_id] += 1
    return counts


@contextmanager
def rows_fetched(session: Session) -> Iterator[list[int]]:
    """Count the rows every statement run through ``session`` returns (``[total]``).

    It listens to the session's ``do_orm_execute`` event and buffers each result once
    (``Result.freeze()``), so it sees ``execute``, ``scalars`` and lazy loads alike.
    """
    total = [0]

    def count(state: ORMExecuteState) -> Any:
        result = state.invoke_statement()
        if getattr(result, "returns_rows", True) is False:  # DML without RETURNING
            return result
        frozen = result.freeze()
        total[0] += len(frozen.data)
        return frozen()

    event.listen(session, "do_orm_execute", count)
    try:
        yield total
    finally:
        event.remove(session, "do_orm_execute", count)


def check_comments_written(solution: Callable[[Session], Any], db: Backend) -> CheckResult:
    """Notebook 00's check: right result, one statement, no Comment objects, counted in SQL.

    The last rule rejects fetching every comment row (as columns) and counting in Python:
    at most one row per user may come back.
    """
    fetched: list[int] = [0]

    def counted(session: Session) -> Any:
        with rows_fetched(session) as rows:
            try:
                return solution(session)
            finally:
                fetched[0] = rows[0]

    verdict = check(counted, db, reference=comments_written, budget=1, forbid_entities=(Comment,))
    if not verdict.passed:
        return verdict
    with db.Session() as session:
        users = session.scalar(select(func.count(User.id))) or 0
    if fetched[0] > users:
        return CheckResult(
            "too many rows",
            f"✗ Right result in {verdict.statements} statement(s), but {fetched[0]:,} rows "
            f"came back for {users:,} users: let the database count (func.count and "
            "group_by), so one row per user travels, not one per comment.",
            statements=verdict.statements,
            budget=verdict.budget,
            entities=verdict.entities,
        )
    return verdict
