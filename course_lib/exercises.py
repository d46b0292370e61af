"""Exercise checks: judge a learner's function by its result and a statement budget.

>>> from course_lib.backends import sqlite
>>> def stub(session):
...     raise NotImplementedError("your turn")
>>> check(stub, sqlite("course_tiny"), expected=[], budget=1).status
'not attempted'

An untouched stub gives a friendly "not attempted yet" (so nbval stays green); a wrong
result or a blown budget gives a one-line verdict; the solution cell asserts ``.passed``.
The learner's function receives a fresh ``Session`` (``acheck``: an ``AsyncSession``), so
nothing is served from an identity map left over by earlier cells.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Mapper

from .backends import Backend
from .measure import StatementLog, count_statements, listening


@dataclass
class CheckResult:
    """The verdict on one attempt; its repr is the one line a learner reads."""

    # "passed", "not attempted", "wrong result", "over budget", "loaded entities",
    # "too many objects", "one huge statement"
    status: str
    message: str
    statements: int | None = None
    budget: int | None = None
    entities: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True only when result, budget and entity rules all hold."""
        return self.status == "passed"

    def __repr__(self) -> str:
        return self.message


@contextmanager
def objects_built() -> Iterator[Counter[str]]:
    """Count ORM objects built from rows (the ``load`` event of every mapper), by class name.

    >>> with objects_built() as built:
    ...     pass
    >>> sum(built.values())
    0
    """
    loaded: Counter[str] = Counter()

    def on_load(target: Any, _context: Any) -> None:
        loaded[type(target).__name__] += 1

    # every mapper, not only the course's Base: a learner's own mapping counts too
    event.listen(Mapper, "load", on_load)
    try:
        yield loaded
    finally:
        event.remove(Mapper, "load", on_load)


# ------------------------------------------------------------------ rows, at the driver


@dataclass
class RowTally:
    """Rows the driver handed back while :func:`rows_fetched` listened, and the SQL sent."""

    rows: int = 0
    sql: list[str] = field(default_factory=list)


class _CountingCursor:
    """A DBAPI cursor that counts the rows its ``fetch*`` calls return (all else forwarded)."""

    def __init__(self, cursor: Any, tally: RowTally):
        self._cursor, self._tally = cursor, tally

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        self._tally.rows += row is not None
        return row

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        rows = self._cursor.fetchmany(*args, **kwargs)
        self._tally.rows += len(rows)
        return rows

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        self._tally.rows += len(rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        for row in self._cursor:
            self._tally.rows += 1
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def rows_fetched(target: Backend | Engine) -> Iterator[RowTally]:
    """Count the rows every statement ``target`` runs returns, whatever API sent it.

    It hooks the driver level (``after_cursor_execute``): the execution's DBAPI cursor is
    wrapped before SQLAlchemy builds the result from it, so ORM ``execute``/``scalars``,
    lazy loads, Core ``connection.execute`` and ``exec_driver_sql`` are all counted, by the
    rows actually fetched from the driver (a :class:`Backend`: both its engines, sync and async).
    """
    tally = RowTally()

    def wrap(_conn: Any, cursor: Any, sql: str, _params: Any, context: Any, _many: bool) -> None:
        tally.sql.append(sql)
        if context is None:
            return
        current, inner = context.cursor, context.cursor
        while inner is not cursor and inner is not None:  # wrappers around the driver's cursor
            if isinstance(inner, _CountingCursor) and inner._tally is tally:
                return  # one context, many batches (insertmanyvalues): counted once
            # another listener's wrapper (a slow-query log, another tally) counts on top
            inner = getattr(inner, "_cursor", getattr(inner, "cursor", None))
        context.cursor = _CountingCursor(current, tally)

    with listening(target, [("after_cursor_execute", wrap)]):
        yield tally


class _Attempt:
    """Shared judging for :func:`check` and :func:`acheck`."""

    def __init__(
        self,
        expected: Any,
        budget: int,
        forbid: tuple[type, ...],
        normalize: Callable[[Any], Any] | None,
        max_objects: int | None = None,
        max_parameters: int | None = None,
        max_rows: int | None = None,
    ):
        self.expected, self.budget, self.forbid = expected, budget, forbid
        self.normalize = normalize or (lambda value: value)
        self.max_objects, self.max_parameters = max_objects, max_parameters
        self.max_rows = max_rows

    def not_attempted(self) -> CheckResult:
        return CheckResult(
            "not attempted",
            "⏳ Not attempted yet: replace the "
            "`raise NotImplementedError` with your code, then run this cell again.",
            budget=self.budget,
        )

    def judge(
        self, result: Any, log: StatementLog, loaded: Counter[str], fetched: RowTally
    ) -> CheckResult:
        count = log.count
        common = {"statements": count, "budget": self.budget, "entities": dict(loaded)}
        if self.normalize(result) != self.normalize(self.expected):
            return CheckResult(
                "wrong result",
                "✗ Wrong result: it differs from the reference "
                f"answer ({_describe(result)} vs {_describe(self.expected)}).",
                **common,
            )
        if count > self.budget:
            return CheckResult(
                "over budget",
                f"✗ Right result, but {count} statements: the budget is {self.budget}. "
                + (
                    "Look for a loop that sends one statement per row."
                    if count > self.budget + 1
                    else "Combine them into one statement (a join or a subquery)."
                ),
                **common,
            )
        banned = {
            name: n for name, n in loaded.items() if name in {cls.__name__ for cls in self.forbid}
        }
        if banned:
            names = ", ".join(f"{n} {name}" for name, n in banned.items())
            return CheckResult(
                "loaded entities",
                f"✗ Right result and {count} statement(s), "
                f"but it loaded full ORM objects ({names}): select columns.",
                **common,
            )
        built = sum(loaded.values())
        if self.max_objects is not None and built > self.max_objects:
            return CheckResult(
                "too many objects",
                f"✗ Right result and {count} statement(s), but it built {built} ORM objects "
                f"(at most {self.max_objects}): filter and limit in SQL, not in Python.",
                **common,
            )
        if self.max_rows is not None and fetched.rows > self.max_rows:
            return CheckResult(
                "too many rows",
                f"✗ Right result and {count} statement(s), but {fetched.rows:,} rows came back "
                f"from the database (at most {self.max_rows:,}): filter, sort and limit in SQL, "
                "not in Python.",
                **common,
            )
        widest = max((s.parameters for s in log.statements if s.style == "execute"), default=0)
        if self.max_parameters is not None and widest > self.max_parameters:
            return CheckResult(
                "one huge statement",
                f"✗ Right result, but one statement carried {widest} bind values (at most "
                f"{self.max_parameters}): that is a multi-VALUES statement built from the rows. "
                "Pass the rows as execute parameters (executemany) instead.",
                **common,
            )
        return CheckResult(
            "passed",
            f"✓ Passed: right result in {count} statement(s) (budget {self.budget}).",
            **common,
        )


@contextmanager
def _watched(backend: Backend) -> Iterator[tuple[StatementLog, Counter[str], RowTally]]:
    """Everything a check judges, recorded while the learner's function runs."""
    with (
        count_statements(backend) as log,
        objects_built() as loaded,
        rows_fetched(backend) as fetched,
    ):
        yield log, loaded, fetched


def _describe(value: Any) -> str:
    if isinstance(value, list | tuple | set | dict):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


_MISSING: Any = object()


def _expected(backend: Backend, expected: Any, reference: Callable[[Any], Any] | None) -> Any:
    """The reference answer: given, or computed by ``reference(session)`` (not counted)."""
    if (expected is _MISSING) == (reference is None):
        raise TypeError("pass exactly one of expected= or reference=")
    if reference is None:
        return expected
    with backend.Session() as session:
        return reference(session)


def check(
    solution: Callable[[Any], Any],
    backend: Backend,
    *,
    budget: int,
    expected: Any = _MISSING,
    reference: Callable[[Any], Any] | None = None,
    forbid_entities: tuple[type, ...] = (),
    normalize: Callable[[Any], Any] | None = None,
    max_objects: int | None = None,
    max_parameters: int | None = None,
    max_rows: int | None = None,
) -> CheckResult:
    """Run ``solution(session)`` on a fresh sync Session and judge it.

    ``expected`` is the reference result, or ``reference(session)`` computes it (a sync
    function, run on its own session and not counted); ``budget`` the most statements allowed;
    ``forbid_entities`` ORM classes that must not be loaded; ``normalize`` maps results
    before comparing (e.g. ``sorted``); ``max_objects`` the most ORM objects it may build
    (rejects "load everything, filter in Python"); ``max_parameters`` the most bind values one
    plainly executed statement may carry (rejects ``insert(...).values(rows)``; executemany
    and insertmanyvalues batches are exempt, as the driver or SQLAlchemy pages them);
    ``max_rows`` the most rows the database may hand back in all, counted at the driver
    (rejects selecting columns of everything, then sorting and slicing in Python).
    """
    if inspect.iscoroutinefunction(solution):
        raise TypeError("solution is async: use `await acheck(...)`")
    attempt = _Attempt(
        _expected(backend, expected, reference),
        budget,
        forbid_entities,
        normalize,
        max_objects,
        max_parameters,
        max_rows,
    )
    with backend.Session() as session, _watched(backend) as (log, loaded, fetched):
        try:
            result = solution(session)
        except NotImplementedError:
            return attempt.not_attempted()
    return attempt.judge(result, log, loaded, fetched)


async def acheck(
    solution: Callable[[Any], Any],
    backend: Backend,
    *,
    budget: int,
    expected: Any = _MISSING,
    reference: Callable[[Any], Any] | None = None,
    forbid_entities: tuple[type, ...] = (),
    normalize: Callable[[Any], Any] | None = None,
    max_objects: int | None = None,
    max_parameters: int | None = None,
    max_rows: int | None = None,
) -> CheckResult:
    """Like :func:`check`, giving ``solution`` a fresh AsyncSession and awaiting it."""
    attempt = _Attempt(
        _expected(backend, expected, reference),
        budget,
        forbid_entities,
        normalize,
        max_objects,
        max_parameters,
        max_rows,
    )
    async with backend.AsyncSession() as session:
        with _watched(backend) as (log, loaded, fetched):
            try:
                result = solution(session)
                if inspect.isawaitable(result):
                    result = await result
            except NotImplementedError:
                return attempt.not_attempted()
    return attempt.judge(result, log, loaded, fetched)
