"""Tests for course_lib.lessons.concurrency: the dashboards, the pooled engines, loop lag,
timeouts and cancellation, and the exercise check with every naive answer notebook 10
warns about, on SQLite and on both PostgreSQL paths.

Every test works on a copy of the tiny dealerships and their first cars (``fill_lots``) in a
database beside the fixture's whose name is unique to this run (``fresh_database``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from course_lib.backends import Backend
from course_lib.course import Course
from course_lib.data import reset_schema
from course_lib.lessons import concurrency as lesson
from course_lib.measure import count_statements, simulate_round_trip
from course_lib.models import Car, Dealership
from course_lib.settings import choose_scale

TINY = choose_scale("tiny")


@pytest.fixture(scope="module", params=["sqlite_db", "pg_service", "pg_embedded"])
def lots(request: pytest.FixtureRequest, fresh_database: Any) -> Iterator[Backend]:
    """The tiny dealerships and their first LOT cars, in a database unique to this run."""
    source = request.getfixturevalue(request.param)
    db = reset_schema(fresh_database(source, "concurrency"))
    lesson.fill_lots(Course(TINY, [db]), Course(TINY, [source]))
    yield db
    db.sync_engine.dispose()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------ data and dashboards


def test_fill_lots_copies_every_dealership_and_its_first_cars(lots: Backend) -> None:
    with lots.Session() as session:
        dealers = session.scalar(select(func.count()).select_from(Dealership))
        per_dealer = session.execute(
            select(Car.dealership_id, func.count()).group_by(Car.dealership_id)
        ).all()
    assert dealers == TINY.dealerships
    assert {n for _, n in per_dealer} == {min(lesson.LOT, TINY.cars_per_dealership)}


def test_dashboard_is_one_statement_and_matches_the_reference(lots: Backend) -> None:
    ids = lesson.dealership_ids(lots)
    with lots.Session() as session:
        reference = lesson.dashboard_rows(session, list(reversed(ids)))
    assert [d.dealership_id for d in reference] == list(reversed(ids))

    async def each() -> tuple[list[lesson.Dashboard], int]:
        with count_statements(lots) as log:
            async with lots.AsyncSession() as session:
                found = [await lesson.dashboard(session, i) for i in reversed(ids)]
        await lots.engine.dispose()
        return found, log.count

    found, statements = _run(each())
    assert found == reference and statements == len(ids)
    assert all(d.cars == d.unsold + (d.cars - d.unsold) and d.unsold <= d.cars for d in found)


def test_ids_for_and_task_counts() -> None:
    assert lesson.ids_for([1, 2, 3], 5) == [1, 2, 3, 1, 2]
    assert lesson.task_counts(4, most=4) == [1, 2, 4, 8, 16]
    assert lesson.task_counts(3, most=2) == [1, 2, 3, 4]
    assert lesson.check_limit(3) == 2 and lesson.check_limit(25) == 3
    assert lesson.check_limit(25, lesson.CHECK_LIMITS[1]) == 2 != lesson.POOL


def test_error_chain_follows_orig_and_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("outer") from exc
    except ValueError as outer:
        assert lesson.error_chain(outer) == ["ValueError", "KeyError"]
    assert lesson.error_chain(None) == []


# -------------------------------------------------------------------- pooled engines


def test_pooled_engines_cap_the_pool_and_name_their_connections(lots: Backend) -> None:
    db = lesson.pooled(lots, 3, tag="test")
    assert db.engine.pool.size() == 3 and db.engine.pool._max_overflow == 0
    with db.Session() as session:
        ran_by = session.scalar(lesson.who(db))
        if db.name == "postgresql":
            name = session.scalar(text("select current_setting('application_name')"))
            assert name == db.application_name == lesson.app_name("test")
            assert ran_by == session.scalar(select(func.pg_backend_pid()))
        else:
            assert db.application_name is None and isinstance(ran_by, int)
    db.sync_engine.dispose()

    async def peak() -> tuple[int, list[Any]]:
        async def one() -> Any:
            async with db.AsyncSession() as session:
                return await session.scalar(lesson.who(db))

        await lesson.warm(db, 3)
        with simulate_round_trip(db.engine, 5), lesson.peak_connections(db) as seen:
            ran = await asyncio.gather(*(one() for _ in range(7)))
        await lesson.dispose(db)
        return seen.peak, ran

    most, ran = _run(peak())
    assert most == 3  # seven tasks, three connections: the rest queued
    assert len(set(ran)) == 3


def test_a_shared_session_raises_only_while_it_provisions(lots: Backend) -> None:
    async def outcomes() -> dict[str, list[str]]:
        db = lesson.pooled(lots, 4, tag="share")
        ids = lesson.ids_for(lesson.dealership_ids(lots), 4)

        async def shared() -> list[str]:
            async with db.AsyncSession() as session:
                got = await asyncio.gather(
                    *(lesson.dashboard(session, i) for i in ids), return_exceptions=True
                )
            return [type(g).__name__ for g in got]

        found = {"cold": await shared(), "warm": await shared()}
        with simulate_round_trip(db.engine, 1):
            found["warm, round trip"] = await shared()
        await lesson.dispose(db)
        return found

    found = _run(outcomes())
    refused = ["Dashboard"] + ["InvalidRequestError"] * 3
    assert found == {"cold": refused, "warm": ["Dashboard"] * 4, "warm, round trip": refused}


# --------------------------------------------------------------------------- loop lag


def test_loop_lag_sees_a_blocking_call_and_not_an_await() -> None:
    async def measure() -> tuple[lesson.LoopLag, lesson.LoopLag]:
        async with lesson.loop_lag() as blocked:
            time.sleep(0.05)
        async with lesson.loop_lag() as free:
            await asyncio.sleep(0.05)
        return blocked, free

    blocked, free = _run(measure())
    assert blocked.max_ms >= 40  # a lower bound: a busy machine only adds to it
    assert free.ticks > blocked.ticks


def test_lags_reports_each_work() -> None:
    async def nothing() -> None:
        await asyncio.sleep(0)

    found = _run(lesson.lags({"a": nothing, ("b", 1): nothing}, repeats=2))
    assert set(found) == {"a", ("b", 1)}
    assert set(found["a"]) == {"max_lag_ms", "work_ms"}


# ------------------------------------------------------------- timeouts, cancellation


def test_timeouts_name_their_errors(lots: Backend) -> None:
    if lots.name != "postgresql":
        pytest.skip("statement_timeout and command_timeout are PostgreSQL's")

    async def run() -> dict[str, lesson.Outcome]:
        plain = lesson.pooled(lots, 1, tag="t_plain")
        limit = {"statement_timeout": "100"}
        server = lesson.pooled(lots, 1, tag="t_server", server_settings=limit)
        driver = lesson.pooled(lots, 1, tag="t_driver", command_timeout=0.1)
        slow = select(func.pg_sleep(lesson.SLEEP_S))

        async def on(db: Backend, timeout: bool = False) -> None:
            if timeout:
                async with asyncio.timeout(0.1), db.engine.connect() as conn:
                    await conn.execute(slow)
            else:
                async with db.engine.connect() as conn:
                    await conn.execute(slow)

        found = {
            "asyncio": await lesson.outcome("a", plain, lambda: on(plain, timeout=True)),
            "statement_timeout": await lesson.outcome("s", server, lambda: on(server)),
            "command_timeout": await lesson.outcome("c", driver, lambda: on(driver)),
        }
        for db in (plain, server, driver):
            assert db.application_name is not None
            assert await lesson.stopped(lots, db.application_name)
            await lesson.dispose(db)
        await lots.engine.dispose()  # the monitor's connections belong to this loop
        return found

    found = _run(run())
    assert found["asyncio"].raised == "TimeoutError"
    assert found["asyncio"].connection == "invalidated (closed)"
    chain = found["statement_timeout"].chain
    assert chain[0] == "sqlalchemy.exc.DBAPIError"
    assert chain[-1] == "asyncpg.exceptions.QueryCanceledError"
    assert found["statement_timeout"].message == "canceling statement due to statement timeout"
    assert found["statement_timeout"].connection == "returned to the pool"
    assert found["command_timeout"].chain[0] == "TimeoutError"  # not wrapped by SQLAlchemy
    assert all(o.seconds < lesson.SLEEP_S / 2 for o in found.values())


def test_a_cancelled_task_returns_its_connection(lots: Backend) -> None:
    async def run() -> tuple[int, int, lesson.Outcome]:
        db = lesson.pooled(lots, 2, tag="cancel_one")
        seconds = lesson.NAP_S if db.name == "sqlite" else lesson.SLEEP_S

        async def slow() -> None:
            async with db.AsyncSession() as session:
                await session.execute(lesson.nap(db, seconds))

        task = asyncio.create_task(slow())
        await lesson.until_running(db, lots)
        during = lesson.checked_out(db)
        task.cancel()
        result = await lesson.outcome("cancel", db, lambda: task)
        after = lesson.checked_out(db)
        await lesson.dispose(db, lots)  # the monitor's connections belong to this loop
        return during, after, result

    during, after, result = _run(run())
    assert (during, after) == (1, 0)
    assert result.raised == "CancelledError" and result.connection == "invalidated (closed)"


def test_sqlite_timeout_waits_for_the_statement(sqlite_db: Backend, fresh_database: Any) -> None:
    db = lesson.pooled(fresh_database(sqlite_db, "nap"), 1, tag="nap")

    async def run() -> lesson.Outcome:
        async def work() -> None:
            async with asyncio.timeout(0.05), db.AsyncSession() as session:
                await session.execute(lesson.nap(db, 0.2))

        result = await lesson.outcome("nap", db, work)
        await lesson.dispose(db)
        return result

    result = _run(run())
    nap = lesson.last_nap()
    assert result.raised == "TimeoutError"
    assert nap is not None and nap.end is not None and nap.end <= result.ended


def test_a_sync_query_in_a_thread_runs_on_until_cancelled(lots: Backend) -> None:
    if lots.name != "postgresql":
        pytest.skip("pg_stat_activity and pg_cancel_backend are PostgreSQL's")
    db = lesson.pooled(lots, 1, tag="thread")

    async def run() -> tuple[bool, bool, bool, str | None, bool]:
        call = lesson.BlockingSleep(db, lesson.SLEEP_S)
        task = asyncio.create_task(asyncio.to_thread(call.run))
        pid = await lesson.until_running(db, lots)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        name = db.application_name
        assert name is not None
        running = await lesson.activity(lots, name) == ["active"]
        other = await lesson.cancel_backend(lots, pid, name + "_someone_else")
        mine = await lesson.cancel_backend(lots, pid, name)
        await asyncio.to_thread(call.finished.wait, 2 * lesson.SLEEP_S)
        gone = await lesson.stopped(lots, name)
        await lots.engine.dispose()
        return running, other, mine, call.error, gone

    running, other, mine, error, gone = _run(run())
    db.sync_engine.dispose()
    assert running and not other and mine and gone
    assert error == "psycopg.errors.QueryCanceled"


async def _gather(Session: Any, ids: list[int]) -> list[Any]:
    async def one(i: int) -> Any:
        async with Session() as session:
            return await lesson.dashboard(session, i)

    return await asyncio.gather(*(one(i) for i in ids))


async def _taskgroup(Session: Any, ids: list[int]) -> list[Any]:
    async def one(i: int) -> Any:
        async with Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


def test_cancel_midway_shows_gather_returning_before_its_tasks(lots: Backend) -> None:
    ids = lesson.ids_for(lesson.dealership_ids(lots), 2 * lesson.POOL)
    by_gather = _run(lesson.cancel_midway(_gather, lots, ids))
    by_group = _run(lesson.cancel_midway(_taskgroup, lots, ids))
    assert by_gather["raised"] == by_group["raised"] == "CancelledError"
    assert by_gather["checked out as it returned"] > 0
    assert by_group["checked out as it returned"] == 0
    assert by_gather["after its tasks finished"] == by_group["after its tasks finished"] == 0


def test_legacy_helper_runs_through_run_sync(lots: Backend) -> None:
    first = lesson.dealership_ids(lots)[0]

    async def run() -> tuple[list[str], int]:
        with count_statements(lots) as log:
            async with lots.AsyncSession() as session:
                report = await session.run_sync(lesson.legacy_lot_report, first)
        await lots.engine.dispose()
        return report, log.count

    report, statements = _run(run())
    with lots.Session() as session:
        assert report == lesson.legacy_lot_report(session, first)
    assert len(report) == 3 and statements == 2


# ------------------------------------------------------------------- the exercise check


async def solution(Session: Any, ids: list[int], limit: int, deadline: float) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def stub(Session: Any, ids: list[int], limit: int, deadline: float) -> list[Any]:
    raise NotImplementedError("your turn")


async def shared_session(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    async with Session() as session, asyncio.timeout(deadline):
        return await asyncio.gather(*(lesson.dashboard(session, i) for i in ids))


async def unbounded_gather(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    async def one(i: int) -> Any:
        async with Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def one_at_a_time(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    found = []
    async with asyncio.timeout(deadline):
        for i in ids:
            async with Session() as session:
                found.append(await lesson.dashboard(session, i))
    return found


async def never_closed(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            return await lesson.dashboard(Session(), i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def closed_by_hand(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    """Leaks on cancel: the close is skipped when the task is cancelled before it."""
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            session = Session()
            found = await lesson.dashboard(session, i)
            await session.close()
            return found

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def no_deadline(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def tasks_left_running(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    tasks = [asyncio.create_task(one(i)) for i in ids]
    async with asyncio.timeout(deadline):
        return [await t for t in tasks]


async def gather_still_closing(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline):
        return await asyncio.gather(*(one(i) for i in ids))


async def gather_returning_exceptions(
    Session: Any, ids: list[int], limit: int, deadline: float
) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline):
        found = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
    for item in found:
        if isinstance(item, BaseException):
            raise item
    return found


async def chunked_gather(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    async def one(i: int) -> Any:
        async with Session() as session:
            return await lesson.dashboard(session, i)

    found: list[Any] = []
    async with asyncio.timeout(deadline):
        for k in range(0, len(ids), limit):
            found += await asyncio.gather(*(one(i) for i in ids[k : k + limit]))
    return found


async def hardcoded_limit(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(lesson.POOL)

    async def one(i: int) -> Any:
        async with gate, Session() as session:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def gate_then_close(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with Session() as session, gate:
            return await lesson.dashboard(session, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in ids]
    return [t.result() for t in tasks]


async def post_hoc_deadline(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    start = time.perf_counter()
    found = await no_deadline(Session, ids, limit, deadline)
    if time.perf_counter() - start > deadline:
        raise TimeoutError("too slow")
    return found


async def swallows_cancel(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    try:
        return await solution(Session, ids, limit, deadline)
    except asyncio.CancelledError:
        return None


async def sequential_plus_idle(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    async with Session() as idle:
        await idle.connection()
        return await one_at_a_time(Session, ids, limit, deadline)


async def one_statement_plus_decoy(
    Session: Any, ids: list[int], limit: int, deadline: float
) -> Any:
    async def decoy() -> None:
        async with Session() as session:
            await session.execute(select(1))

    async def everything() -> list[Any]:
        async with Session() as session:
            rows = (await session.execute(lesson.dashboard_statement(ids))).all()
        found = {row[0]: lesson._dashboard(row) for row in rows}
        return [found[i] for i in ids]

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
        group.create_task(decoy())
        task = group.create_task(everything())
    return task.result()


MAKERS: dict[str, Any] = {}


async def foreign_maker(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    return await solution(MAKERS["db"], ids, limit, deadline)


async def wrong_order(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    return sorted(await solution(Session, ids, limit, deadline))


async def twice_each(Session: Any, ids: list[int], limit: int, deadline: float) -> Any:
    await solution(Session, ids, limit, deadline)
    return await solution(Session, ids, limit, deadline)


NAIVE = [
    (shared_session, "shared session", "One AsyncSession was used by several tasks"),
    (unbounded_gather, "over the limit", "unbounded gather"),
    (one_at_a_time, "not concurrent", "sequential"),
    (never_closed, "left checked out", "close every session"),
    (closed_by_hand, "leaked on cancel", "closed by hand"),
    (no_deadline, "no deadline", "asyncio.timeout(deadline)"),
    (tasks_left_running, "kept running", "went on running"),
    (hardcoded_limit, "over the limit", "Semaphore(limit)"),
    (gate_then_close, "over the limit", "async with gate, Session() as session"),
    (post_hoc_deadline, "no deadline", "ran all"),
    (swallows_cancel, "swallowed cancel", "re-raise"),
    (sequential_plus_idle, "not concurrent", "sequential"),
    (one_statement_plus_decoy, "not concurrent", "sequential"),
    (wrong_order, "wrong result", "Wrong result"),
    (twice_each, "over budget", "budget"),
]


@pytest.mark.parametrize(("attempt", "status", "reason"), NAIVE, ids=[n[0].__name__ for n in NAIVE])
def test_check_rejects_each_naive_answer(
    lots: Backend, attempt: Any, status: str, reason: str
) -> None:
    verdict = _run(lesson.acheck_dashboards(attempt, lots))
    assert verdict.status == status, verdict.message
    assert not verdict.passed and reason in verdict.message


def test_check_passes_the_solution_and_waits_for_the_stub(lots: Backend) -> None:
    verdict = _run(lesson.acheck_dashboards(solution, lots))
    assert verdict.passed, verdict.message
    assert verdict.statements == verdict.budget == len(lesson.check_ids(lots))
    assert _run(lesson.acheck_dashboards(stub, lots)).status == "not attempted"


def test_check_leaves_nothing_behind(lots: Backend) -> None:
    """After judging a leaky attempt, no task runs on and the check's engine is disposed."""

    async def judged() -> tuple[str, set[Any]]:
        before = asyncio.all_tasks()
        verdict = await lesson.acheck_dashboards(tasks_left_running, lots)
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        return verdict.status, left

    status, left = _run(judged())
    assert status == "kept running" and not left


@pytest.mark.parametrize(
    "attempt", [gather_still_closing, gather_returning_exceptions, chunked_gather]
)
def test_check_passes_gather_answers(lots: Backend, attempt: Any) -> None:
    """A cancelled gather may return before its tasks have closed: a note, not a failure.

    Whether it does is a race for the plain gathers (a note, or none); with
    ``return_exceptions=True`` gather waits for every task, so there is never a note.
    """
    verdict = _run(lesson.acheck_dashboards(attempt, lots))
    assert verdict.passed, verdict.message
    if attempt is gather_returning_exceptions:
        assert "Note:" not in verdict.message


def test_check_rejects_a_session_of_another_maker(lots: Backend) -> None:
    MAKERS["db"] = lots.AsyncSession
    try:
        verdict = _run(lesson.acheck_dashboards(foreign_maker, lots))
    finally:
        MAKERS.clear()
        _run(lots.engine.dispose())
    assert verdict.status == "foreign session", verdict.message
    assert "the `Session` it was" in verdict.message


def _unlocked(path: str) -> bool:
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def test_cancelled_runs_leave_the_sqlite_file_unlocked(
    sqlite_db: Backend, fresh_database: Any
) -> None:
    """A cancelled aiosqlite SELECT's cursor holds a SHARED lock until it is collected:
    cancel_midway and the check release it before they return."""
    db = reset_schema(fresh_database(sqlite_db, "concurrency_lock"))
    lesson.fill_lots(Course(TINY, [db]), Course(TINY, [sqlite_db]))
    path = db.sync_engine.url.database
    ids = lesson.ids_for(lesson.dealership_ids(db), 2 * lesson.POOL)
    try:
        for k in range(10):
            fan_out = _gather if k % 2 else _taskgroup
            _run(lesson.cancel_midway(fan_out, db, ids))
            assert _unlocked(path), f"locked after cancel_midway #{k}"
        for attempt in (solution, gather_still_closing, closed_by_hand):
            _run(lesson.acheck_dashboards(attempt, db))
            assert _unlocked(path), f"locked after the check of {attempt.__name__}"
    finally:
        db.sync_engine.dispose()
