"""Query logging to take home: a slow-query log, a "top statements" table and origin tags.

Three tools built on engine events, for any SQLAlchemy 2.x ``Engine`` or ``AsyncEngine``
(through its ``.sync_engine``), nothing course-specific about them:

- :func:`log_slow_queries`: every statement that takes at least ``threshold_ms`` goes to a
  named :mod:`logging` logger, with its SQL, its duration and the line of *your* code that
  sent it (:class:`Origin`). The duration is the time inside the driver, timed with
  ``perf_counter``: ``cursor.execute`` (between ``before_cursor_execute`` and
  ``after_cursor_execute``) plus every fetch from the statement's cursor, until the result
  is closed (or until the statement failed). Fetching is where SQLite steps through the
  rows, and where a server-side cursor (``yield_per``, ``stream_results``) goes back to
  the server. It returns a handle that removes the listeners.
- :func:`top_statements`: statements grouped by shape (:func:`normalize_sql`), with count,
  total, mean and p95 milliseconds, as a pandas DataFrame: the client-side twin of
  PostgreSQL's ``pg_stat_statements`` (which times the server's execution only).
- :func:`tag_origin`: a sqlcommenter-style comment (``/*function='report',module='app'*/``)
  appended to every statement, so the server's own logs and ``pg_stat_statements`` point
  back to the code. It is added after compilation, so the compile cache still hits.

Wire the slow-query log like any log::

    import logging
    logging.basicConfig()  # or your app's handlers: the logger is "course_lib.query_log"
    slow = log_slow_queries(engine, threshold_ms=50)
    ...
    slow.remove()

>>> from sqlalchemy import create_engine, text
>>> engine = create_engine("sqlite://")
>>> with log_slow_queries(engine, threshold_ms=0, logger=None) as slow:
...     with engine.connect() as conn:
...         _ = conn.execute(text("SELECT 1")).all()
>>> [q.sql for q in slow.records], slow.records[0].duration_ms >= 0
(['SELECT 1'], True)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

try:  # greenlet comes with sqlalchemy[asyncio]; without it there is no async engine either
    import greenlet
except ImportError:  # pragma: no cover
    greenlet = None

__all__ = [
    "DEFAULT_THRESHOLD_MS",
    "INTERNAL_MODULES",
    "LOGGER_NAME",
    "Origin",
    "OriginTags",
    "SlowQuery",
    "SlowQueryLog",
    "find_origin",
    "log_slow_queries",
    "normalize_sql",
    "parse_sql_comment",
    "sql_comment",
    "tag_origin",
    "top_statements",
]

#: The logger slow statements go to (``logging.getLogger(LOGGER_NAME)``).
LOGGER_NAME = "course_lib.query_log"

#: The default threshold of :func:`log_slow_queries`, in milliseconds.
DEFAULT_THRESHOLD_MS = 100.0

#: Modules whose frames are never "where a statement came from": SQLAlchemy, the drivers,
#: asyncio and greenlet plumbing, and the course's own measuring machinery. A module is
#: internal when its name equals one of these or starts with one followed by a dot.
INTERNAL_MODULES: tuple[str, ...] = (
    "sqlalchemy",
    "asyncio",
    "greenlet",
    "contextlib",
    "concurrent.futures",
    "threading",
    "logging",
    "sqlite3",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "psycopg2",
    "course_lib.query_log",
    "course_lib.measure",
    "course_lib.exercises",
    "course_lib.backends",
)

Target = Engine | AsyncEngine | Any  # Any: a course Backend (both its engines)


def _engines(target: Target) -> list[Engine]:
    """The sync-level engines whose events see everything ``target`` sends."""
    if isinstance(target, Engine):
        return [target]
    if isinstance(target, AsyncEngine):
        return [target.sync_engine]
    sync, engine = getattr(target, "sync_engine", None), getattr(target, "engine", None)
    if isinstance(sync, Engine) and isinstance(engine, AsyncEngine):  # a course Backend
        return [sync, engine.sync_engine]
    raise TypeError(f"expected an Engine or an AsyncEngine, got {type(target).__name__}")


# ------------------------------------------------------------------------------ origins


@dataclass(frozen=True)
class Origin:
    """Where a statement came from: the first frame outside :data:`INTERNAL_MODULES`.

    >>> Origin("app.views", "list_users", "app/views.py", 42).where
    'views.py:42 list_users'
    """

    module: str
    function: str
    path: str
    line: int

    @property
    def file(self) -> str:
        """The file, short: relative to the working directory, else its name (``In[5]`` for
        an IPython cell). Never an absolute path, so it is safe in logs and notebooks."""
        return _short_path(self.path)

    @property
    def where(self) -> str:
        """``file:line function``, the form log lines use."""
        return f"{os.path.basename(self.file)}:{self.line} {self.function}"

    def __str__(self) -> str:
        return self.where


@lru_cache(maxsize=256)
def _short_path(path: str) -> str:
    cell = _ipython_cell(path)
    if cell is not None:
        return cell
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        relative = path
    if relative.startswith(".."):
        return os.path.basename(path)
    return relative


def _ipython_cell(path: str) -> str | None:
    """``In[n]`` when ``path`` is the file IPython compiled cell ``n`` into."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if isinstance(names, dict) and path in names:
        return f"In[{names[path]}]"
    return None


def _is_internal(module: str, skip: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in skip)


#: Per skip list, each module name seen and whether it is internal (a few dozen names:
#: a dict lookup per frame instead of a prefix test, since this runs on every statement).
_verdicts: dict[tuple[str, ...], dict[str, bool]] = {}


def _verdicts_for(skip: tuple[str, ...]) -> dict[str, bool]:
    return _verdicts.setdefault(skip, {})


#: Comprehensions, which Python before 3.12 runs as frames of their own: the origin is the
#: function that holds one (its line), whatever the Python version.
_COMPREHENSIONS = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>"})


def _origin_frame(
    skip: tuple[str, ...], verdicts: dict[str, bool], frame: FrameType | None
) -> FrameType | None:
    """The first frame from ``frame`` outward whose module is not internal (a list, dict or
    set comprehension stands for the function around it).

    Under an ``AsyncEngine`` the ORM runs in a greenlet whose stack ends at SQLAlchemy's
    ``greenlet_spawn``; the awaiting coroutines (your code) are in the parent greenlet's
    stack, suspended at the switch: ``gr_frame`` is that frame, and the walk goes on there.
    """
    current = None
    while True:
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            internal = verdicts.get(module)
            if internal is None:
                internal = verdicts[module] = _is_internal(module, skip)
            if not internal:
                while frame.f_code.co_name in _COMPREHENSIONS and frame.f_back is not None:
                    frame = frame.f_back  # Python < 3.12: a comprehension is a frame of its own
                return frame
            frame = frame.f_back
        if greenlet is None:
            return None
        current = (current or greenlet.getcurrent()).parent
        frame = current.gr_frame if current is not None else None
        if frame is None:
            return None


def _origin_of(frame: FrameType | None) -> Origin | None:
    if frame is None:
        return None
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    return Origin(frame.f_globals.get("__name__", ""), name, code.co_filename, frame.f_lineno)


def find_origin(skip: Sequence[str] = INTERNAL_MODULES, *, depth: int = 1) -> Origin | None:
    """The innermost caller outside the ``skip`` modules (None if there is none).

    ``depth`` frames are skipped first (1: the caller of ``find_origin``).

    >>> def handler():
    ...     return find_origin(skip=("sqlalchemy", "asyncio"))
    >>> handler().function
    'handler'
    """
    skipped = tuple(skip)
    return _origin_of(_origin_frame(skipped, _verdicts_for(skipped), sys._getframe(depth)))


# --------------------------------------------------------------------------- slow log


@dataclass(frozen=True)
class SlowQuery:
    """One statement that reached the threshold.

    ``duration_ms`` is the time inside the driver: ``cursor.execute`` plus the fetches
    (``fetch_ms`` of it), not the time your code spent between two fetches of a stream.
    """

    sql: str
    duration_ms: float
    origin: Origin | None
    executemany: bool = False
    #: the bound parameters, only when the log was made with ``with_parameters=True`` and
    #: the engine was not made with ``hide_parameters=True``
    parameters: Any = None
    #: the exception's class name when the statement failed (timed until it failed)
    error: str | None = None
    #: the part of ``duration_ms`` spent in the cursor's fetch calls
    fetch_ms: float = 0.0
    #: rows fetched from the cursor; None for a statement that returns no rows
    rows: int | None = None

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        return self.duration_ms / 1000


class _FetchClock:
    """A row-returning statement's DBAPI cursor, wrapped in ``after_cursor_execute`` (before
    SQLAlchemy builds the result on it): each fetch is timed, and the statement is finished
    (its duration compared with the threshold) when the cursor is closed, which SQLAlchemy
    does as soon as the result is exhausted, or closed, or when the wrapper is dropped.
    Everything else is forwarded to the cursor. (Plain attributes: this runs for every
    statement, and SQLAlchemy sets none on the cursor it reads from.)"""

    def __init__(
        self, cursor: Any, log: SlowQueryLog, sql: str, params: Any, execute_s: float
    ) -> None:
        self._cursor, self._log, self._sql, self._params = cursor, log, sql, params
        self._execute_s, self._fetch_s, self._rows, self._done = execute_s, 0.0, 0, False

    def fetchone(self) -> Any:
        start = time.perf_counter()
        try:
            row = self._cursor.fetchone()
        finally:
            self._fetch_s += time.perf_counter() - start
        if row is not None:
            self._rows += 1
        return row

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            rows = self._cursor.fetchmany(*args, **kwargs)
        finally:
            self._fetch_s += time.perf_counter() - start
        self._rows += len(rows)
        return rows

    def fetchall(self) -> Any:
        start = time.perf_counter()
        try:
            rows = self._cursor.fetchall()
        finally:
            self._fetch_s += time.perf_counter() - start
        self._rows += len(rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        try:
            self._cursor.close()
        finally:
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        ms = (self._execute_s + self._fetch_s) * 1000
        if ms >= self._log.threshold_ms:
            fetch_ms = self._fetch_s * 1000
            self._log._record(self._sql, self._params, ms, False, error, fetch_ms, self._rows)

    def __del__(self) -> None:  # a result never closed: finished when it is dropped
        if not self._done:
            with contextlib.suppress(Exception):  # never raise from a finalizer (at exit)
                self._finish(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class SlowQueryLog:
    """What :func:`log_slow_queries` returns: the records kept, and :meth:`remove`.

    ``threshold_ms`` may be changed while the log runs. ``records`` keeps the last ``keep``
    slow statements (a bounded deque: a long-running app never grows it without limit).
    """

    def __init__(
        self,
        engines: list[Engine],
        threshold_ms: float,
        logger: logging.Logger | None,
        level: int,
        keep: int,
        with_parameters: bool,
        skip: tuple[str, ...],
        max_sql: int,
    ):
        self.threshold_ms = threshold_ms
        self.logger, self.level = logger, level
        self.records: deque[SlowQuery] = deque(maxlen=keep)
        self.with_parameters, self.skip, self.max_sql = with_parameters, skip, max_sql
        self._engines = engines
        # the start time rides on the statement's execution context, never on the
        # connection: one slot per statement, gone with the statement
        self._slot = f"_query_log_t0_{id(self):x}"
        self._hooks = [
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("handle_error", self._error),
        ]
        for engine in engines:
            for name, hook in self._hooks:
                event.listen(engine, name, hook)
        self.active = True

    # the listeners: as little work as possible unless the statement was slow
    def _before(self, _c: Any, _cur: Any, _sql: str, _p: Any, context: Any, _many: bool) -> None:
        if context is not None:
            setattr(context, self._slot, time.perf_counter())

    def _after(self, conn: Any, cur: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        started = getattr(context, self._slot, None)
        if started is None:
            return
        elapsed = time.perf_counter() - started
        if conn.engine.hide_parameters:
            params = None
        if not many and cur.description is not None:  # rows to fetch: time them too
            clock = _FetchClock(context.cursor, self, sql, params, elapsed)
            context.cursor = clock  # the result is built on it, and closes it
            setattr(context, self._slot, clock)  # an error while fetching finishes it
            return
        setattr(context, self._slot, None)
        if elapsed * 1000 >= self.threshold_ms:
            self._record(sql, params, elapsed * 1000, many, None)

    def _error(self, exception_context: Any) -> None:
        context = exception_context.execution_context
        started = getattr(context, self._slot, None) if context is not None else None
        if started is None:
            return
        setattr(context, self._slot, None)
        error = type(exception_context.original_exception).__name__
        if isinstance(started, _FetchClock):  # it failed while fetching
            started._finish(error)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms >= self.threshold_ms:
            sql = exception_context.statement or ""
            hidden = (
                exception_context.engine is not None and exception_context.engine.hide_parameters
            )
            params = None if hidden else exception_context.parameters
            self._record(sql, params, elapsed_ms, bool(context.executemany), error)

    def _record(
        self,
        sql: str,
        params: Any,
        ms: float,
        many: bool,
        error: str | None,
        fetch_ms: float = 0.0,
        rows: int | None = None,
    ) -> None:
        origin = find_origin(self.skip, depth=1)
        kept = params if self.with_parameters else None
        query = SlowQuery(sql, ms, origin, many, kept, error, fetch_ms, rows)
        self.records.append(query)
        if self.logger is not None and self.logger.isEnabledFor(self.level):
            text = " ".join(sql.split())
            if len(text) > self.max_sql:
                text = text[: self.max_sql - 1] + "…"
            failed = f" (failed: {error})" if error else ""
            fetched = (
                f" ({fetch_ms:.1f} ms of it fetching {rows:,} rows)" if rows is not None else ""
            )
            self.logger.log(
                self.level,
                "slow query: %.1f ms%s (threshold %g ms)%s at %s: %s",
                ms,
                fetched,
                self.threshold_ms,
                failed,
                origin.where if origin else "?",
                text,
                extra={"slow_query": query},
            )

    def frame(self) -> pd.DataFrame:
        """The records as a DataFrame: sql, duration_ms, fetch_ms, rows, origin, error."""
        columns = ["sql", "duration_ms", "fetch_ms", "rows", "origin", "error"]
        return pd.DataFrame(
            [
                {
                    "sql": " ".join(q.sql.split()),
                    "duration_ms": q.duration_ms,
                    "fetch_ms": q.fetch_ms,
                    "rows": q.rows,
                    "origin": q.origin.where if q.origin else None,
                    "error": q.error,
                }
                for q in self.records
            ],
            columns=columns,
        )

    def remove(self) -> None:
        """Remove the listeners (idempotent). The records stay readable."""
        if not self.active:
            return
        for engine in self._engines:
            for name, hook in self._hooks:
                event.remove(engine, name, hook)
        self.active = False

    def __enter__(self) -> SlowQueryLog:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<SlowQueryLog ≥ {self.threshold_ms:g} ms, {len(self.records)} recorded, {state}>"


def log_slow_queries(
    target: Target,
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
    *,
    logger: str | logging.Logger | None = LOGGER_NAME,
    level: int = logging.WARNING,
    keep: int = 1000,
    with_parameters: bool = False,
    skip: Sequence[str] = INTERNAL_MODULES,
    max_sql: int = 1000,
) -> SlowQueryLog:
    """Log every statement ``target`` sends that takes at least ``threshold_ms``.

    ``target`` is an ``Engine`` or an ``AsyncEngine`` (its ``.sync_engine`` is listened to).
    What is timed: ``cursor.execute``, plus, for a statement that returns rows, every fetch
    from its cursor until the result is closed (SQLAlchemy closes it when the rows are
    exhausted; a result never closed is finished when it is dropped). Time your code spends
    between two fetches of a stream (``yield_per``) is not counted, nor building ORM
    objects. A statement is judged, kept and logged when it is finished, so ``.records`` is
    in the order statements finished, and the origin is the line that read the rows.

    Each slow statement is kept in ``.records`` (the last ``keep``) and logged at ``level``
    on ``logger`` (a name or a Logger; None: keep records only), as one line with its
    duration (and the fetching part), its origin (``file:line function`` of the first frame
    outside ``skip``) and its SQL (cut at ``max_sql`` characters); the :class:`SlowQuery`
    rides on the log record as ``record.slow_query`` for structured handlers. Parameters are
    left out unless ``with_parameters=True`` (they may hold passwords and tokens), and even
    then for an engine made with ``hide_parameters=True``. A statement that fails (a
    ``statement_timeout``, a deadlock) is timed until it failed and logged too.

    Cost: two ``perf_counter`` calls per statement and per fetch call, and one small wrapper
    object per row-returning statement; the stack is walked only for slow statements. The
    wrapper replaces ``context.cursor`` in ``after_cursor_execute``: another listener that
    wraps the cursor too sees it there, and must wrap whatever ``context.cursor`` is (as
    this log does with theirs), not only the raw DBAPI cursor.

    >>> from sqlalchemy import create_engine, text
    >>> engine = create_engine("sqlite://")
    >>> slow = log_slow_queries(engine, threshold_ms=1_000, logger=None)
    >>> with engine.connect() as conn:
    ...     _ = conn.execute(text("SELECT 1"))
    >>> len(slow.records), slow.remove()
    (0, None)
    """
    if isinstance(logger, str):
        logger = logging.getLogger(logger)
    return SlowQueryLog(
        _engines(target), threshold_ms, logger, level, keep, with_parameters, tuple(skip), max_sql
    )


# ---------------------------------------------------------------------- top statements

#: What the normaliser must read as one token: E'...' strings (backslash escapes), plain
#: strings, quoted identifiers (kept as they are), comments (dropped).
_TOKENS = re.compile(
    r"(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|/\*.*?\*/|--[^\n]*",
    re.DOTALL,
)
_CAST = r"(?:::(?:TIMESTAMP|TIME)(?: WITH(?:OUT)? TIME ZONE)?|::\w+(?:\([\d, ]*\))?(?:\[\])*)?"
_PLACEHOLDER = re.compile(r"(?:\?|\$\d+|%\(\w+\)s|%s|(?<![:\w]):\w+)" + _CAST)
_POSTCOMPILE = re.compile(r"\(?__\[POSTCOMPILE_\w+\]\)?")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+]\s*)?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", re.IGNORECASE
)
_IN_LIST = re.compile(r"\bIN\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.IGNORECASE)
_ROWS = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+")
_IDENT = "\x00"  # stands for a quoted identifier while the values are replaced
_OPERAND_END = frozenset("_)]?" + _IDENT)  # (and letters, digits): what an operand ends with


def normalize_sql(sql: str) -> str:
    """The shape of a statement: literals and placeholders as ``?``, IN lists and
    multi-row VALUES collapsed, comments dropped, whitespace collapsed.

    Statements that differ only in their values (or in a bound list's length, or in a
    sqlcommenter tag) get the same shape. ``pg_stat_statements`` also ignores comments and
    replaces constants, but before PostgreSQL 18 it keeps one entry per IN-list length.
    Quoted identifiers (``"order"``) are kept as they are; a sign is part of a number only
    where it cannot be an operator (``price - 1`` stays a subtraction).

    >>> normalize_sql("SELECT * FROM t WHERE id IN (%(id_1_1)s::INTEGER, %(id_1_2)s::INTEGER)"
    ...               " AND name = 'x' /*function='f'*/")
    'SELECT * FROM t WHERE id IN (...) AND name = ?'
    >>> normalize_sql("INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)")
    'INSERT INTO t (a, b) VALUES (?, ?), ...'
    >>> normalize_sql('SELECT "2024 total", price -1 FROM t WHERE x = -1')
    'SELECT "2024 total", price -? FROM t WHERE x = ?'
    """
    identifiers: list[str] = []

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith('"'):
            identifiers.append(text)
            return _IDENT
        return " " if text.startswith(("/*", "--")) else "?"

    def number(match: re.Match[str]) -> str:
        sign, text, before = match.group("sign"), match.string, match.start() - 1
        if not sign:
            return "?"
        while before >= 0 and text[before].isspace():
            before -= 1
        if before >= 0 and (text[before].isalnum() or text[before] in _OPERAND_END):
            return sign + "?"  # after an operand: the sign is a binary operator
        return "?"

    shape = _TOKENS.sub(token, sql)
    shape = _POSTCOMPILE.sub("(?)", shape)
    shape = _PLACEHOLDER.sub("?", shape)
    shape = _NUMBER.sub(number, shape)
    shape = " ".join(shape.split())
    shape = _IN_LIST.sub("IN (...)", shape)
    shape = _ROWS.sub(r"\1, ...", shape)
    if identifiers:
        parts = iter(shape.split(_IDENT))
        shape = next(parts) + "".join(
            name + part for name, part in zip(identifiers, parts, strict=False)
        )
    return shape


def _items(statements: Any) -> Iterable[Any]:
    for name in ("statements", "records"):  # a StatementLog, a SlowQueryLog
        if hasattr(statements, name) and not isinstance(statements, list | tuple):
            return getattr(statements, name)
    return statements


def _sql_ms_origin(item: Any) -> tuple[str, float, str | None]:
    if isinstance(item, tuple) and len(item) == 2:  # (sql, seconds)
        return item[0], item[1] * 1000, None
    ms = item.duration_ms if hasattr(item, "duration_ms") else item.seconds * 1000
    origin = getattr(item, "origin", None)
    return item.sql, ms, (origin.where if origin is not None else None)


TOP_COLUMNS = ["shape", "count", "total_ms", "mean_ms", "p95_ms", "share"]


def top_statements(
    statements: Any, *, by: str = "total_ms", limit: int | None = None
) -> pd.DataFrame:
    """Statements grouped by shape: count, total, mean and p95 (ms), and share of the time.

    ``statements``: a course ``StatementLog`` (``cl.count_statements``), a
    :class:`SlowQueryLog`, or an iterable of objects with ``.sql`` and ``.seconds`` (or
    ``.duration_ms``) or of ``(sql, seconds)`` pairs. When the items carry an origin (slow-log
    records), an ``origin`` column names the most frequent one per shape. Rows are sorted by
    ``by`` ("total_ms", or "count": count first, then shape, a deterministic order), largest
    first; ``limit`` keeps the first rows. ``share`` is the percentage of all the time. The
    times are the items' own: a slow-query log's include each statement's fetch; the
    course's ``StatementLog`` times ``cursor.execute`` only.

    >>> frame = top_statements([("SELECT a FROM t WHERE id = 1", 0.002),
    ...                         ("SELECT a FROM t WHERE id = 2", 0.004),
    ...                         ("SELECT count(*) FROM t", 0.001)])
    >>> frame[["shape", "count", "total_ms"]].values.tolist()
    [['SELECT a FROM t WHERE id = ?', 2, 6.0], ['SELECT count(*) FROM t', 1, 1.0]]
    """
    rows = [_sql_ms_origin(item) for item in _items(statements)]
    with_origin = any(origin is not None for _, _, origin in rows)
    columns = TOP_COLUMNS + (["origin"] if with_origin else [])
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows, columns=["sql", "ms", "origin"])
    frame["shape"] = frame["sql"].map(normalize_sql)
    grouped = frame.groupby("shape", sort=False)["ms"]
    top = pd.DataFrame(
        {
            "count": grouped.size(),
            "total_ms": grouped.sum(),
            "mean_ms": grouped.mean(),
            "p95_ms": grouped.quantile(0.95),
        }
    )
    total = float(top["total_ms"].sum())
    top["share"] = top["total_ms"] / total * 100 if total > 0 else math.nan
    if with_origin:
        top["origin"] = frame.groupby("shape", sort=False)["origin"].agg(_most_common)
    top = top.reset_index()
    if by == "count":
        top = top.sort_values(["count", "shape"], ascending=[False, True], kind="stable")
    elif by == "total_ms":
        top = top.sort_values(["total_ms", "shape"], ascending=[False, True], kind="stable")
    else:
        raise ValueError(f"by must be 'total_ms' or 'count', not {by!r}")
    top = top[columns].reset_index(drop=True)
    return top.head(limit) if limit is not None else top


def _most_common(origins: pd.Series) -> str | None:
    counted = Counter(o for o in origins if o is not None)
    return min(counted, key=lambda o: (-counted[o], o)) if counted else None


# ------------------------------------------------------------------------- origin tags

#: Paramstyles whose drivers read ``%`` in the SQL text as the start of a placeholder.
_PERCENT_STYLES = ("format", "pyformat")


def _serialize(text: str) -> str:
    """sqlcommenter's serialization: URL-encode, then escape ``'`` with a backslash."""
    return quote(text, safe="").replace("'", "\\'")


def sql_comment(tags: Mapping[str, Any], *, paramstyle: str | None = None) -> str:
    """A sqlcommenter comment: ``/*key='value',...*/``, keys sorted, both URL-encoded.

    Nothing from ``tags`` can end the comment or the statement: URL encoding turns
    ``*/``, quotes and newlines into ``%xx``, and ``'`` would be escaped as ``\\'``. For
    drivers that treat ``%`` as a placeholder (``paramstyle`` "format" or "pyformat", like
    psycopg), ``%`` is doubled so the driver sends a single one. Empty values are left out.

    >>> sql_comment({"function": "list_users", "module": "app.views"})
    "/*function='list_users',module='app.views'*/"
    >>> sql_comment({"function": "x'*/ DROP TABLE users; --"})
    "/*function='x%27%2A%2F%20DROP%20TABLE%20users%3B%20--'*/"
    """
    pairs = [
        f"{_serialize(str(key))}='{_serialize(str(value))}'"
        for key, value in sorted(tags.items())
        if value not in (None, "")
    ]
    if not pairs:
        return ""
    comment = "/*" + ",".join(pairs) + "*/"
    return comment.replace("%", "%%") if paramstyle in _PERCENT_STYLES else comment


_COMMENT_PAIR = re.compile(r"([^=,]+)='((?:[^'\\]|\\.)*)'")


def parse_sql_comment(sql: str) -> dict[str, str]:
    """The tags of the last sqlcommenter comment in ``sql`` (``{}`` if there is none).

    >>> parse_sql_comment("SELECT 1 /*function='a%20b',line='7'*/")
    {'function': 'a b', 'line': '7'}
    """
    start = sql.rfind("/*")
    end = sql.find("*/", start)
    if start < 0 or end < 0:
        return {}
    body = sql[start + 2 : end].replace("%%", "%")
    return {
        unquote(key): unquote(re.sub(r"\\(.)", r"\1", value))
        for key, value in _COMMENT_PAIR.findall(body)
    }


#: What :func:`tag_origin` can put in the comment, from the :class:`Origin`.
ORIGIN_FIELDS = {
    "function": lambda o: o.function,
    "module": lambda o: o.module,
    "file": lambda o: o.file,
    "line": lambda o: str(o.line),
}


class OriginTags:
    """What :func:`tag_origin` returns: ``.tagged`` counts the statements tagged; :meth:`remove`."""

    def __init__(
        self,
        engines: list[Engine],
        fields: tuple[str, ...],
        static: Mapping[str, str],
        skip: tuple[str, ...],
    ):
        unknown = set(fields) - set(ORIGIN_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown origin field(s) {sorted(unknown)}: use {list(ORIGIN_FIELDS)}"
            )
        self.fields, self.static, self.skip = fields, dict(static), skip
        self._verdicts = _verdicts_for(skip)
        self._by_line = "line" in fields
        self._comments: dict[tuple[Any, int, str | None], str] = {}
        self.tagged = 0
        self._engines = engines
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._tag, retval=True)
        self.active = True

    def tags(self, origin: Origin | None) -> dict[str, str]:
        """The key/value pairs for one statement from ``origin``."""
        tags = dict(self.static)
        if origin is not None:
            tags.update({field: ORIGIN_FIELDS[field](origin) for field in self.fields})
        return tags

    def _tag(
        self, conn: Any, _cur: Any, sql: str, params: Any, context: Any, _many: bool
    ) -> tuple[str, Any]:
        if "/*" in sql or "--" in sql:  # sqlcommenter: never touch a commented statement
            return sql, params
        paramstyle = conn.dialect.paramstyle
        if not params and context is not None and context.no_parameters:
            paramstyle = None  # sent without parameters: the driver reads no placeholders
        # every statement comes here: the comment is computed once per call site (code
        # object, and line when tagged) and paramstyle, then looked up
        frame = _origin_frame(self.skip, self._verdicts, sys._getframe(1))
        key = (
            frame.f_code if frame is not None else None,
            frame.f_lineno if frame is not None and self._by_line else 0,
            paramstyle,
        )
        comment = self._comments.get(key)
        if comment is None:
            if len(self._comments) >= 4096:  # code objects made at run time: stay bounded
                self._comments.clear()
            tags = self.tags(_origin_of(frame))
            comment = self._comments[key] = sql_comment(tags, paramstyle=paramstyle)
        if not comment:
            return sql, params
        self.tagged += 1
        body = sql.rstrip()
        if body.endswith(";"):
            return f"{body[:-1].rstrip()} {comment};", params
        return f"{body} {comment}", params

    def remove(self) -> None:
        """Stop tagging (idempotent)."""
        if not self.active:
            return
        for engine in self._engines:
            event.remove(engine, "before_cursor_execute", self._tag)
        self.active = False

    def __enter__(self) -> OriginTags:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.remove()


def tag_origin(
    target: Target,
    *,
    fields: Sequence[str] = ("function", "module"),
    static: Mapping[str, str] | None = None,
    skip: Sequence[str] = INTERNAL_MODULES,
) -> OriginTags:
    """Append a sqlcommenter comment naming the calling code to every statement ``target`` sends.

    ``fields`` come from the :class:`Origin` ("function", "module", "file", "line");
    ``static`` adds fixed tags (e.g. ``{"application": "shop"}``). The comment is added in
    ``before_cursor_execute`` (``retval=True``), after SQLAlchemy compiled and cached the
    statement: the compile cache, keyed on the statement construct, still hits. The SQL
    text the server sees differs per call site, so a driver's prepared-statement cache
    (asyncpg, psycopg) holds one entry per call site; ``pg_stat_statements`` ignores
    comments when it groups.

    >>> from sqlalchemy import create_engine, text
    >>> from course_lib.measure import count_statements
    >>> engine = create_engine("sqlite://")
    >>> with tag_origin(engine, fields=(), static={"application": "shop"}):
    ...     with count_statements(engine) as log, engine.connect() as conn:
    ...         _ = conn.execute(text("SELECT 1")).all()
    >>> log.sql
    ["SELECT 1 /*application='shop'*/"]
    """
    return OriginTags(_engines(target), tuple(fields), static or {}, tuple(skip))
