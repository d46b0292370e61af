"""Loading related objects (notebook 01): name the errors lazy loads raise; the exercise reference.

A lazy load that cannot happen raises, and which error you get depends on the driver.
:func:`error_names` runs each case on each backend and tabulates the error's name:

>>> import asyncio
>>> from course_lib.data import dataset
>>> db = dataset("sqlite", "tiny")
>>> table = asyncio.run(error_names({"divide by zero": lambda db: 1 / 0}, [db]))
>>> table.loc["divide by zero", "sqlite"]
'ZeroDivisionError'

The exercise reference :func:`reference_dealership_report` is written the N+1 way on
purpose: it is obviously right, and the check measures how many statements it sends.
"""

from __future__ import annotations

import inspect
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, with_parent

from ..backends import Backend
from ..models import Car, Dealership

__all__ = ["RECENT_YEAR", "error_name", "error_names", "reference_dealership_report"]

RECENT_YEAR = 2024
"""The dealership report lists cars of this model year or later."""


def _describe(error: BaseException) -> str:
    """``MissingGreenlet``, or ``StatementError (wrapping MissingGreenlet)`` for a wrapped one."""
    name = type(error).__name__
    orig = getattr(error, "orig", None)
    if isinstance(orig, BaseException):
        return f"{name} (wrapping {type(orig).__name__})"
    return name


async def error_name(action: Callable[[], Any]) -> str:
    """Call ``action()`` (awaiting it if it is async) and name the error it raises.

    Returns ``"no error"`` when nothing is raised. A driver error that SQLAlchemy wrapped
    is named with what it wraps. When an async driver's coroutine was created but never
    awaited (aiosqlite's adapter does that when a lazy load raises MissingGreenlet), Python
    warns about it when the coroutine is garbage-collected, possibly cells later; the
    traceback frames holding it are cleared here, so that warning is not printed into an
    unrelated cell.

    >>> import asyncio
    >>> asyncio.run(error_name(lambda: {}["missing"]))
    'KeyError'
    >>> asyncio.run(error_name(lambda: "fine"))
    'no error'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
        )
        try:
            result = action()
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            name = _describe(error)
            _release(error)
        else:
            name = "no error"
    return name


def _release(error: BaseException | None) -> None:
    """Clear the frames of an error and of every error it wraps, freeing what they hold now."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        orig = getattr(current, "orig", None)
        pending += [current.__cause__, current.__context__]
        if isinstance(orig, BaseException):
            pending.append(orig)


async def error_names(
    cases: dict[str, Callable[[Backend], Any]], backends: Backend | Sequence[Backend]
) -> pd.DataFrame:
    """One row per case, one column per backend: the name of the error ``case(backend)`` raises.

    Each case is a function of the backend, sync or ``async def``. Deterministic, so a
    notebook can print it in a checked cell.
    """
    dbs = [backends] if isinstance(backends, Backend) else list(backends)
    rows = {}
    for case, fn in cases.items():
        rows[case] = {db.name: await error_name(lambda fn=fn, db=db: fn(db)) for db in dbs}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "case"
    return frame


def reference_dealership_report(session: Session) -> list[tuple[str, list[int]]]:
    """Notebook 01's exercise, the N+1 way: (name, sorted ids of its recent cars) per dealership.

    Dealerships come in id order, each with the ids of its cars of model year
    :data:`RECENT_YEAR` or later (an empty list when it has none). One query for the
    dealerships, then one more per dealership: 1 + N statements.

    >>> from course_lib.data import dataset
    >>> with dataset("sqlite", "tiny").Session() as session:
    ...     report = reference_dealership_report(session)
    >>> report[0]
    ('Cork Motors 1', [9, 13])
    """
    report = []
    for dealership in session.scalars(select(Dealership).order_by(Dealership.id)):
        recent = select(Car.id).where(
            with_parent(dealership, Dealership.cars), Car.year >= RECENT_YEAR
        )
        report.append((dealership.name, list(session.scalars(recent.order_by(Car.id)))))
    return report
