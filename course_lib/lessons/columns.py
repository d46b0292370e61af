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
from sqlalchemy import Executable, event, insert, select, text
from sqlalchemy.orm import Session

from ..backends import Backend, scratch_sibling
from ..data import reset_schema
from ..exercises import CheckResult, check, objects_built
from ..measure import MIN_REPEATS, Timing, acompare, compare, label_of, quartiles
from ..models import Post, User
from ..plots import STYLE

__all__ = [
    "ASYNCPG_PREFETCH",
    "LATEST",
    "CheckData",
    "DriverFetches",
    "DriverQuery",
    "FirstRow",
    "FullCollections",
    "atime_to_first_row",
    "before_first_row",
    "check_data",
    "check_latest_posts",
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

#: Rows SQLAlchemy's asyncpg adapter asks its portal for whenever its buffer runs dry: the
#: course's name for the literal ``fetch(50)`` in ``AsyncAdapt_asyncpg_ss_cursor._buffer_rows``
#: (sqlalchemy/dialects/postgresql/asyncpg.py); SQLAlchemy itself gives it no name.
ASYNCPG_PREFETCH = 50

#: How many posts the exercise's endpoint returns (the check asks for fewer on a scale with
#: fewer than twice as many posts: see :func:`check_latest_posts`).
LATEST = 50


# ------------------------------------------------------------------ time to first row


class _Clock:
    """One timed run: started on creation; ``first_row()`` marks the first row, once."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.start = time.perf_counter()

    def first_row(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def stop(self, label: str) -> float:
        if self.first is None:
            raise RuntimeError(f"strategy {label!r} never called first_row()")
        return self.first - self.start


class _FirstRows:
    """Wraps strategies ``fn(db, n, first_row)`` as the harness's ``fn(db, n)``, and keeps
    each run's wait for its first row (:meth:`frame` keeps the samples' waits only)."""

    def __init__(self, warmup: int, repeats: int) -> None:
        self.warmup, self.repeats = warmup, repeats
        self.waits: dict[tuple[str, str], list[float]] = {}

    def _keep(self, label: str, db: Backend, wait: float) -> None:
        self.waits.setdefault((label, db.name), []).append(wait)

    def sync(self, fn: Strategy) -> Callable[[Backend, int], Any]:
        label = label_of(fn)

        def run(db: Backend, n: int) -> Any:
            clock = _Clock()
            result = fn(db, n, clock.first_row)
            self._keep(label, db, clock.stop(label))
            return result

        run.__doc__ = label
        return run

    def asynchronous(self, fn: Strategy) -> Callable[[Backend, int], Any]:
        label = label_of(fn)

        async def run(db: Backend, n: int) -> Any:
            clock = _Clock()
            result = fn(db, n, clock.first_row)
            if inspect.isawaitable(result):
                result = await result
            self._keep(label, db, clock.stop(label))
            return result

        run.__doc__ = label
        return run

    def frame(self, timed: pd.DataFrame) -> pd.DataFrame:
        """The harness's frame, with the first-row quartiles of the kept samples added."""
        rows = []
        for row in timed.to_dict("records"):
            backend = str(row["backend"]).split(" + ", 1)[0]
            # each strategy's runs, in order: warm-up, samples, then the untimed memory run
            runs = self.waits[(row["strategy"], backend)]
            waits = runs[self.warmup : self.warmup + self.repeats]
            q1, median, q3 = (_significant(s * 1000) for s in quartiles(waits))
            rows.append({"first_row_ms": median, "first_row_q1_ms": q1, "first_row_q3_ms": q3})
        firsts = pd.DataFrame(rows, index=timed.index)
        keep = [c for c in _TIMED_COLUMNS if c in timed]
        frame = pd.concat([timed[["strategy", "backend", "n"]], firsts, timed[keep]], axis=1)
        frame.attrs.update(timed.attrs)
        return frame


#: What :func:`time_to_first_row` keeps of the harness's frame, after the first-row columns.
_TIMED_COLUMNS = ["median_ms", "q1_ms", "q3_ms", "iqr_ms", "statements", "gc_ms", "peak_kib"]


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant figures (the course's tables never show more)."""
    if not value or value != value:
        return value
    return float(f"{value:.{digits}g}")


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

    The course's harness (``cl.compare``) runs them, one run per sample (``number=1``: a run
    to the first row cannot be repeated back to back inside a sample), with its warm-up, its
    ``gc.collect()`` and ``gc.freeze()`` before the measurement and a ``gc.collect()`` before
    each sample (unless ``collect`` is false), the strategies' samples interleaved. One row
    per strategy and backend: ``first_row_ms`` (``first_row_q1_ms``, ``first_row_q3_ms``) is
    the wait for the first row; ``median_ms`` (``q1_ms``, ``q3_ms``, ``iqr_ms``) the whole
    run; ``statements`` and ``gc_ms`` as the harness reports them; ``memory=True`` adds
    ``peak_kib`` from one extra, untimed tracemalloc run.
    """
    strategies = list(strategies)
    for fn in strategies:
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__name__} is async: use `await atime_to_first_row(...)`")
    first = _FirstRows(warmup, repeats)
    timed = compare(
        [first.sync(fn) for fn in strategies],
        backends,
        n,
        warmup=warmup,
        repeats=repeats,
        number=1,
        collect=collect,
        memory=memory,
        title=title,
    )
    return first.frame(timed)


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
    first = _FirstRows(warmup, repeats)
    timed = await acompare(
        [first.asynchronous(fn) for fn in strategies],
        backends,
        n,
        warmup=warmup,
        repeats=repeats,
        number=1,
        collect=collect,
        memory=memory,
        title=title,
    )
    return first.frame(timed)


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


class FullCollections:
    """``fn()`` as a timed call that counts the full (generation-2) collections inside it.

    The count is per call, through ``gc.callbacks`` installed for the call only, so the
    harness's own ``gc.collect()`` between samples is never counted;
    :meth:`in_samples` keeps the calls of a timing's samples (warm-up and calibration left
    out: they come first).
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.per_call: list[int] = []

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            self.per_call[-1] += 1

    async def __call__(self) -> Any:
        self.per_call.append(0)
        gc.callbacks.append(self._seen)
        try:
            result = self.fn()
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            gc.callbacks.remove(self._seen)

    def in_samples(self, timing: Timing) -> int:
        """Full collections that ran inside the calls of ``timing``'s samples."""
        calls = len(timing.runs_s) * timing.number
        return sum(self.per_call[-calls:])


def samples_table(
    timings: Mapping[str, Timing], full: Mapping[str, FullCollections] | None = None
) -> pd.DataFrame:
    """One row per timing: quartiles of its samples, the slowest, and the collector's pauses.

    ``gc_ms`` is the median collector time per sample, ``gc_max_ms`` the longest; with
    ``full`` (the :class:`FullCollections` each timing ran), ``full_collections`` counts the
    generation-2 collections inside its samples.
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
        if full is not None:
            rows[label]["full_collections"] = full[label].in_samples(timing)
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


def reference_latest_posts(session: Session, n: int = LATEST) -> list[dict[str, Any]]:
    """Notebook 02: the ``n`` latest posts as dicts of id, title and author (name).

    The obvious way: full Post entities (their bodies come along) and a lazy load of each
    author. Newest first; ties on ``created_at`` are broken by the higher id.
    """
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc()).limit(n)
    return [
        {"id": post.id, "title": post.title, "author": post.author.name}
        for post in session.scalars(query)
    ]


@dataclass(frozen=True)
class CheckData:
    """Where :func:`check_latest_posts` judges: a scratch copy of the latest posts."""

    db: Backend
    #: posts the copy holds (the latest of the dataset, with their authors)
    posts: int
    #: posts the answer must return: min(LATEST, posts // 2)
    n: int
    #: ids of the posts that share one ``created_at`` across the n-th place, highest first
    tied: tuple[int, ...]


_CHECK_DATA: dict[str, CheckData] = {}


def check_data(db: Backend) -> CheckData:
    """A scratch copy of ``db``'s latest ``2 * LATEST`` posts (fewer if the dataset has fewer)
    and their authors, in which the posts ranked n - 1, n and n + 1 share one ``created_at``.

    The answer must return ``n = min(LATEST, posts // 2)`` posts, so a LIMIT is needed (the
    copy holds twice as many), and the tie across the n-th place makes the order's tie-break
    decide which posts come back, and in what order. Made once per backend and process.
    """
    key = db.sync_url.render_as_string()
    if key in _CHECK_DATA:
        return _CHECK_DATA[key]
    with db.Session() as session:
        top = session.execute(
            select(Post.__table__).order_by(Post.created_at.desc(), Post.id.desc())
        ).fetchmany(2 * LATEST)
        authors = {row.author_id for row in top}
        users = session.execute(select(User.__table__).where(User.id.in_(authors))).all()
    n = min(LATEST, len(top) // 2)
    if n < 2:
        raise RuntimeError(f"{db.name} holds {len(top)} posts: the check needs at least 4")
    copy = reset_schema(scratch_sibling(db, "columns_check", db.database.removeprefix("course_")))
    rows = [row._asdict() for row in top]
    tie = rows[n - 1]["created_at"]
    for row in rows[n - 2 : n + 1]:  # ranks n - 1, n, n + 1 (the last one falls outside)
        row["created_at"] = tie
    with copy.sync_engine.begin() as conn:
        conn.execute(insert(User.__table__), [row._asdict() for row in users])
        conn.execute(insert(Post.__table__), rows)
    tied = tuple(sorted((row["id"] for row in rows[n - 2 : n + 1]), reverse=True))
    data = CheckData(copy, len(rows), n, tied)
    _CHECK_DATA[key] = data
    return data


def _is_body(column: Any) -> bool:
    return any(
        getattr(getattr(c, "table", None), "name", None) == Post.__tablename__
        and getattr(c, "name", None) == "body"
        for c in getattr(column, "proxy_set", ())
    )


@contextmanager
def _selected_body(db: Backend) -> Iterator[list[bool]]:
    """For each statement ``db``'s sync engine runs: did it SELECT ``posts.body``?

    Judged on the statement's selected columns (a label of the body counts; the body used in
    a WHERE or inside a function such as ``length()`` does not); for a ``text()`` statement,
    on the names of the columns the cursor returns.
    """
    found: list[bool] = []

    def after(_conn: Any, cursor: Any, _sql: str, _p: Any, context: Any, _many: bool) -> None:
        statement = getattr(getattr(context, "compiled", None), "statement", None)
        if statement is not None and hasattr(statement, "selected_columns"):
            found.append(any(_is_body(c) for c in statement.selected_columns))
        else:
            names = [d[0].lower() for d in cursor.description or ()]
            found.append("body" in names)

    event.listen(db.sync_engine, "after_cursor_execute", after)
    try:
        yield found
    finally:
        event.remove(db.sync_engine, "after_cursor_execute", after)


def check_latest_posts(solution: Callable[[Session, int], Any], db: Backend) -> CheckResult:
    """Judge an answer ``solution(session, n)`` to notebook 02's exercise.

    It runs on :func:`check_data` (a copy of ``db``'s latest posts with a tie across the n-th
    place) and must return what :func:`reference_latest_posts` returns there, in one
    statement, building no ORM object at all (a column select), with at most ``n`` rows
    coming back from the database (sort and limit in SQL), and without selecting the body it
    never returns. An answer that raises gets a verdict too (``with_only_columns`` mistaken
    for partial objects raises AttributeError on the first attribute).
    """
    if inspect.iscoroutinefunction(solution):
        raise TypeError("write latest_posts as a plain def: the check gives it a sync Session")
    data = check_data(db)
    body: list[bool] = []

    def answer(session: Session) -> Any:
        with _selected_body(data.db) as selected:
            try:
                return solution(session, data.n)
            finally:
                body.extend(selected)

    try:
        verdict = check(
            answer,
            data.db,
            reference=lambda session: reference_latest_posts(session, data.n),
            budget=1,
            forbid_entities=(Post, User),
            max_objects=0,
            max_rows=data.n,
        )
    except Exception as error:  # the learner's code raised: say what, and the likely cause
        return CheckResult(
            "raised",
            f"✗ It raised {type(error).__name__}: {error}. If you used with_only_columns: it "
            "gives rows (and scalars() keeps only their first column), not Post objects.",
            budget=1,
        )
    common = {
        "statements": verdict.statements,
        "budget": verdict.budget,
        "entities": verdict.entities,
    }
    if verdict.status == "too many objects":  # objects of a mapping other than Post, User
        built = ", ".join(f"{count} {name}" for name, count in verdict.entities.items())
        return CheckResult(
            "loaded entities",
            f"✗ Right result and {verdict.statements} statement(s), but it built ORM objects "
            f"({built}): the listing needs none, select columns.",
            **common,
        )
    if verdict.passed and any(body):
        return CheckResult(
            "loaded the body",
            f"✗ Right result and {verdict.statements} statement(s), but it selected the post "
            "body, which the listing never returns: select only the columns it needs.",
            **common,
        )
    return verdict
