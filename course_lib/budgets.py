"""Statement budgets and an N+1 detector for your tests: the take-home tools of notebook 12.

Both listen to the engine's ``before_cursor_execute`` event, so they see every statement
the driver receives: ORM queries, lazy loads, flushes, Core and ``text()`` alike, from any
thread. An ``AsyncEngine`` is watched through its ``.sync_engine`` (the events fire there),
so the same ``with`` block works around ``await`` calls.

A budget fails with a readable report (an ``AssertionError``, so pytest shows it as a
failed ``assert``): each statement shape, how many times it was sent, and the line of
your code that sent it first.

>>> from sqlalchemy import text
>>> from course_lib.backends import sqlite
>>> db = sqlite("course_tiny")
>>> with statement_budget(db.sync_engine, max_statements=1), db.Session() as session:
...     for n in range(3):  # doctest: +ELLIPSIS
...         _ = session.scalar(text("SELECT :n"), {"n": n})
Traceback (most recent call last):
course_lib.budgets.StatementBudgetExceeded: 3 statements, over the budget of 1:
  3 × SELECT ?   first sent from ...

The N+1 detector groups statements by **unit of work** and by shape. By default the unit
is the ``with`` block itself (``per="block"``): a loop that commits after each item, or
opens one ``Session`` per id, is still one N+1. ``per="transaction"`` makes each
transaction on each connection (a ``Session``'s BEGIN to its COMMIT or ROLLBACK) a unit of
its own, which tells concurrent requests apart but misses those two loops. A shape sent
``threshold`` times or more in one unit (queryspy's meaning of ``threshold``) is reported
with its count and an example. Statements of one shape that differ only in the keys of an
``IN (...)`` list of several values are a batch (``selectinload``'s chunks), not an N+1;
when a value outside the IN list changes from one statement to the next, the loop is over
that value, and it is reported.

>>> with find_n_plus_one(db.sync_engine) as found, db.Session() as session:
...     for n in range(4):
...         _ = session.scalar(text("SELECT :n"), {"n": n})
>>> found.findings[0].count
4

``no_n_plus_one(target)`` raises :class:`NPlusOneDetected` instead. The pytest fixtures of
:mod:`course_lib.pytest_budgets` hand both to a test.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .backends import Backend
from .measure import listening, sync_engines
from .query_log import normalize_sql

__all__ = [
    "DEFAULT_THRESHOLD",
    "BudgetError",
    "NPlusOne",
    "NPlusOneDetected",
    "SentShape",
    "StatementBudgetExceeded",
    "StatementWatch",
    "Unit",
    "caller",
    "find_n_plus_one",
    "no_n_plus_one",
    "statement_budget",
    "statement_shape",
    "watch_statements",
]

Target = Backend | Engine | AsyncEngine

#: What one unit of work is: the whole ``with`` block, or each transaction on a connection.
Unit = Literal["block", "transaction"]

#: An N+1 is the same shape sent at least this many times in one unit of work.
DEFAULT_THRESHOLD = 3
#: Characters of SQL a report line shows.
WIDTH = 100


class BudgetError(AssertionError):
    """A statement budget or an N+1 check failed (pytest renders it as a failed assert)."""


class StatementBudgetExceeded(BudgetError):
    """More statements were sent than the budget allows."""


class NPlusOneDetected(BudgetError):
    """The same statement shape was repeated in one unit of work, ``threshold`` times or more."""


# ------------------------------------------------------------------------ shapes

# the bound values a driver sees in an IN list: placeholders of every paramstyle (with a
# cast the dialect may add), numbers and strings
_VALUE = (
    r"(?:(?:\?|\$\d+|%\(\w+\)s|%s|(?<![:\w]):\w+)(?:::\w+(?:\[\])?)?"
    r"|[-+]?\d+(?:\.\d+)?|'(?:[^']|'')*')"
)
_RAW_IN_LIST = re.compile(rf"\bIN\s*\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\)", re.IGNORECASE)
_ONE_VALUE = re.compile(_VALUE)
# strings and comments first, so that a "?" or ":x" inside them is not taken for a parameter
_PARAMETER = re.compile(
    r"'(?:[^']|'')*'|/\*.*?\*/|--[^\n]*"
    r"|(?P<qmark>\?)|\$(?P<numeric>\d+)|%\((?P<pyformat>\w+)\)s|(?P<format>%s)"
    r"|(?<![:\w]):(?P<named>\w+)",
    re.DOTALL,
)


@functools.lru_cache(maxsize=4096)
def _analyse(sql: str) -> tuple[str, int]:
    """(shape, the widest IN list of values): cached per SQL string (it repeats)."""
    widest = max(
        (len(_ONE_VALUE.findall(m.group(0)[2:])) for m in _RAW_IN_LIST.finditer(sql)), default=0
    )
    return normalize_sql(sql), widest


@functools.lru_cache(maxsize=1024)
def _outside_in_lists(sql: str) -> tuple[str, tuple[int | str, ...]]:
    """The SQL with its IN lists emptied, and the parameters bound outside them.

    A parameter is named by its position (``?``, ``%s``, ``$1``) or by its name
    (``%(id_1)s``, ``:id``).
    """
    spans = [m.span() for m in _RAW_IN_LIST.finditer(sql)]
    references: list[int | str] = []
    position = 0
    for match in _PARAMETER.finditer(sql):
        kind = match.lastgroup
        if kind is None:  # a string or a comment
            continue
        inside = any(start <= match.start() < end for start, end in spans)
        if kind in ("qmark", "format"):
            reference: int | str = position
            position += 1
        elif kind == "numeric":
            reference = int(match.group(kind)) - 1
        else:
            reference = match.group(kind)
        if not inside:
            references.append(reference)
    return _RAW_IN_LIST.sub("IN ()", sql), tuple(references)


def _signature(sql: str, parameters: Any) -> Any:
    """What a statement binds outside its IN lists: equal for the chunks of one batch."""
    outside, references = _outside_in_lists(sql)
    try:
        return outside, tuple(parameters[reference] for reference in references)
    except (IndexError, KeyError, TypeError):  # executemany, or parameters of another shape
        return outside, parameters


def statement_shape(sql: str) -> str:
    """The SQL with every value replaced by ``?``: statements that differ only in values match.

    The course's one normaliser, :func:`course_lib.query_log.normalize_sql` (notebook 07's
    top-statements table uses it too), cached per SQL string: placeholders of every driver
    (``?``, ``$1::INTEGER``, ``%(id_1)s``), literal numbers and strings become ``?``; an
    ``IN`` list becomes ``IN (...)`` whatever its length, and so do the rows of a multi-row
    ``VALUES``; comments are dropped.

    >>> statement_shape("SELECT * FROM users WHERE id = $1::INTEGER")
    'SELECT * FROM users WHERE id = ?'
    >>> statement_shape("SELECT * FROM posts WHERE author_id IN (%(k_1)s, %(k_2)s) AND x = 'a'")
    'SELECT * FROM posts WHERE author_id IN (...) AND x = ?'
    """
    return _analyse(sql)[0]


# ------------------------------------------------------------- where it was sent from


def _library_roots() -> tuple[str, ...]:
    import sqlalchemy

    roots = {str(Path(sqlalchemy.__file__).resolve().parent), str(Path(__file__).resolve())}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if key in paths:
            roots.add(str(Path(paths[key]).resolve()))
    return tuple(sorted(roots))


_ROOTS = _library_roots()
_IS_LIBRARY: dict[CodeType, bool] = {}
_SHOWN: dict[CodeType, str] = {}
_CELL = re.compile(r"ipykernel_\d+[/\\]\d+\.py$")

#: Where a statement was sent from: the code object of your function and the line.
Origin = tuple[CodeType, int]
_NOT_YET = object()


def _is_library(code: CodeType) -> bool:
    known = _IS_LIBRARY.get(code)
    if known is None:
        name = code.co_filename
        if name.startswith("<"):  # <stdin>, <doctest ...>: typed by you; <frozen ...>: not
            known = name.startswith("<frozen")
        else:
            known = os.path.realpath(name).startswith(_ROOTS)
        _IS_LIBRARY[code] = known
    return known


def _file_shown(code: CodeType) -> str:
    """The file of ``code`` as a report shows it: relative to the working folder when under
    it, else its name; ``<cell>`` for a notebook cell. Resolved once per code object."""
    shown = _SHOWN.get(code)
    if shown is None:
        name = code.co_filename
        if _CELL.search(name):  # a notebook cell (ipykernel names it after a hash of its code)
            shown = "<cell>"
        elif name.startswith("<"):
            shown = name
        else:
            path = Path(name)
            try:
                shown = str(path.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                shown = path.name
        _SHOWN[code] = shown
    return shown


def _describe(origin: Origin | None, lines: bool = True) -> str:
    """``file.py:12 in function()`` (``file.py in function()`` without ``lines``)."""
    if origin is None:
        return "(no caller outside libraries)"
    code, line = origin
    where = f"{_file_shown(code)}:{line}" if lines else _file_shown(code)
    return f"{where} in {code.co_name}()"


def _first_app_frame(frame: FrameType | None, depth: int = 60) -> FrameType | None:
    while frame is not None and depth > 0:
        if not _is_library(frame.f_code):
            return frame
        frame, depth = frame.f_back, depth - 1
    return None


def _origin(skip: int = 1) -> Origin | None:
    """The innermost frame of your code on the stack, as (code, line); cheap to take."""
    found = _first_app_frame(sys._getframe(skip + 1))
    if found is None and "greenlet" in sys.modules:
        import greenlet

        current = greenlet.getcurrent().parent
        while found is None and current is not None:
            found = _first_app_frame(current.gr_frame)
            current = current.parent
    return None if found is None else (found.f_code, found.f_lineno)


def caller() -> str:
    """The innermost line of *your* code on the stack (not SQLAlchemy, stdlib or packages).

    Async code runs the ORM inside a greenlet whose own stack holds only SQLAlchemy's
    frames; the caller is on the greenlet that spawned it, so those are searched next
    (the technique queryspy uses).
    """
    return _describe(_origin())


# --------------------------------------------------------------------- the watcher


@dataclass
class SentShape:
    """One statement shape sent in one unit of work: how often, an example, and from where."""

    shape: str
    unit: int
    count: int = 0
    #: the first statement of this shape as the driver received it, and its parameters
    example: str = ""
    parameters: Any = None
    #: the first frame of your code that sent it (see :attr:`where`)
    origin: Origin | None = None
    #: the widest IN list of values its statements carried (0: none)
    batch: int = 0
    #: what the first statement bound outside its IN lists, and whether a later one differed
    signature: Any = None
    varied: bool = False

    @property
    def where(self) -> str:
        """``file.py:12 in function()``: the first line of your code that sent it."""
        return _describe(self.origin)

    @property
    def is_batch(self) -> bool:
        """IN lists of several values, and nothing else changing: one batch in chunks."""
        return self.batch > 1 and not self.varied


@dataclass(frozen=True)
class NPlusOne:
    """A shape repeated in one unit of work, ``threshold`` times or more."""

    shape: str
    count: int
    example: str
    parameters: Any
    where: str

    def describe(self, width: int = WIDTH) -> str:
        """Three lines: the count and the shape, an example with its parameters, the caller."""
        return (
            f"{self.count} × {_cut(self.shape, width)}\n"
            f"    example: {_cut(_one_line(self.example), width)}"
            f"   parameters: {self.parameters!r}\n"
            f"    first sent from {self.where}"
        )


@dataclass
class StatementWatch:
    """Statements seen while a block ran, by shape and unit of work (:func:`watch_statements`)."""

    threshold: int = DEFAULT_THRESHOLD
    per: Unit = "block"
    #: whether reports give the line of each caller, or only its file and function
    lines: bool = True
    count: int = 0
    sent: dict[tuple[int, str], SentShape] = field(default_factory=dict)

    def shapes(self) -> list[SentShape]:
        """Every shape over all units, in the order first sent, with its total count."""
        merged: dict[str, SentShape] = {}
        for item in self.sent.values():
            total = merged.get(item.shape)
            if total is None:
                merged[item.shape] = SentShape(
                    item.shape, 0, item.count, item.example, item.parameters, item.origin
                )
            else:
                total.count += item.count
        return list(merged.values())

    @property
    def findings(self) -> list[NPlusOne]:
        """The N+1s: a shape sent ``threshold`` times or more in one unit, worst first."""
        found = [
            NPlusOne(s.shape, s.count, s.example, s.parameters, _describe(s.origin, self.lines))
            for s in self.sent.values()
            if s.count >= self.threshold and not s.is_batch
        ]
        return sorted(found, key=lambda f: -f.count)

    def report(self, limit: int = 8, width: int = WIDTH) -> str:
        """One line per shape: how many times, the shape, where it was first sent."""
        shapes = self.shapes()
        lines = [
            f"  {s.count} × {_cut(s.shape, width)}   "
            f"first sent from {_describe(s.origin, self.lines)}"
            for s in shapes[:limit]
        ]
        if len(shapes) > limit:
            lines.append(f"  … and {len(shapes) - limit} more shapes")
        return "\n".join(lines)

    def n_plus_one_report(self, width: int = WIDTH) -> str:
        """The findings, each described on three lines (empty when there are none)."""
        found = self.findings
        if not found:
            return ""
        unit = "the block" if self.per == "block" else "one transaction"
        head = (
            f"{len(found)} N+1 pattern(s): the same statement {self.threshold} or more "
            f"times in {unit}:"
        )
        return "\n".join([head, *(f"  {f.describe(width)}" for f in found)])


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters; a long SELECT list shows its first column."""
    head, sep, tail = text.partition(" FROM ")
    if sep and head.upper().startswith("SELECT ") and len(head) > 40 and "," in head:
        text = f"{head.split(',', 1)[0]}, … FROM {tail}"
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_line(sql: str) -> str:
    return " ".join(sql.split())


def _engines(target: Target) -> list[Engine]:
    """The sync engines to listen on (``cl.count_statements``'s choice, checked)."""
    if not isinstance(target, Backend | Engine | AsyncEngine):
        raise TypeError(
            f"watch an Engine, an AsyncEngine or a Backend, not {type(target).__name__}"
        )
    return sync_engines(target)


@contextmanager
def watch_statements(
    target: Target,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    per: Unit = "block",
    lines: bool = True,
) -> Iterator[StatementWatch]:
    """Record the statements ``target`` sends while the block runs, by unit of work and shape.

    ``per="block"``: the whole block is one unit of work. ``per="transaction"``: a unit
    starts at a connection's BEGIN (or at its first statement inside the block) and ends at
    its COMMIT or ROLLBACK. Cheap per statement: a cached shape lookup and a counter; the
    caller's frame is taken once per shape (the first line of your code that sent it in the
    block), and formatted only in a report.
    ``lines=False`` leaves line numbers out of reports (for output compared from one edit
    of the code to the next, as a notebook's).
    """
    if per not in ("block", "transaction"):
        raise ValueError(f'per is "block" or "transaction", not {per!r}')
    engines = _engines(target)
    watch = StatementWatch(threshold=threshold, per=per, lines=lines)
    units: dict[int, int] = {}
    origins: dict[str, Any] = {}
    numbers = itertools.count(1)
    lock = threading.Lock()
    sent = watch.sent
    by_block = per == "block"

    def before(conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        shape, batch = _analyse(sql)
        with lock:
            if by_block:
                unit = 0
            else:
                unit = units.get(id(conn))
                if unit is None:
                    unit = units[id(conn)] = next(numbers)
            watch.count += 1
            item = sent.get((unit, shape))
            if item is None:
                shown = "[hidden]" if conn.engine.hide_parameters else params
                origin = origins.get(shape, _NOT_YET)
                if origin is _NOT_YET:  # the stack is walked once per shape, not per unit
                    origin = origins[shape] = _origin()
                item = sent[unit, shape] = SentShape(shape, unit, 0, sql, shown, origin)
                if batch:
                    item.signature = _signature(sql, params)
            elif batch and not item.varied:
                item.varied = _signature(sql, params) != item.signature
            item.count += 1
            if batch > item.batch:
                item.batch = batch

    def begin(conn: Any) -> None:
        with lock:
            units[id(conn)] = next(numbers)

    def end(conn: Any) -> None:
        with lock:
            units.pop(id(conn), None)

    hooks: list[tuple[str, Any]] = [("before_cursor_execute", before)]
    if not by_block:
        hooks += [("begin", begin), ("commit", end), ("rollback", end)]
    with listening(engines, hooks):
        yield watch


@contextmanager
def statement_budget(
    target: Target, max_statements: int = 3, *, lines: bool = True
) -> Iterator[StatementWatch]:
    """Fail when the block sends more than ``max_statements`` statements to ``target``.

    Django's ``assertNumQueries(n)`` asserts an exact count; a budget is a ceiling, so a
    later improvement does not break the test. The failure lists every statement shape,
    its count and the line that sent it first (``lines=False``: its file and function
    only). An error raised inside the block wins: it is never hidden behind a budget report.

    >>> from sqlalchemy import text
    >>> from course_lib.backends import sqlite
    >>> db = sqlite("course_tiny")
    >>> with statement_budget(db.engine, max_statements=2) as sent:  # an AsyncEngine
    ...     async def one():
    ...         async with db.AsyncSession() as session:
    ...             return await session.scalar(text("SELECT 1"))
    ...     _ = db.run(one)
    >>> sent.count
    1
    """
    with watch_statements(target, lines=lines) as watch:
        yield watch
    if watch.count > max_statements:
        raise StatementBudgetExceeded(
            f"{watch.count} statements, over the budget of {max_statements}:\n" + watch.report()
        )


@contextmanager
def find_n_plus_one(
    target: Target,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    per: Unit = "block",
    lines: bool = True,
) -> Iterator[StatementWatch]:
    """Record the block's statements; ``.findings`` lists its N+1s afterwards (never raises).

    See :func:`watch_statements` for ``per`` and ``lines``.
    """
    with watch_statements(target, threshold=threshold, per=per, lines=lines) as watch:
        yield watch


@contextmanager
def no_n_plus_one(
    target: Target,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    per: Unit = "block",
    lines: bool = True,
) -> Iterator[StatementWatch]:
    """Fail when one statement shape is sent ``threshold`` times or more in one unit of work.

    >>> from sqlalchemy import text
    >>> from course_lib.backends import sqlite
    >>> db = sqlite("course_tiny")
    >>> with no_n_plus_one(db.sync_engine), db.Session() as session:
    ...     _ = session.scalars(text("SELECT id FROM users WHERE id IN (1, 2, 3)")).all()
    """
    with watch_statements(target, threshold=threshold, per=per, lines=lines) as watch:
        yield watch
    if watch.findings:
        raise NPlusOneDetected(watch.n_plus_one_report())
