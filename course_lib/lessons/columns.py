"""Loading only what you need (notebook 02): first rows, driver fetches, the gc, the exercise.

Time to the first row. A large-result strategy is ``fn(backend, n, first_row)``: it calls
``first_row()`` as soon as it holds its first row (later calls are ignored), so the harness
times the wait before any work can start as well as the whole run:

>>> from sqlalchemy import select
>>> from course_lib.backends import sqlite
>>> from course_lib.models import Comment
>>> def fetch_all(db, n, first_row):
...     '''fetch all: .all()'''
...     with db.Session() as session:
...         comments = session.scalars(select(Comment).limit(n)).all()
...         first_row()
...         return len(comments)
>>> frame = time_to_first_row([fetch_all], sqlite("course_tiny"), 10, memory=False)
>>> list(frame.columns[:5])
['strategy', 'backend', 'n', 'first_row_ms', 'first_row_q1_ms']

What a result fetched before it handed over its first row: :func:`before_first_row` runs
ways of reading a query (``fn(backend, query)`` returning the first row it gets) and counts
the ORM objects built and the rows the async driver returned (:func:`driver_rows`).

:class:`DriverQuery` runs a statement's SQL on the raw driver (aiosqlite, asyncpg): the
physical limit a strategy is compared with. :func:`server_cursors` lists the cursors a
PostgreSQL session holds open (``pg_cursors``). :func:`check_latest_posts` is the exercise's
check.
"""

from __future__ import annotations

import gc
import inspect
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import Executable, select, text
from sqlalchemy.orm import Session

from ..backends import Backend
from ..claims import claim
from ..exercises import CheckResult, check, objects_built
from ..measure import (
    MIN_REPEATS,
    Timing,
    apeak_memory,
    count_statements,
    label_of,
    peak_memory,
    quartiles,
)
from ..models import Post, User
from ..plots import STYLE

__all__ = [
    "ASYNCPG_PREFETCH",
    "MIN_ROWS",
    "DriverFetches",
    "DriverQuery",
    "FirstRow",
    "atime_to_first_row",
    "before_first_row",
    "check_latest_posts",
    "claim_with_rows",
    "cursor_table",
    "driver_rows",
    "live_objects",
    "objects_built",
    "ratios",
    "reference_latest_posts",
    "samples_chart",
    "samples_table",
    "server_cursors",
    "time_to_first_row",
]

FirstRow = Callable[[], None]
Strategy = Callable[[Backend, int, FirstRow], Any]

#: Rows SQLAlchemy's asyncpg adapter asks its portal for when its buffer runs dry
#: (``AsyncAdapt_asyncpg_ss_cursor._buffer_rows`` in sqlalchemy/dialects/postgresql/asyncpg.py).
ASYNCPG_PREFETCH = 50

#: Fewer rows than this, and fixed costs (a connection, BEGIN, a compiled-cache lookup) hide
#: the effects notebook 02 ranks: :func:`claim_with_rows` makes no claim below it.
MIN_ROWS = 1000


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant figures (the course's tables never show more)."""
    if not value or value != value:
        return value
    return float(f"{value:.{digits}g}")


# ------------------------------------------------------------------ time to first row


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


class _GcTime:
    """Seconds the garbage collector ran while installed in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> _GcTime:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


class _Runs:
    """The plan :func:`time_to_first_row` and :func:`atime_to_first_row` share.

    ``warmup`` runs are discarded; each of ``repeats`` samples is ONE run (a run to the
    first row cannot be repeated back to back inside a sample), after ``gc.collect()``
    unless ``collect`` is false, with the collector's pauses clocked.
    """

    def __init__(self, warmup: int, repeats: int, collect: bool) -> None:
        if repeats < MIN_REPEATS:
            raise ValueError(
                f"repeats={repeats}: at least {MIN_REPEATS} samples are needed for quartiles"
            )
        if warmup < 1:
            raise ValueError("warmup must be >= 1: the first run is never representative")
        self.warmup, self.repeats, self.collect = warmup, repeats, collect
        self.rows: list[dict[str, Any]] = []

    def plan(self) -> Iterator[bool]:
        """One item per run: True for a kept sample (collected before, when asked)."""
        for i in range(self.warmup + self.repeats):
            kept = i >= self.warmup
            if kept and self.collect:
                gc.collect()
            yield kept

    def record(
        self,
        fn: Strategy,
        db: Backend,
        n: int,
        runs: list[tuple[float, float, float]],
        statements: int,
        peak: int | None,
    ) -> None:
        firsts = [first * 1000 for first, _, _ in runs]
        totals = [total * 1000 for _, total, _ in runs]
        q1, median, q3 = quartiles(totals)
        f1, first, f3 = quartiles(firsts)
        row = {
            "strategy": label_of(fn),
            "backend": db.name,
            "n": n,
            "first_row_ms": first,
            "first_row_q1_ms": f1,
            "first_row_q3_ms": f3,
            "median_ms": median,
            "q1_ms": q1,
            "q3_ms": q3,
            "iqr_ms": q3 - q1,
            "statements": statements,
            "gc_ms": statistics.median(gc_s * 1000 for _, _, gc_s in runs),
        }
        if peak is not None:
            row["peak_kib"] = peak / 1024
        self.rows.append(
            {k: _significant(v) if k.endswith(("_ms", "_kib")) else v for k, v in row.items()}
        )

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
    repeats: int = MIN_REPEATS,
    collect: bool = True,
    memory: bool = True,
    title: str | None = None,
) -> pd.DataFrame:
    """Time sync strategies ``fn(backend, n, first_row)``: to their first row, and in all.

    One row per strategy and backend. ``first_row_ms`` (with ``first_row_q1_ms`` and
    ``first_row_q3_ms``) is the wait for the first row, ``median_ms`` (``q1_ms``, ``q3_ms``,
    ``iqr_ms``) the whole run, over ``repeats`` samples of one run each after ``warmup``
    discarded runs, each after ``gc.collect()`` unless ``collect`` is false; ``gc_ms`` the
    median collector time per run; ``statements`` is counted in the last run;
    ``memory=True`` adds ``peak_kib`` from one extra, untimed tracemalloc run.
    """
    runs = _Runs(warmup, repeats, collect)
    dbs = _as_list(backends)
    for db in dbs:
        for fn in strategies:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(f"{fn.__name__} is async: use `await atime_to_first_row(...)`")
            times = []
            for kept in runs.plan():
                with count_statements(db) as log, _GcTime() as collector:
                    clock = _Clock()
                    fn(db, n, clock.first_row)
                    first, total = clock.stop(label_of(fn))
                if kept:
                    times.append((first, total, collector.seconds))
            peak = peak_memory(lambda fn=fn, db=db: fn(db, n, _ignore)) if memory else None
            runs.record(fn, db, n, times, log.count, peak)
    return runs.frame(title, dbs)


async def atime_to_first_row(
    strategies: Iterable[Strategy],
    backends: Backend | Sequence[Backend],
    n: int,
    *,
    warmup: int = 1,
    repeats: int = MIN_REPEATS,
    collect: bool = True,
    memory: bool = True,
    title: str | None = None,
) -> pd.DataFrame:
    """Like :func:`time_to_first_row`; strategies may be ``async def`` (they are awaited)."""
    runs = _Runs(warmup, repeats, collect)
    dbs = _as_list(backends)
    for db in dbs:
        for fn in strategies:
            times = []
            for kept in runs.plan():
                with count_statements(db) as log, _GcTime() as collector:
                    clock = _Clock()
                    result = fn(db, n, clock.first_row)
                    if inspect.isawaitable(result):
                        await result
                    first, total = clock.stop(label_of(fn))
                if kept:
                    times.append((first, total, collector.seconds))
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
    measures: Sequence[str] = ("median_ms", "peak_kib"),
) -> pd.DataFrame:
    """``slow`` divided by ``fast`` for each measure, per backend, at that backend's largest n.

    >>> frame = pd.DataFrame({"strategy": ["a", "b"], "backend": ["x", "x"], "n": [5, 5],
    ...                       "median_ms": [4.0, 1.0], "peak_kib": [30.0, 10.0]})
    >>> ratios(frame, "a", "b").round(1).to_dict("records")
    [{'backend': 'x', 'n': 5, 'median_ms ×': 4.0, 'peak_kib ×': 3.0}]
    """
    names = [label_of(f) if callable(f) else f for f in (slow, fast)]
    largest = frame[frame["n"] == frame.groupby("backend")["n"].transform("max")]
    picked = largest.set_index(["strategy", "backend", "n"])[list(measures)]
    result = picked.xs(names[0], level="strategy") / picked.xs(names[1], level="strategy")
    return result.rename(columns=lambda m: f"{m} ×").reset_index()


def claim_with_rows(text: str, held: Any, *, rows: int, detail: Any = None) -> bool | None:
    """``cl.claim(text, held)`` when the measurement read at least :data:`MIN_ROWS` rows.

    Below that (scale ``tiny``), fixed costs hide the effect, so no claim is made and one
    line says so: the notebook never asserts what it could not have measured.

    >>> claim_with_rows("more rows take longer", True, rows=10)
    Not claimed with 10 rows (a ranking needs at least 1,000): more rows take longer
    """
    if rows < MIN_ROWS:
        print(f"Not claimed with {rows:,} rows (a ranking needs at least {MIN_ROWS:,}): {text}")
        return None
    return claim(text, held, detail=detail)


# ------------------------------------------------------- what a result fetches, and when


@dataclass
class DriverFetches:
    """The fetch calls the async drivers answered in a :func:`driver_rows` block, in order."""

    #: rows each fetch call returned (a ``fetchone`` that found a row counts 1)
    sizes: list[int] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows the drivers returned in all."""
        return sum(self.sizes)

    @property
    def calls(self) -> int:
        """How many fetch calls the drivers answered."""
        return len(self.sizes)


def _driver_fetch_methods() -> list[tuple[type, str]]:
    """The async driver methods that return rows: aiosqlite's cursor, asyncpg's portal and
    prepared statement (SQLAlchemy's adapters call these; see connectors/asyncio.py and
    dialects/postgresql/asyncpg.py)."""
    import aiosqlite.cursor
    import asyncpg.cursor
    import asyncpg.prepared_stmt

    return [
        (aiosqlite.cursor.Cursor, "fetchone"),
        (aiosqlite.cursor.Cursor, "fetchmany"),
        (aiosqlite.cursor.Cursor, "fetchall"),
        (asyncpg.cursor.Cursor, "fetch"),
        (asyncpg.cursor.Cursor, "fetchrow"),
        (asyncpg.prepared_stmt.PreparedStatement, "fetch"),
    ]


def _counting(original: Callable[..., Any], fetches: DriverFetches) -> Callable[..., Any]:
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = await original(self, *args, **kwargs)
        if isinstance(rows, list):
            fetches.sizes.append(len(rows))
        else:  # one row, or None at the end
            fetches.sizes.append(0 if rows is None else 1)
        return rows

    return fetch


@contextmanager
def driver_rows() -> Iterator[DriverFetches]:
    """Count the rows aiosqlite and asyncpg return to SQLAlchemy while the block runs.

    The drivers' fetch methods are wrapped for the block only (and restored after), so what
    is counted is what the driver really handed over, below every SQLAlchemy buffer.
    """
    fetches = DriverFetches()
    saved = [(cls, name, cls.__dict__[name]) for cls, name in _driver_fetch_methods()]
    for cls, name, original in saved:
        setattr(cls, name, _counting(original, fetches))
    try:
        yield fetches
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


Way = Callable[[Backend, Executable], Any]


async def before_first_row(
    ways: Sequence[Way],
    queries: Mapping[str, Executable],
    backends: Sequence[Backend],
) -> pd.DataFrame:
    """What each way of reading each query did before it handed over its first row.

    A way is ``async def fn(backend, query)`` that returns the first row it gets (its
    docstring's first line is its label). Each runs once unmeasured (connections opened,
    statements compiled), then once with :func:`objects_built` and :func:`driver_rows`.
    One row per (way, query), two columns per backend: ORM objects built and rows the
    driver returned.
    """
    rows: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
    for db in backends:
        for way in ways:
            for shape, query in queries.items():
                await way(db, query)
                with driver_rows() as fetched, objects_built() as built:
                    first = await way(db, query)
                if first is None:
                    raise RuntimeError(f"{label_of(way)!r} returned no row")
                cell = rows.setdefault((label_of(way), shape), {})
                cell[(db.name, "objects built")] = sum(built.values())
                cell[(db.name, "driver rows")] = fetched.rows
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.names = ["way", "query"]
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


# ---------------------------------------------------------------------- the raw driver


class DriverQuery:
    """A statement's SQL, run on the raw async driver (no SQLAlchemy result processing).

    The SQL is compiled once per dialect, exactly as SQLAlchemy sends it; parameters are
    given by name (``bindparam("n")``), others keep their compiled values. Rows come back
    as the driver makes them (asyncpg ``Record``, sqlite3 tuples: SQLite dates stay text).

    >>> import asyncio
    >>> from sqlalchemy import bindparam
    >>> from course_lib.data import dataset
    >>> db = dataset("sqlite", "tiny")
    >>> ids = DriverQuery(select(Post.id).order_by(Post.id).limit(bindparam("n")))
    >>> asyncio.run(ids.fetch(db, n=2))
    [(1,), (2,)]
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, list[str], dict[str, Any]]] = {}

    def sql(self, db: Backend) -> str:
        """The SQL sent to ``db``'s async driver."""
        return self._compile(db)[0]

    def _compile(self, db: Backend) -> tuple[str, list[str], dict[str, Any]]:
        dialect = db.engine.dialect
        if dialect.name not in self._compiled:
            compiled = self.statement.compile(dialect=dialect)
            order = list(compiled.positiontup or [])
            self._compiled[dialect.name] = (str(compiled), order, dict(compiled.params))
        return self._compiled[dialect.name]

    async def fetch(self, db: Backend, **params: Any) -> list[Any]:
        """Every row, fetched by the driver on a pooled connection of ``db``'s async engine."""
        sql, order, defaults = self._compile(db)
        values = [params[name] if name in params else defaults[name] for name in order]
        async with db.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if db.name == "postgresql":
                return list(await driver.fetch(sql, *values))
            async with driver.execute(sql, values) as cursor:
                return list(await cursor.fetchall())


# ----------------------------------------------------------------- the garbage collector


def live_objects(count: int) -> list[list[Any]]:
    """``count`` small objects the garbage collector tracks, as a long-running app keeps alive.

    >>> len(live_objects(3))
    3
    """
    return [[] for _ in range(count)]


def samples_table(timings: Mapping[str, Timing]) -> pd.DataFrame:
    """One row per timing: quartiles of its samples, the slowest, and the collector's pauses.

    ``gc_ms`` is the median collector time per sample, ``gc_max_ms`` the longest.
    """
    rows = {}
    for label, timing in timings.items():
        ms = [s * 1000 for s in timing.runs_s]
        gcs = [s * 1000 for s in timing.gc_s] or [0.0]
        q1, median, q3 = quartiles(ms)
        rows[label] = {
            "samples": len(ms),
            "median_ms": median,
            "q1_ms": q1,
            "q3_ms": q3,
            "iqr_ms": q3 - q1,
            "max_ms": max(ms),
            "gc_ms": statistics.median(gcs),
            "gc_max_ms": max(gcs),
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.map(lambda v: _significant(v) if isinstance(v, float) else v)


def samples_chart(timings: Mapping[str, Timing], title: str) -> Figure:
    """Each sample of each timing as a bar, the collector's share of it darker."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(timings), sharey=True, squeeze=False)
        for ax, (label, timing) in zip(axes[0], timings.items(), strict=True):
            xs = range(1, len(timing.runs_s) + 1)
            total = [s * 1000 for s in timing.runs_s]
            collector = [s * 1000 for s in timing.gc_s] or [0.0] * len(total)
            ax.bar(xs, total, color="#9ecae1", label="sample")
            ax.bar(xs, collector, color="#08519c", label="garbage collector")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("sample")
        axes[0][0].set_ylabel("ms per call")
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.suptitle(title, fontweight="bold")
        fig.tight_layout()
    plt.close(fig)
    return fig


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

LATEST = 50
"""How many posts the exercise's listing returns."""


def reference_latest_posts(session: Session, limit: int = LATEST) -> list[dict[str, Any]]:
    """Notebook 02: the ``limit`` latest posts as dicts of id, title and author (name).

    The obvious way: full Post entities (their bodies come along) and a lazy load of each
    author. Newest first; ties on ``created_at`` are broken by the higher id.
    """
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc()).limit(limit)
    return [
        {"id": post.id, "title": post.title, "author": post.author.name}
        for post in session.scalars(query)
    ]


_BODY = re.compile(r"\bbody\b", re.IGNORECASE)


def check_latest_posts(solution: Callable[[Session], Any], db: Backend) -> CheckResult:
    """Judge an answer to notebook 02's exercise: the listing, in one statement, no objects.

    It must return what :func:`reference_latest_posts` returns, in one statement, building no
    ORM object at all (no ``Post``, no ``User``: a column select), and it must not select the
    body it never returns. An answer that raises gets a verdict too (``with_only_columns``
    mistaken for partial objects raises AttributeError on the first attribute).
    """
    if inspect.iscoroutinefunction(solution):
        raise TypeError("write latest_posts as a plain def: the check gives it a sync Session")
    sent: list[str] = []

    def watched(session: Session) -> Any:
        with count_statements(db) as log:
            try:
                return solution(session)
            finally:
                sent.extend(log.sql)

    try:
        verdict = check(
            watched,
            db,
            reference=reference_latest_posts,
            budget=1,
            forbid_entities=(Post, User),
            max_objects=0,
        )
    except Exception as error:  # the learner's code raised: say what, and the likely cause
        return CheckResult(
            "raised",
            f"✗ It raised {type(error).__name__}: {error}. If you used with_only_columns: it "
            "gives rows (and scalars() keeps only their first column), not Post objects.",
            budget=1,
        )
    if verdict.passed and any(_BODY.search(sql) for sql in sent):
        return CheckResult(
            "loaded the body",
            f"✗ Right result and {verdict.statements} statement(s), but it selected the post "
            "body, which the listing never returns: select only the columns it needs.",
            statements=verdict.statements,
            budget=verdict.budget,
            entities=verdict.entities,
        )
    return verdict
