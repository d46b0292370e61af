"""Loading only what you need: time to the first row, server-side cursors, notebook 02's exercise.

A large-result strategy is ``fn(backend, n, first_row)``: it calls ``first_row()`` as soon as
it holds its first row (later calls are ignored), so the harness can time the wait before
any work can start as well as the whole run:

>>> from sqlalchemy import select
>>> from course_lib.backends import sqlite
>>> from course_lib.models import Comment
>>> def fetch_all(db, n, first_row):
...     '''fetch all: .all()'''
...     with db.Session() as session:
...         comments = session.scalars(select(Comment).limit(n)).all()
...         first_row()
...         return len(comments)
>>> frame = time_to_first_row([fetch_all], sqlite("course_tiny"), 10, repeats=1, memory=False)
>>> list(frame.columns[:4])
['strategy', 'backend', 'n', 'time to first row (ms)']

:func:`server_cursors` lists the cursors a PostgreSQL session holds open right now (the
``pg_cursors`` view), which shows whether rows are streamed through a server-side cursor.
"""

from __future__ import annotations

import inspect
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ..backends import Backend
from ..exercises import objects_built
from ..measure import apeak_memory, count_statements, iqr, label_of, peak_memory
from ..models import Post

__all__ = [
    "FIRST_ROW",
    "FirstRow",
    "atime_to_first_row",
    "cursor_table",
    "objects_built",
    "ratios",
    "reference_latest_posts",
    "server_cursors",
    "time_to_first_row",
]

FirstRow = Callable[[], None]
Strategy = Callable[[Backend, int, FirstRow], Any]
FIRST_ROW = "time to first row (ms)"


class _Clock:
    """One timed run: started on creation; ``first_row()`` marks the first row, once."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.start = time.perf_counter()

    def first_row(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def stop(self, label: str) -> tuple[float, float]:
        end = time.perf_counter()
        if self.first is None:
            raise RuntimeError(f"strategy {label!r} never called first_row()")
        return self.first - self.start, end - self.start


class _Runs:
    """The bookkeeping :func:`time_to_first_row` and :func:`atime_to_first_row` share."""

    def __init__(self, warmup: int, repeats: int) -> None:
        if repeats < 1 or warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        self.warmup, self.repeats = warmup, repeats
        self.rows: list[dict[str, Any]] = []

    def record(
        self,
        fn: Strategy,
        db: Backend,
        n: int,
        runs: list[tuple[float, float]],
        statements: int,
        peak: int | None,
    ) -> None:
        kept = runs[self.warmup :]
        firsts = [first * 1000 for first, _ in kept]
        totals = [total * 1000 for _, total in kept]
        row = {
            "strategy": label_of(fn),
            "backend": db.name,
            "n": n,
            FIRST_ROW: statistics.median(firsts),
            "first row spread": iqr(firsts),
            "median": statistics.median(totals),
            "spread": iqr(totals),
            "statements": statements,
        }
        if peak is not None:
            row["peak_kib"] = peak / 1024
        self.rows.append(row)

    def frame(self, title: str | None, backends: list[Backend]) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        scales = sorted({db.database.removeprefix("course_") for db in backends})
        frame.attrs.update(unit="ms", title=title, scales=scales)
        return frame


def _as_list(backends: Backend | Sequence[Backend]) -> list[Backend]:
    return [backends] if isinstance(backends, Backend) else list(backends)


def time_to_first_row(
    strategies: Iterable[Strategy],
    backends: Backend | Sequence[Backend],
    n: int,
    *,
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    title: str | None = None,
) -> pd.DataFrame:
    """Time sync strategies ``fn(backend, n, first_row)``: to their first row, and in all.

    One row per strategy and backend: ``time to first row (ms)`` and ``median`` (the whole
    run, ms) are medians of ``repeats`` runs after ``warmup``; ``statements`` is counted in
    the last run; ``memory=True`` adds ``peak_kib`` from one extra, untimed tracemalloc run.
    """
    runs = _Runs(warmup, repeats)
    dbs = _as_list(backends)
    for db in dbs:
        for fn in strategies:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(f"{fn.__name__} is async: use `await atime_to_first_row(...)`")
            times = []
            for _ in range(warmup + repeats):
                with count_statements(db) as log:
                    clock = _Clock()
                    fn(db, n, clock.first_row)
                    times.append(clock.stop(label_of(fn)))
            peak = peak_memory(lambda fn=fn, db=db: fn(db, n, _ignore)) if memory else None
            runs.record(fn, db, n, times, log.count, peak)
    return runs.frame(title, dbs)


async def atime_to_first_row(
    strategies: Iterable[Strategy],
    backends: Backend | Sequence[Backend],
    n: int,
    *,
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    title: str | None = None,
) -> pd.DataFrame:
    """Like :func:`time_to_first_row`; strategies may be ``async def`` (they are awaited)."""
    runs = _Runs(warmup, repeats)
    dbs = _as_list(backends)
    for db in dbs:
        for fn in strategies:
            times = []
            for _ in range(warmup + repeats):
                with count_statements(db) as log:
                    clock = _Clock()
                    result = fn(db, n, clock.first_row)
                    if inspect.isawaitable(result):
                        await result
                    times.append(clock.stop(label_of(fn)))
            peak = None
            if memory:
                peak = await apeak_memory(lambda fn=fn, db=db: fn(db, n, _ignore))
            runs.record(fn, db, n, times, log.count, peak)
    return runs.frame(title, dbs)


def _ignore() -> None:
    """The ``first_row`` callback of an untimed run."""


def ratios(
    frame: pd.DataFrame,
    slow: Callable[..., Any] | str,
    fast: Callable[..., Any] | str,
    measures: Sequence[str] = ("median", "peak_kib"),
) -> pd.DataFrame:
    """``slow`` divided by ``fast`` for each measure, per backend, at that backend's largest n.

    >>> frame = pd.DataFrame({"strategy": ["a", "b"], "backend": ["x", "x"], "n": [5, 5],
    ...                       "median": [4.0, 1.0], "peak_kib": [30.0, 10.0]})
    >>> ratios(frame, "a", "b").round(1).to_dict("records")
    [{'backend': 'x', 'n': 5, 'median ×': 4.0, 'peak_kib ×': 3.0}]
    """
    names = [label_of(f) if callable(f) else f for f in (slow, fast)]
    largest = frame[frame["n"] == frame.groupby("backend")["n"].transform("max")]
    picked = largest.set_index(["strategy", "backend", "n"])[list(measures)]
    result = picked.xs(names[0], level="strategy") / picked.xs(names[1], level="strategy")
    return result.rename(columns=lambda m: f"{m} ×").reset_index()


# ------------------------------------------------------------------ server-side cursors

_PG_CURSORS = text(
    "SELECT name, statement FROM pg_cursors WHERE name <> '' ORDER BY creation_time, name"
)
_DECLARE = re.compile(r'^DECLARE\s+"?[^"\s]+"?\s+(.*?CURSOR)\s+(?:WITHOUT HOLD\s+)?FOR\s+', re.S)


def server_cursors(session: Session, width: int = 60) -> pd.DataFrame:
    """The cursors this PostgreSQL session holds open now (``pg_cursors``), one row each.

    ``how`` says whether the driver declared an SQL cursor (``DECLARE ... CURSOR``: psycopg's
    named cursors) or bound a protocol-level portal (asyncpg's cursors); ``query`` is the
    statement the cursor runs, on one line. Names are left out: drivers generate them.
    From an AsyncSession: ``await session.run_sync(server_cursors)``.
    """
    rows = []
    for _name, statement in session.execute(_PG_CURSORS):
        sql = " ".join(statement.split())
        declared = _DECLARE.match(sql)
        if declared:
            how = f"SQL cursor: DECLARE … {declared.group(1)}"
            sql = sql[declared.end() :]
        else:
            how = "protocol portal: Bind + Execute"
        rows.append({"how": how, "query": sql if len(sql) <= width else sql[: width - 1] + "…"})
    return pd.DataFrame(rows, columns=["how", "query"])


def cursor_table(cases: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per case: how many cursors :func:`server_cursors` found open, how, and on what.

    >>> found = pd.DataFrame([{"how": "portal", "query": "SELECT 1"}])
    >>> cursor_table({"a": found, "b": found.iloc[:0]})["open cursors"].tolist()
    [1, 0]
    """
    return pd.DataFrame(
        [
            {
                "case": case,
                "open cursors": len(found),
                "how": "; ".join(found["how"]) or "-",
                "query": "; ".join(found["query"]) or "-",
            }
            for case, found in cases.items()
        ]
    ).set_index("case")


# ------------------------------------------------------------------------ the exercise


def reference_latest_posts(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Notebook 02: the ``limit`` latest posts as dicts of id, title and author (name).

    The obvious way: full Post entities (their bodies come along) and a lazy load of each
    author. Newest first; ties on ``created_at`` are broken by the higher id.
    """
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc()).limit(limit)
    return [
        {"id": post.id, "title": post.title, "author": post.author.name}
        for post in session.scalars(query)
    ]
