"""Tests for course_lib.exercises: each verdict of check() and acheck(), on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from course_lib.backends import Backend
from course_lib.exercises import CheckResult, acheck, check
from course_lib.models import Car, Dealership


def _cars_per_dealership(session: Session) -> dict[str, int]:
    """The reference: one aggregate query."""
    query = select(Dealership.name, func.count(Car.id)).join(Car).group_by(Dealership.name)
    return dict(session.execute(query).all())


@pytest.fixture
def expected(any_db: Backend) -> dict[str, int]:
    """The reference answer on this backend, computed with a plain query."""
    with any_db.Session() as session:
        answer = _cars_per_dealership(session)
    assert len(answer) == 3
    assert sum(answer.values()) == 60
    return answer


def stub(session: Session) -> dict[str, int]:
    """The untouched exercise cell."""
    raise NotImplementedError("your turn")


def wrong(session: Session) -> dict[str, int]:
    """Counts one car too few everywhere."""
    return {name: n - 1 for name, n in _cars_per_dealership(session).items()}


def lazy(session: Session) -> dict[str, int]:
    """Right answer, N+1 statements: touches .cars of each dealership."""
    return {d.name: len(d.cars) for d in session.scalars(select(Dealership))}


def eager(session: Session) -> dict[str, int]:
    """Right answer in 2 statements, loading Car entities."""
    query = select(Dealership).options(selectinload(Dealership.cars))
    return {d.name: len(d.cars) for d in session.scalars(query)}


def columns(session: Session) -> dict[str, int]:
    """Right answer in 1 statement, loading no entities."""
    return _cars_per_dealership(session)


def test_not_attempted(any_db: Backend, expected: dict[str, int]) -> None:
    """An untouched stub is 'not attempted', not a failure with a traceback."""
    result = check(stub, any_db, expected=expected, budget=2)
    assert result.status == "not attempted"
    assert result.passed is False
    assert "Not attempted yet" in result.message
    assert result.budget == 2
    assert repr(result) == result.message


def test_wrong_result(any_db: Backend, expected: dict[str, int]) -> None:
    """A different answer is 'wrong result', whatever its statement count."""
    result = check(wrong, any_db, expected=expected, budget=2)
    assert result.status == "wrong result"
    assert result.passed is False
    assert result.message == (
        "✗ Wrong result: it differs from the reference answer (dict of 3 vs dict of 3)."
    )
    assert result.statements == 1


def test_over_budget(any_db: Backend, expected: dict[str, int]) -> None:
    """The right answer through an N+1 loop blows a budget of 2: 1 + 3 statements."""
    result = check(lazy, any_db, expected=expected, budget=2)
    assert result.status == "over budget"
    assert result.passed is False
    assert result.statements == 4
    assert result.message == (
        "✗ Right result, but 4 statements: the budget is 2. "
        "Look for a loop that sends one statement per row."
    )


def test_passed(any_db: Backend, expected: dict[str, int]) -> None:
    """The selectinload solution passes in 2 statements."""
    result = check(eager, any_db, expected=expected, budget=2)
    assert result.status == "passed"
    assert result.passed is True
    assert result.statements == 2
    assert result.message == "✓ Passed: right result in 2 statement(s) (budget 2)."
    assert result.entities == {"Dealership": 3, "Car": 60}


def test_forbid_entities_rejects_entity_loading(any_db: Backend, expected: dict[str, int]) -> None:
    """With forbid_entities=(Car,), loading Car objects is refused even in budget."""
    result = check(eager, any_db, expected=expected, budget=2, forbid_entities=(Car,))
    assert result.status == "loaded entities"
    assert result.passed is False
    assert "60 Car" in result.message
    assert "Dealership" not in result.message


def test_forbid_entities_accepts_columns(any_db: Backend, expected: dict[str, int]) -> None:
    """A column select loads no entities and passes in one statement."""
    result = check(columns, any_db, expected=expected, budget=1, forbid_entities=(Car,))
    assert result.status == "passed"
    assert result.statements == 1
    assert result.entities == {}


def test_reference_function(sqlite_db: Backend) -> None:
    """reference= computes the expected answer on its own session, not counted."""
    result = check(eager, sqlite_db, reference=_cars_per_dealership, budget=2)
    assert result.passed is True
    assert result.statements == 2


def test_normalize(sqlite_db: Backend) -> None:
    """normalize= maps both sides before comparing (here: order does not matter)."""

    def names(session: Session) -> list[str]:
        return list(session.scalars(select(Dealership.name).order_by(Dealership.name.desc())))

    with sqlite_db.Session() as session:
        ascending = list(session.scalars(select(Dealership.name).order_by(Dealership.name)))
    assert check(names, sqlite_db, expected=ascending, budget=1).status == "wrong result"
    assert check(names, sqlite_db, expected=ascending, budget=1, normalize=sorted).passed


def test_expected_xor_reference(sqlite_db: Backend) -> None:
    """Exactly one of expected= and reference= is required."""
    with pytest.raises(TypeError, match="exactly one"):
        check(eager, sqlite_db, budget=2)
    with pytest.raises(TypeError, match="exactly one"):
        check(eager, sqlite_db, budget=2, expected={}, reference=_cars_per_dealership)


def test_check_refuses_async_solution(sqlite_db: Backend) -> None:
    """An async solution must go through acheck."""

    async def solution(session: Any) -> None:
        return None

    with pytest.raises(TypeError, match="acheck"):
        check(solution, sqlite_db, expected=None, budget=1)


def test_other_errors_propagate(sqlite_db: Backend) -> None:
    """Only NotImplementedError means 'not attempted'; a real bug raises."""

    def broken(session: Session) -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        check(broken, sqlite_db, expected=None, budget=1)


# ---------------------------------------------------------------------- acheck


def _acheck(db: Backend, solution: Any, expected: Any, **kwargs: Any) -> CheckResult:
    """Run acheck in a fresh loop, closing the async pool inside it."""

    async def main() -> CheckResult:
        try:
            return await acheck(solution, db, expected=expected, **kwargs)
        finally:
            await db.engine.dispose()

    return asyncio.run(main())


async def astub(session: Any) -> dict[str, int]:
    """The untouched async exercise cell."""
    raise NotImplementedError


async def awrong(session: Any) -> dict[str, int]:
    """Only the first dealership."""
    result = await session.execute(
        select(Dealership.name, func.count(Car.id)).join(Car).group_by(Dealership.name)
    )
    return dict(result.all()[:1])


async def alazy(session: Any) -> dict[str, int]:
    """Right answer, one awaited load per dealership."""
    dealerships = (await session.scalars(select(Dealership))).all()
    return {d.name: len(await d.awaitable_attrs.cars) for d in dealerships}


async def aeager(session: Any) -> dict[str, int]:
    """Right answer in 2 statements."""
    query = select(Dealership).options(selectinload(Dealership.cars))
    return {d.name: len(d.cars) for d in (await session.scalars(query)).all()}


def test_acheck_not_attempted(any_db: Backend, expected: dict[str, int]) -> None:
    """An untouched async stub is 'not attempted'."""
    result = _acheck(any_db, astub, expected, budget=2)
    assert result.status == "not attempted"
    assert result.passed is False
    assert "Not attempted yet" in result.message


def test_acheck_wrong(any_db: Backend, expected: dict[str, int]) -> None:
    """A wrong async answer is 'wrong result'."""
    result = _acheck(any_db, awrong, expected, budget=2)
    assert result.status == "wrong result"
    assert "(dict of 1 vs dict of 3)" in result.message


def test_acheck_over_budget(any_db: Backend, expected: dict[str, int]) -> None:
    """Awaiting .cars per dealership is 1 + 3 statements: over a budget of 2."""
    result = _acheck(any_db, alazy, expected, budget=2)
    assert result.status == "over budget"
    assert result.statements == 4


def test_acheck_passed(any_db: Backend, expected: dict[str, int]) -> None:
    """The async selectinload solution passes in 2 statements."""
    result = _acheck(any_db, aeager, expected, budget=2)
    assert result.status == "passed"
    assert result.passed is True
    assert result.statements == 2
    assert result.entities == {"Dealership": 3, "Car": 60}


def test_acheck_accepts_a_sync_callable_returning_a_value(sqlite_db: Backend) -> None:
    """acheck also judges a plain function (nothing to await)."""
    result = _acheck(sqlite_db, lambda session: 42, 42, budget=0)
    assert result.status == "passed"
    assert result.statements == 0


# ---------------------------------------------------------------------- objects and bind values


def load_all_then_count(session: Session) -> dict[str, int]:
    """Right answer in 2 statements, but builds every Car and counts in Python."""
    names = {d.id: d.name for d in session.scalars(select(Dealership))}
    counts: dict[str, int] = dict.fromkeys(names.values(), 0)
    for car in session.scalars(select(Car)):
        counts[names[car.dealership_id]] += 1
    return {name: n for name, n in counts.items() if n}


def test_max_objects_rejects_loading_everything(any_db: Backend, expected: dict[str, int]) -> None:
    """Within budget and right, yet 63 objects built: 'filter and limit in SQL'."""
    verdict = check(load_all_then_count, any_db, expected=expected, budget=2, max_objects=3)
    assert verdict.status == "too many objects"
    assert "built 63 ORM objects (at most 3)" in verdict.message
    assert check(columns, any_db, expected=expected, budget=1, max_objects=3).passed


def _insert_rows(n: int) -> list[dict[str, Any]]:
    return [{"name": f"tag-{i}"} for i in range(n)]


def test_max_parameters_rejects_a_multi_values_insert(sqlite_db: Backend, tmp_path: Any) -> None:
    """insert().values(rows) is one statement with a bind value per field; executemany passes."""
    from sqlalchemy import insert

    from course_lib.data import reset_schema
    from course_lib.models import Tag

    scratch = reset_schema(sqlite_db.sibling(f"scratch_exercises_{tmp_path.name}"))

    def multi_values(session: Session) -> int:
        session.execute(insert(Tag).values(_insert_rows(50)))
        return session.scalar(select(func.count(Tag.id)))

    def executemany(session: Session) -> int:
        session.execute(insert(Tag), _insert_rows(50))
        return session.scalar(select(func.count(Tag.id)))

    verdict = check(multi_values, scratch, expected=50, budget=2, max_parameters=10)
    assert verdict.status == "one huge statement"
    assert "carried 50 bind values (at most 10)" in verdict.message
    assert "executemany" in verdict.message
    assert check(executemany, scratch, expected=50, budget=2, max_parameters=10).passed


def test_objects_built_counts_every_mapping_not_only_the_course_models(sqlite_db: Backend) -> None:
    """A learner's own declarative base is counted too."""
    from sqlalchemy import Column, Integer, MetaData, String, Table
    from sqlalchemy.orm import registry

    from course_lib.exercises import objects_built

    class OwnUser:
        pass

    own = registry(metadata=MetaData())
    table = Table(
        "users", own.metadata, Column("id", Integer, primary_key=True), Column("name", String)
    )
    own.map_imperatively(OwnUser, table)

    with sqlite_db.Session() as session, objects_built() as built:
        session.scalars(select(OwnUser).limit(3)).all()
    assert built["OwnUser"] == 3


def test_max_rows_rejects_selecting_everything_and_slicing_in_python(any_db: Backend) -> None:
    """Columns only, one statement, right answer: yet every car came back to pick three."""

    def newest_three_in_python(session: Session) -> list[int]:
        ids = session.scalars(select(Car.id)).all()
        return sorted(ids, reverse=True)[:3]

    def newest_three_in_sql(session: Session) -> list[int]:
        return list(session.scalars(select(Car.id).order_by(Car.id.desc()).limit(3)))

    async def async_in_python(session: Any) -> list[int]:
        ids = (await session.scalars(select(Car.id))).all()
        return sorted(ids, reverse=True)[:3]

    expected = newest_three_in_sql
    with any_db.Session() as session:
        answer = expected(session)
    verdict = check(newest_three_in_python, any_db, expected=answer, budget=1, max_rows=3)
    assert verdict.status == "too many rows"
    assert "60 rows came back from the database (at most 3)" in verdict.message
    assert check(newest_three_in_sql, any_db, expected=answer, budget=1, max_rows=3).passed
    verdict = _acheck(any_db, async_in_python, answer, budget=1, max_rows=3)
    assert verdict.status == "too many rows"
