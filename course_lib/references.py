"""Reference answers for the exercises, written the obvious (slow but clearly right) way.

A check compares a learner's result with these; they are deliberately not the fast
solution, so reading them gives nothing away.

>>> from course_lib.backends import sqlite
>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> with db.Session() as session:
...     len(comments_written(session))
12
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Comment, User


def comments_written(session: Session) -> dict[int, int]:
    """Notebook 00: user id -> how many comments that user wrote (0 included)."""
    counts = {user.id: 0 for user in session.scalars(select(User))}
    for comment in session.scalars(select(Comment)):
        counts[comment.user_id] += 1
    return counts
