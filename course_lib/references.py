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

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from .backends import Backend
from .exercises import CheckResult, RowTally, check, rows_fetched
from .models import Comment, User

__all__ = ["RowTally", "check_comments_written", "comments_written", "rows_fetched"]


def comments_written(session: Session) -> dict[int, int]:
    """Notebook 00: user id -> how many comments that user wrote (0 included)."""
    counts = {user.id: 0 for user in session.scalars(select(User))}
    for comment in session.scalars(select(Comment)):
        counts[comment.user_id] += 1
    return counts


#: Aggregates that pack many rows into one value: with them, "one row per user" could
#: still carry every comment (``group_concat`` of the ids, counted in Python).
PACKING = re.compile(
    r"\b(group_concat|string_agg|array_agg|json_agg|jsonb_agg|json_group_array|"
    r"json_group_object|json_object_agg|jsonb_object_agg|array)\s*\(",
    re.IGNORECASE,
)


# ------------------------------------------------------------------ one transaction


class _InOneTransaction(Backend):
    """``db``'s database on new engines; every session joins one connection's transaction.

    ``rollback_only``: a learner's ``session.commit()`` does not commit that transaction,
    so whatever the check added is rolled back afterwards, whatever the function did.
    """

    def __init__(self, db: Backend):
        super().__init__(db.name, db.sync_url, db.async_url, db.source, db.database, db.pgdata)
        self.connection: Connection = self.sync_engine.connect()
        self._session = sessionmaker(
            bind=self.connection, join_transaction_mode="rollback_only", expire_on_commit=False
        )

    @property
    def Session(self) -> sessionmaker:  # type: ignore[override]
        return self._session


@contextmanager
def with_silent_user(db: Backend) -> Iterator[Backend]:
    """``db`` plus one user who wrote no comment, in a transaction rolled back at the end.

    Every user of the course data has written comments, so an inner join or ``count(*)``
    over the outer join would give the right numbers there; with this user they do not.
    """
    probe = _InOneTransaction(db)
    transaction = probe.connection.begin()
    try:
        probe.connection.execute(
            insert(User).values(
                name="Silent",
                email=f"silent-{uuid.uuid4().hex[:12]}@example.invalid",
                created_at=datetime(2026, 1, 1),
            )
        )
        yield probe
    finally:
        if transaction.is_active:
            transaction.rollback()
        probe.connection.close()
        probe.sync_engine.dispose()


# ------------------------------------------------------------------ the check


def check_comments_written(solution: Callable[[Session], Any], db: Backend) -> CheckResult:
    """Notebook 00's check: right result, one statement, no Comment objects, counted in SQL.

    The learner's function and the reference run on ``db`` plus one user who wrote nothing
    (added in a transaction, then rolled back), so users without comments must come back
    with 0. "Counted in SQL": at most one row per user may come back, and no aggregate may
    pack the comments into one value per user (``group_concat``, ``string_agg``, ...).
    """
    with with_silent_user(db) as probe:
        tally = RowTally()

        def counted(session: Session) -> Any:
            with rows_fetched(probe) as seen:
                try:
                    return solution(session)
                finally:
                    tally.rows, tally.sql = seen.rows, seen.sql

        verdict = check(
            counted, probe, reference=comments_written, budget=1, forbid_entities=(Comment,)
        )
        with probe.Session() as session:
            users = session.scalar(select(func.count(User.id))) or 0
    return _judge_rows(_explain(verdict), tally, users)


#: Appended to a wrong result: the learner did not add that user, so say who did.
SILENT_USER = (
    " The check adds one user who wrote no comment (rolled back afterwards): that user "
    "must come back with 0."
)


def _explain(verdict: CheckResult) -> CheckResult:
    """Fit the generic messages to this exercise: the silent user, and 2 statements."""
    if verdict.status == "wrong result":
        verdict.message += SILENT_USER
    elif verdict.status == "over budget" and (verdict.statements or 0) <= 3:
        # a statement or two over is not a loop that sends one statement per row
        verdict.message = (
            f"✗ Right result, but {verdict.statements} statements: the budget is "
            f"{verdict.budget}. Let one statement do it all: join users to comments, group "
            "by user and count in SQL."
        )
    return verdict


def _judge_rows(verdict: CheckResult, tally: RowTally, users: int) -> CheckResult:
    if not verdict.passed:
        return verdict
    common = {
        "statements": verdict.statements,
        "budget": verdict.budget,
        "entities": verdict.entities,
    }
    if verdict.statements == 0:
        return CheckResult(
            "unseen",
            "✗ Right result, but no statement went through SQLAlchemy (a raw DBAPI cursor?): "
            "run the query with session.execute, so the check can see it.",
            **common,
        )
    packed = sorted({m.group(1).lower() for sql in tally.sql for m in PACKING.finditer(sql)})
    if packed:
        return CheckResult(
            "packed rows",
            f"✗ Right result in {verdict.statements} statement(s), but {', '.join(packed)} "
            "packs every comment into one value per user, to count in Python: let the "
            "database count (func.count and group_by).",
            **common,
        )
    if tally.rows > users:
        return CheckResult(
            "too many rows",
            f"✗ Right result in {verdict.statements} statement(s), but {tally.rows:,} rows "
            f"came back for {users:,} users (one added by the check): let the database "
            "count (func.count and group_by), so one row per user travels, not one per "
            "comment.",
            **common,
        )
    return verdict
