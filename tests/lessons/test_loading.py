"""Tests for course_lib.lessons.loading: error names, and notebook 01's dealership exercise check."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, joinedload, selectinload

from course_lib.backends import Backend
from course_lib.exercises import check
from course_lib.lessons.loading import (
    RECENT_YEAR,
    error_name,
    error_names,
    reference_dealership_report,
)
from course_lib.measure import count_statements
from course_lib.models import Car, Dealership, User

# --------------------------------------------------------------------------- error names


def _run(db: Backend, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(make)


def test_error_name_of_a_plain_error_and_of_no_error() -> None:
    assert asyncio.run(error_name(lambda: 1 / 0)) == "ZeroDivisionError"
    assert asyncio.run(error_name(lambda: "fine")) == "no error"


def test_error_name_awaits_coroutines() -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def fine() -> int:
        return 1

    assert asyncio.run(error_name(boom)) == "KeyError"
    assert asyncio.run(error_name(fine)) == "no error"


def test_error_name_names_what_a_wrapped_error_wraps() -> None:
    def wrapped() -> None:
        raise StatementError("wrapped", "SELECT 1", {}, ValueError("inner"))

    assert asyncio.run(error_name(wrapped)) == "StatementError (wrapping ValueError)"


async def _loop_over_posts(db: Backend) -> list[int]:
    """The sync-style loop in an AsyncSession: a lazy load where no await can happen."""
    async with db.AsyncSession() as session:
        users = (await session.scalars(select(User).order_by(User.id).limit(3))).all()
        return [len(user.posts) for user in users]


def test_async_lazy_load_raises_missing_greenlet(any_db: Backend) -> None:
    """The curriculum's claim: under AsyncSession the loop raises; the name is deterministic."""
    name = _run(any_db, lambda: error_name(lambda: _loop_over_posts(any_db)))
    expected = {
        "sqlite": "StatementError (wrapping MissingGreenlet)",  # aiosqlite: raised mid-execute
        "postgresql": "MissingGreenlet",  # asyncpg: raised before the statement runs
    }
    assert name == expected[any_db.name]


def test_no_never_awaited_warning_escapes(sqlite_db: Backend) -> None:
    """aiosqlite leaves a never-awaited coroutine behind; error_name frees it in time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = _run(sqlite_db, lambda: error_name(lambda: _loop_over_posts(sqlite_db)))
        gc.collect()
    assert "MissingGreenlet" in name
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_error_names_tabulates_cases_by_backend(sqlite_db: Backend) -> None:
    async def joined_without_unique(db: Backend) -> list[User]:
        async with db.AsyncSession() as session:
            stmt = select(User).options(joinedload(User.posts)).limit(2)
            return (await session.scalars(stmt)).all()

    def sync_loop(db: Backend) -> list[int]:
        with db.Session() as session:
            return [len(u.posts) for u in session.scalars(select(User).limit(2))]

    cases = {"joined": joined_without_unique, "sync": sync_loop}
    table = _run(sqlite_db, lambda: error_names(cases, [sqlite_db]))
    assert table.index.name == "case"
    assert list(table.index) == ["joined", "sync"]
    assert list(table.columns) == ["sqlite"]
    assert table.loc["joined", "sqlite"] == "InvalidRequestError"
    assert table.loc["sync", "sqlite"] == "no error"


# ------------------------------------------------------------------ the reference answer


def test_reference_report_is_right_and_n_plus_one(any_db: Backend) -> None:
    with any_db.Session() as session:
        dealerships = session.scalars(select(Dealership).order_by(Dealership.id)).all()
        cars = session.execute(select(Car.id, Car.dealership_id, Car.year)).all()
    recent: dict[int, list[int]] = defaultdict(list)
    for car_id, dealership_id, year in cars:
        if year >= RECENT_YEAR:
            recent[dealership_id].append(car_id)
    expected = [(d.name, sorted(recent[d.id])) for d in dealerships]

    with count_statements(any_db) as log, any_db.Session() as session:
        report = reference_dealership_report(session)
    assert report == expected
    assert 0 < sum(len(ids) for _, ids in report) < len(cars)  # the year filter bites
    assert log.count == 1 + len(dealerships)


# ------------------------------------------------------------------ the exercise check


def stub(session: Session) -> list[tuple[str, list[int]]]:
    raise NotImplementedError("your turn")


def selectin_solution(session: Session) -> list[tuple[str, list[int]]]:
    """The notebook's hidden solution: selectinload with criteria, 2 statements."""
    recent_cars = Dealership.cars.and_(Car.year >= RECENT_YEAR)
    stmt = select(Dealership).options(selectinload(recent_cars)).order_by(Dealership.id)
    return [(d.name, sorted(car.id for car in d.cars)) for d in session.scalars(stmt)]


def join_solution(session: Session) -> list[tuple[str, list[int]]]:
    """The one-statement alternative: an outer join on the same criteria, grouped in Python."""
    stmt = (
        select(Dealership.id, Dealership.name, Car.id)
        .outerjoin(Dealership.cars.and_(Car.year >= RECENT_YEAR))
        .order_by(Dealership.id, Car.id)
    )
    report: dict[int, tuple[str, list[int]]] = {}
    for dealership_id, name, car_id in session.execute(stmt):
        _, ids = report.setdefault(dealership_id, (name, []))
        if car_id is not None:
            ids.append(car_id)
    return list(report.values())


def unfiltered(session: Session) -> list[tuple[str, list[int]]]:
    """Two statements, but it forgets the year: a wrong result."""
    stmt = select(Dealership).options(selectinload(Dealership.cars)).order_by(Dealership.id)
    return [(d.name, sorted(car.id for car in d.cars)) for d in session.scalars(stmt)]


def test_check_rejects_the_n_plus_one(any_db: Backend) -> None:
    verdict = check(
        reference_dealership_report, any_db, reference=reference_dealership_report, budget=2
    )
    assert verdict.status == "over budget"
    assert not verdict.passed
    assert verdict.statements is not None and verdict.statements > 2


@pytest.mark.parametrize("solution", [selectin_solution, join_solution])
def test_check_accepts_the_solutions(any_db: Backend, solution) -> None:
    verdict = check(solution, any_db, reference=reference_dealership_report, budget=2)
    assert verdict.passed, verdict
    assert verdict.statements == (2 if solution is selectin_solution else 1)


def test_check_reports_an_untouched_stub_and_a_wrong_result(sqlite_db: Backend) -> None:
    untouched = check(stub, sqlite_db, reference=reference_dealership_report, budget=2)
    assert untouched.status == "not attempted"
    wrong = check(unfiltered, sqlite_db, reference=reference_dealership_report, budget=2)
    assert wrong.status == "wrong result"
