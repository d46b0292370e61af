"""Tests for course_lib.measure: exact statement counts, timing structure, comparisons, memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.orm import selectinload

from course_lib.backends import Backend
from course_lib.measure import (
    CHARGED_EVENTS,
    MAX_NUMBER,
    RoundTrip,
    Statement,
    StatementLog,
    Timing,
    _next_number,
    abenchmark,
    acompare,
    added_latency,
    apeak_memory,
    ascaling,
    benchmark,
    compare,
    count_statements,
    iqr,
    label_of,
    peak_memory,
    quartiles,
    round_trip_ms,
    scaling,
    simulate_round_trip,
    speedup,
    table,
)
from course_lib.models import Tag, User

COLUMNS = [
    "strategy",
    "backend",
    "n",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "statements",
    "round_trips",
    "calls_per_sample",
    "gc_ms",
    "simulated_ms",
    "ratio",
]


def _run(db: Backend, make: Callable[[], Awaitable[Any]]) -> Any:
    """Run async work in a fresh loop (see Backend.run)."""
    return db.run(make)


# ---------------------------------------------------------------------- counting


@pytest.mark.parametrize("n", [0, 1, 4])
def test_counts_explicit_statements(any_db: Backend, n: int) -> None:
    """n explicit session.execute() calls are n statements."""
    with count_statements(any_db) as log, any_db.Session() as session:
        for _ in range(n):
            session.execute(select(User.id))
    assert log.count == n
    assert log.parameter_sets == n
    assert all(s.verb == "SELECT" and not s.executemany for s in log.statements)


def test_lazy_loop_is_one_plus_k(any_db: Backend) -> None:
    """Touching .posts on k users loads lazily: 1 + k statements."""
    k = 5
    with count_statements(any_db) as log, any_db.Session() as session:
        users = session.scalars(select(User).order_by(User.id).limit(k)).all()
        total = sum(len(user.posts) for user in users)
    assert total == k * 3
    assert log.count == 1 + k
    assert log.sql[1] == log.sql[-1]


def test_selectinload_is_two(any_db: Backend) -> None:
    """selectinload loads the same posts in 2 statements."""
    with count_statements(any_db) as log, any_db.Session() as session:
        query = select(User).options(selectinload(User.posts)).order_by(User.id).limit(5)
        users = session.scalars(query).all()
        total = sum(len(user.posts) for user in users)
    assert total == 15
    assert log.count == 2


def test_orm_executemany_counts_parameter_sets(any_db: Backend) -> None:
    """An ORM bulk insert of 3 rows is one executemany with 3 parameter sets on both drivers."""
    rows = [{"name": "count-a"}, {"name": "count-b"}, {"name": "count-c"}]
    with any_db.Session() as session, count_statements(any_db) as log:
        session.execute(insert(Tag), rows)
        session.rollback()
    assert log.count == 1
    assert log.parameter_sets == 3
    (stmt,) = log.statements
    assert stmt.executemany is True
    assert stmt.verb == "INSERT"
    with any_db.Session() as session:
        assert session.scalars(select(Tag).where(Tag.name.like("count-%"))).all() == []


def test_core_executemany_counts_parameter_sets(any_db: Backend) -> None:
    """A Core conn.execute(insert(...), rows) is counted the same way."""
    rows = [{"name": "core-a"}, {"name": "core-b"}, {"name": "core-c"}]
    with any_db.sync_engine.connect() as conn, count_statements(any_db.sync_engine) as log:
        conn.execute(insert(Tag), rows)
        conn.rollback()
    assert (log.count, log.parameter_sets) == (1, 3)
    placeholder = "?" if any_db.name == "sqlite" else "%(name)s"
    assert placeholder in log.sql[0]


def test_counts_async_statements(any_db: Backend) -> None:
    """Statements sent through the Backend's AsyncSession are recorded too."""

    async def work() -> int:
        async with any_db.AsyncSession() as session:
            await session.execute(select(User.id))
            await session.execute(select(Tag.id))
            result = await session.execute(select(User).options(selectinload(User.posts)))
            return len(result.scalars().all())

    with count_statements(any_db) as log:
        users = _run(any_db, work)
    assert users == 12
    assert log.count == 4


def test_counts_on_an_async_engine(sqlite_db: Backend) -> None:
    """An AsyncEngine target records the statements of that engine only."""

    async def work() -> None:
        async with sqlite_db.engine.connect() as conn:
            await conn.execute(text("select 1"))

    with count_statements(sqlite_db.engine) as log, sqlite_db.Session() as session:
        session.execute(text("select 2"))  # the sync engine: not recorded
        _run(sqlite_db, work)
    assert log.sql == ["select 1"]


def test_listeners_removed_after_block(any_db: Backend) -> None:
    """Statements after the block are not added to the log."""
    with any_db.Session() as session:
        with count_statements(any_db) as log:
            session.execute(select(User.id))
        session.execute(select(User.id))
        session.execute(select(User.id))
    assert log.count == 1


def test_listeners_removed_after_an_exception(sqlite_db: Backend) -> None:
    """The listeners go even when the block raises."""
    with pytest.raises(ZeroDivisionError), count_statements(sqlite_db) as log:
        with sqlite_db.Session() as session:
            session.execute(select(User.id))
        _ = 1 / 0
    with sqlite_db.Session() as session:
        session.execute(select(User.id))
    assert log.count == 1


def test_nested_logs_both_record(sqlite_db: Backend) -> None:
    """An inner block's statements are in the outer log as well."""
    with count_statements(sqlite_db) as outer, sqlite_db.Session() as session:
        session.execute(select(User.id))
        with count_statements(sqlite_db) as inner:
            session.execute(select(Tag.id))
    assert (outer.count, inner.count) == (2, 1)


# ---------------------------------------------------------------------- StatementLog


def _log() -> StatementLog:
    return StatementLog(
        [
            Statement("SELECT users.id \nFROM users", 1, False, 0.5),
            Statement("SELECT posts.id FROM posts WHERE posts.author_id = ?", 1, False, 0.25),
            Statement("SELECT posts.id FROM posts WHERE posts.author_id = ?", 1, False, 0.75),
            Statement("INSERT INTO tags (name) VALUES (?)", 3, True, 0.125),
        ]
    )


def test_show_is_deterministic_text() -> None:
    """show() gives one line per statement, whitespace collapsed, no timings."""
    assert _log().show() == (
        "4 statement(s)\n"
        "  1. SELECT users.id FROM users\n"
        "  2. SELECT posts.id FROM posts WHERE posts.author_id = ?\n"
        "  3. SELECT posts.id FROM posts WHERE posts.author_id = ?\n"
        "  4. INSERT INTO tags (name) VALUES (?)  [3 parameter sets]"
    )


def test_show_limit_and_width() -> None:
    """show() truncates long SQL to the width and says how many were left out."""
    text_ = _log().show(limit=2, width=26)
    assert text_.splitlines() == [
        "4 statement(s)",
        "  1. SELECT users.id FROM users",
        "  2. SELECT posts.id FROM post…",
        "     … and 2 more",
    ]
    assert StatementLog().show() == "0 statement(s)"


def test_summary_groups_by_sql() -> None:
    """summary() groups identical SQL in order of first appearance."""
    summary = _log().summary()
    assert list(summary.columns) == ["sql", "times", "parameter_sets"]
    assert summary["sql"].tolist() == [
        "SELECT users.id FROM users",
        "SELECT posts.id FROM posts WHERE posts.author_id = ?",
        "INSERT INTO tags (name) VALUES (?)",
    ]
    assert summary["times"].tolist() == [1, 2, 1]
    assert summary["parameter_sets"].tolist() == [1, 2, 3]


def test_summary_of_empty_log() -> None:
    """An empty log summarises to an empty frame with the same columns."""
    summary = StatementLog().summary()
    assert summary.empty
    assert list(summary.columns) == ["sql", "times", "parameter_sets"]


def test_log_totals_and_verbs() -> None:
    """count, parameter_sets, sql and verb add up."""
    log = _log()
    assert (log.count, log.parameter_sets) == (4, 6)
    assert log.sql[0] == "SELECT users.id \nFROM users"
    assert [s.verb for s in log.statements] == ["SELECT", "SELECT", "SELECT", "INSERT"]
    assert Statement("  \n", 1, False, 0.0).verb == ""
    assert Statement("\n  update cars set x=1", 1, False, 0.0).verb == "UPDATE"


# ---------------------------------------------------------------------- benchmark


def test_benchmark_runs_and_warmup() -> None:
    """number=1: warm-up calls happen but are not kept; repeats samples of one call each."""
    calls = []

    def fn() -> None:
        """Append once."""
        calls.append(1)

    timing = benchmark(fn, warmup=2, repeats=5, number=1)
    assert len(calls) == 2 + 5
    assert len(timing.runs_s) == 5
    assert timing.number == 1
    assert min(timing.runs_s) <= timing.median_s <= max(timing.runs_s)
    assert timing.q1_s <= timing.median_s <= timing.q3_s
    assert timing.spread_s == pytest.approx(timing.q3_s - timing.q1_s)
    assert all(run >= 0 for run in timing.runs_s)
    assert timing.label == "Append once."
    assert timing.statements is None


def test_benchmark_calibrates_calls_per_sample() -> None:
    """A 2 ms call is repeated (1, 2, 5, ... ladder) until a block lasts min_sample_s."""
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.002)

    timing = benchmark(fn, repeats=5, min_sample_s=0.010)
    # sleep never returns early: 5 calls always reach 10 ms; a loaded machine may stop at 2
    assert timing.number in (2, 5)
    calibration = sum(n for n in (2, 5) if n <= timing.number)
    assert len(calls) == 1 + calibration + 5 * timing.number
    assert all(run >= 0.002 for run in timing.runs_s)  # per call, not per sample


def test_benchmark_long_warmup_needs_no_calibration() -> None:
    """A long warm-up call is confirmed by one more call (the first is often cold): number=1."""
    calls = []
    timing = benchmark(lambda: calls.append(time.sleep(0.006)), repeats=5, min_sample_s=0.005)
    assert timing.number == 1
    assert len(calls) == 1 + 1 + 5


def test_a_cold_first_call_does_not_decide_the_calibration() -> None:
    """A slow first call (cold caches) followed by fast ones still gets several calls a sample."""
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.02 if len(calls) == 1 else 0.001)

    timing = benchmark(fn, repeats=5, min_sample_s=0.005)
    assert timing.number > 1


def test_next_number_ladder() -> None:
    """1, 2, 5, 10, 20, 50, ... capped at MAX_NUMBER."""
    ladder = [1]
    while ladder[-1] < MAX_NUMBER:
        ladder.append(_next_number(ladder[-1]))
    assert ladder == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


@pytest.mark.parametrize(
    ("warmup", "repeats", "message"),
    [(1, 4, "at least 5 samples"), (0, 5, "warmup must be >= 1"), (1, 0, "at least 5")],
)
def test_benchmark_rejects_bad_counts(warmup: int, repeats: int, message: str) -> None:
    """Fewer than 5 samples give no IQR; the first call is never kept."""
    with pytest.raises(ValueError, match=message):
        benchmark(lambda: None, warmup=warmup, repeats=repeats)


def test_benchmark_collects_garbage_before_each_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default: one full collection and a freeze first, then gc.collect() before each sample;
    everything is unfrozen afterwards. With collect=False, none of it."""
    import gc

    collected, frozen = [], []
    real_collect, real_freeze, real_unfreeze = gc.collect, gc.freeze, gc.unfreeze
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or real_collect(*a))
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append("freeze") or real_freeze())
    monkeypatch.setattr(gc, "unfreeze", lambda: frozen.append("unfreeze") or real_unfreeze())
    benchmark(lambda: None, repeats=6, number=1)
    assert len(collected) == 1 + 6
    assert frozen == ["freeze", "unfreeze"]
    assert gc.get_freeze_count() == 0
    collected.clear()
    frozen.clear()
    benchmark(lambda: None, repeats=6, number=1, collect=False)
    assert collected == [] and frozen == []


def test_an_error_in_the_strategy_still_unfreezes() -> None:
    """A failing strategy leaves no frozen objects behind."""
    import gc

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        benchmark(boom, repeats=5)
    assert gc.get_freeze_count() == 0


def test_benchmark_clocks_gc_pauses() -> None:
    """A sample that triggers collections reports gc time; one that does not reports zero."""
    import gc

    def churn() -> None:
        for _ in range(3):
            gc.collect()

    timing = benchmark(churn, repeats=5, number=1)
    assert len(timing.gc_s) == 5
    assert all(g > 0 for g in timing.gc_s)
    assert timing.gc_median_s > 0


def test_benchmark_counts_statements_per_call(sqlite_db: Backend) -> None:
    """With target=, the statements of one call are reported, whatever the calls per sample."""

    def two_queries() -> None:
        with sqlite_db.Session() as session:
            session.execute(select(User.id))
            session.execute(select(Tag.id))

    timing = benchmark(two_queries, repeats=5, target=sqlite_db, number=3)
    assert timing.statements == 2
    assert timing.number == 3
    assert timing.label == "two_queries"


def test_benchmark_refuses_coroutine_functions() -> None:
    """A coroutine function must go through abenchmark."""

    async def fn() -> None:
        await asyncio.sleep(0)

    with pytest.raises(TypeError, match="abenchmark"):
        benchmark(fn)


def test_abenchmark_awaits_async_fn() -> None:
    """abenchmark awaits each call: the coroutine body runs warmup + repeats times."""
    calls = []

    async def fn() -> None:
        """Await then count."""
        await asyncio.sleep(0)
        calls.append(1)

    timing = asyncio.run(abenchmark(fn, repeats=5, number=1))
    assert len(calls) == 6
    assert len(timing.runs_s) == 5
    assert min(timing.runs_s) <= timing.median_s <= max(timing.runs_s)
    assert timing.spread_s >= 0
    assert timing.label == "Await then count."


def test_abenchmark_accepts_sync_fn_and_calibrates() -> None:
    """abenchmark also times a plain function, with the same calibration."""
    calls = []
    timing = asyncio.run(abenchmark(lambda: calls.append(1), repeats=5))
    assert timing.number > 1  # appending to a list takes far less than 5 ms
    assert len(timing.runs_s) == 5


def test_timing_statistics_and_repr() -> None:
    """Median and IQR (inclusive quartiles: always inside the data) and the repr."""
    five = Timing("y", [1.0, 2.0, 3.0, 4.0, 100.0])
    assert five.median_s == 3.0
    assert (five.q1_s, five.q3_s) == (2.0, 4.0)
    assert five.spread_s == pytest.approx(2.0)
    assert repr(Timing("x", [0.001, 0.002, 0.003, 0.004, 0.005], number=10)) == (
        "x: median 3.000 ms (IQR 2.000 ms) over 5 samples of 10 call(s)"
    )
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0


def test_label_of() -> None:
    """The first docstring line, else the function name."""

    def documented() -> None:
        """First line.

        More.
        """

    def bare() -> None:
        pass

    assert label_of(documented) == "First line."
    assert label_of(bare) == "bare"


# ---------------------------------------------------------------------- compare / scaling


def quick(db: Backend, n: int) -> None:
    """Quick: sleep 1 ms."""
    time.sleep(0.001)


def slow(db: Backend, n: int) -> None:
    """Slow: sleep 30 ms."""
    time.sleep(0.030)


def n_queries(db: Backend, n: int) -> None:
    """n queries"""
    with db.Session() as session:
        for _ in range(n):
            session.execute(select(User.id))


async def n_async_queries(db: Backend, n: int) -> None:
    """n async queries"""
    async with db.AsyncSession() as session:
        for _ in range(n):
            await session.execute(select(User.id))


def test_compare_ranks(sqlite_db: Backend) -> None:
    """The fastest strategy has ratio 1.0; one 30x slower by construction has ratio > 5."""
    frame = compare([slow, quick], sqlite_db, n=10, repeats=5)
    assert list(frame.columns) == COLUMNS
    assert frame["strategy"].tolist() == ["Slow: sleep 30 ms.", "Quick: sleep 1 ms."]
    ratios = dict(zip(frame["strategy"], frame["ratio"], strict=True))
    assert ratios["Quick: sleep 1 ms."] == 1.0
    assert ratios["Slow: sleep 30 ms."] > 5
    assert frame["backend"].tolist() == ["sqlite", "sqlite"]
    assert frame["n"].tolist() == [10, 10]
    assert frame["statements"].tolist() == [0, 0]
    assert frame["simulated_ms"].tolist() == [0.0, 0.0]
    assert (frame["iqr_ms"] >= 0).all()
    assert frame.attrs == {"unit": "ms", "title": None, "scales": ["tiny"]}
    fold = speedup(frame, slow, quick)
    assert fold.name == "Slow: sleep 30 ms. / Quick: sleep 1 ms."
    assert fold.loc[("sqlite", 10)] > 5


def test_compare_counts_statements_per_strategy(any_db: Backend) -> None:
    """The statements column is what one measured run sent."""
    frame = compare([n_queries], any_db, n=3, repeats=5, title="demo")
    assert frame["statements"].tolist() == [3]
    assert frame["ratio"].tolist() == [1.0]
    assert frame.attrs["title"] == "demo"


def test_scaling_has_a_row_per_strategy_and_n(sqlite_db: Backend) -> None:
    """len(strategies) * len(ns) rows, statements growing with n."""
    ns = [1, 2, 4]
    frame = scaling([n_queries, quick], sqlite_db, ns, repeats=5)
    assert len(frame) == 2 * len(ns)
    assert list(frame.columns) == COLUMNS
    by_strategy = frame.groupby("strategy")["statements"].apply(list).to_dict()
    assert by_strategy == {"n queries": [1, 2, 4], "Quick: sleep 1 ms.": [0, 0, 0]}
    assert sorted(set(frame["n"])) == ns
    assert (frame.groupby("n")["ratio"].min() == 1.0).all()


def test_scaling_over_two_backends(sqlite_db: Backend, pg_service: Backend) -> None:
    """Rows for every strategy, backend and n; ratios are computed per backend and n."""
    frame = scaling([n_queries], [sqlite_db, pg_service], [1, 2], repeats=5)
    assert len(frame) == 1 * 2 * 2
    assert frame["backend"].tolist() == ["sqlite", "sqlite", "postgresql", "postgresql"]
    assert frame["ratio"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_ascaling_and_acompare_with_async_strategies(any_db: Backend) -> None:
    """Async strategies are awaited and their statements counted."""

    async def both() -> tuple[Any, Any]:
        grid = await ascaling([n_async_queries], any_db, [1, 3], repeats=5)
        single = await acompare([n_async_queries], any_db, n=2, repeats=5)
        return grid, single

    grid, single = _run(any_db, both)
    assert len(grid) == 2
    assert grid["statements"].tolist() == [1, 3]
    assert list(grid.columns) == COLUMNS
    assert single["statements"].tolist() == [2]
    assert single["strategy"].tolist() == ["n async queries"]


def test_empty_compare_is_an_empty_frame(sqlite_db: Backend) -> None:
    """No strategies, no rows."""
    assert compare([], sqlite_db, n=1).empty


# ---------------------------------------------------------------------- simulated round trip


def two_statements(db: Backend, n: int) -> None:
    """Two statements."""
    with db.Session() as session:
        session.execute(select(User.id))
        session.execute(select(Tag.id))


async def two_async_statements(db: Backend, n: int) -> None:
    """Two async statements."""
    async with db.AsyncSession() as session:
        await session.execute(select(User.id))
        await session.execute(select(Tag.id))


def test_simulate_round_trip(sqlite_db: Backend) -> None:
    """Inside: the delay is reported and labelled, and every statement pays it. After: gone."""
    assert round_trip_ms(sqlite_db) == 0
    with simulate_round_trip(sqlite_db, ms=20) as trip:
        assert isinstance(trip, RoundTrip)
        assert trip.requested_ms == 20
        assert round_trip_ms(sqlite_db) == 20
        assert round_trip_ms(sqlite_db.sync_engine) == 20
        frame = compare([two_statements], sqlite_db, n=1, repeats=5, number=1)
    assert round_trip_ms(sqlite_db) == 0
    assert frame["backend"].tolist() == ["sqlite + simulated 20 ms/round trip"]
    assert frame["simulated_ms"].tolist() == [20]
    assert frame["statements"].tolist() == [2]
    assert frame["median_ms"].iloc[0] >= 2 * 20
    # sleep never returns early, so every charge added at least the requested delay
    assert min(trip.added_s) >= 0.020
    assert trip.added_ms >= 20
    assert trip.events["statement"] == 6 * 2  # warm-up + 5 samples, two statements each
    assert "requested 20 ms per round trip" in trip.summary()

    after = compare([two_statements], sqlite_db, n=1, repeats=5)
    assert after["backend"].tolist() == ["sqlite"]
    assert after["simulated_ms"].tolist() == [0.0]


def test_simulate_round_trip_charges_begin_commit_rollback(any_db: Backend) -> None:
    """A network charges transaction control too: BEGIN, COMMIT and ROLLBACK each pay once."""
    assert set(CHARGED_EVENTS) == {"before_cursor_execute", "begin", "commit", "rollback"}
    with simulate_round_trip(any_db, ms=1) as trip, any_db.sync_engine.connect() as conn:
        conn.execute(text("select 1"))
        conn.commit()
        conn.execute(text("select 1"))
        conn.rollback()
    assert trip.events == {"BEGIN": 2, "COMMIT": 1, "ROLLBACK": 1, "statement": 2}
    assert trip.charged == 6


def test_simulate_round_trip_async(any_db: Backend) -> None:
    """Async engines wait the delay too: two statements take at least twice the delay."""

    async def measure() -> Any:
        return await acompare([two_async_statements], any_db, n=1, repeats=5, number=1)

    with simulate_round_trip(any_db, ms=20) as trip:
        frame = _run(any_db, measure)
    assert round_trip_ms(any_db) == 0
    assert frame["statements"].tolist() == [2]
    assert frame["median_ms"].iloc[0] >= 2 * 20
    assert "simulated" in frame["backend"].iloc[0]
    assert trip.events["statement"] == 12


def test_simulated_async_delay_lets_other_tasks_run(sqlite_db: Backend) -> None:
    """While one task waits a simulated round trip, another task keeps running (no spinning)."""

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        async with sqlite_db.AsyncSession() as session:
            for _ in range(5):
                await session.execute(select(User.id))
        stop.set()
        await task
        return ticks

    with simulate_round_trip(sqlite_db, ms=5):
        ticks = _run(sqlite_db, main)
    # a busy-waiting delay would starve the ticker; asyncio.sleep lets it tick during each wait
    assert ticks > 5


def test_simulate_round_trip_on_an_engine(sqlite_db: Backend) -> None:
    """An Engine target delays that engine only."""
    engine = sqlite_db.sync_engine
    with simulate_round_trip(engine, ms=20):
        assert round_trip_ms(engine) == 20
        assert round_trip_ms(sqlite_db.engine) == 0
        with engine.connect() as conn:
            start = time.perf_counter()
            conn.execute(text("select 1"))
            elapsed = time.perf_counter() - start
    assert elapsed >= 0.020
    assert round_trip_ms(engine) == 0


def test_nested_simulate_round_trip_reports_the_delay_in_force(sqlite_db: Backend) -> None:
    """After an inner block ends, round_trip_ms reports the outer delay, which still applies."""
    with simulate_round_trip(sqlite_db, ms=30):
        with simulate_round_trip(sqlite_db, ms=10):
            pass
        assert round_trip_ms(sqlite_db) == 30


def test_added_latency() -> None:
    """added_latency() subtracts the local medians and divides by the statements, per backend."""
    import pandas as pd

    local = pd.DataFrame(
        {
            "strategy": ["a", "b", "a"],
            "backend": ["sqlite", "sqlite", "postgresql"],
            "n": [10, 10, 10],
            "median_ms": [1.0, 2.0, 5.0],
            "statements": [11, 2, 11],
        }
    )
    simulated = local.assign(
        median_ms=[12.0, 4.0, 27.0],
        backend=local["backend"] + " + simulated 1 ms/round trip",
    )
    joined = added_latency(local, simulated)
    assert list(joined.columns) == [
        "strategy",
        "backend",
        "n",
        "statements",
        "median_ms_local",
        "median_ms_simulated",
        "added_ms",
        "added_per_statement_ms",
    ]
    assert joined["backend"].tolist() == ["sqlite", "sqlite", "postgresql"]
    assert joined["added_ms"].tolist() == [11.0, 2.0, 22.0]
    assert joined["added_per_statement_ms"].tolist() == [1.0, 1.0, 2.0]


def test_table_pivots_by_backend_and_rounds() -> None:
    """Strategies as rows, a column per backend, 4 significant figures."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "strategy": ["lazy", "eager", "lazy", "eager"],
            "backend": ["sqlite", "sqlite", "postgresql", "postgresql"],
            "n": [5] * 4,
            "median_ms": [12.34567, 1.0, 30.0, 2.0],
            "ratio": [12.35, 1.0, 15.0, 1.0],
        }
    )
    view = table(frame)
    assert list(view.index) == ["lazy", "eager"]
    assert set(view.columns) == {"sqlite", "postgresql"}
    assert view.loc["lazy", "sqlite"] == 12.35
    both = table(frame, ["median_ms", "ratio"])
    assert both.loc["lazy", ("ratio", "postgresql")] == 15.0


# ---------------------------------------------------------------------- memory


def test_peak_memory_of_a_large_allocation() -> None:
    """A 5 MB bytearray peaks at least at 5 MB."""
    assert peak_memory(lambda: bytearray(5_000_000)) >= 5_000_000


def test_peak_memory_of_a_noop_is_small() -> None:
    """Doing nothing allocates (almost) nothing."""
    assert peak_memory(lambda: None) < 100_000


def test_apeak_memory() -> None:
    """The async variant awaits and measures the coroutine's allocations."""

    async def allocate() -> int:
        await asyncio.sleep(0)
        return len(bytearray(5_000_000))

    assert asyncio.run(apeak_memory(allocate)) >= 5_000_000
    assert asyncio.run(apeak_memory(lambda: None)) < 100_000


def test_scaling_with_memory_reports_peak_kib(sqlite_db: Backend) -> None:
    """memory=True adds peak_kib from one extra run; a 2 MB allocation shows as >= 1950 KiB."""

    def allocate(db: Backend, n: int) -> bytearray:
        """Allocate n MB"""
        return bytearray(n * 1_000_000)

    frame = scaling([allocate], sqlite_db, [1, 2], repeats=5, memory=True)
    assert list(frame["n"]) == [1, 2]
    assert frame["peak_kib"].iloc[0] >= 950
    assert frame["peak_kib"].iloc[1] >= 1950
    plain = scaling([allocate], sqlite_db, [1], repeats=5)
    assert "peak_kib" not in plain


def test_compare_interleaves_the_samples_of_its_strategies(sqlite_db: Backend) -> None:
    """Sample i of every strategy comes before sample i + 1 of any: load hits all alike."""
    order: list[str] = []

    def first(db: Backend, n: int) -> None:
        """first"""
        order.append("a")

    def second(db: Backend, n: int) -> None:
        """second"""
        order.append("b")

    frame = compare([first, second], sqlite_db, n=1, repeats=5, number=1)
    assert frame["strategy"].tolist() == ["first", "second"]
    # preparation: a's warm-up and b's warm-up (number given: no calibration), then samples
    assert order == ["a", "b"] + ["a", "b"] * 5


def test_round_trips_count_transaction_boundaries(any_db: Backend) -> None:
    """Two statements in one session: BEGIN + 2 statements + ROLLBACK = 4 round trips."""
    frame = compare([two_statements], any_db, n=1, repeats=5, number=1)
    assert frame["statements"].tolist() == [2]
    assert frame["round_trips"].tolist() == [4]
    with count_statements(any_db) as log, any_db.sync_engine.begin() as conn:
        conn.execute(text("select 1"))
    assert log.transactions == {"BEGIN": 1, "COMMIT": 1}
    assert log.round_trips == 3


def test_cpu_clock_leaves_out_waiting() -> None:
    """clock="cpu" times the CPU the work used: a sleep costs the wall clock, not the CPU."""

    def nap() -> None:
        time.sleep(0.02)

    wall = benchmark(nap, repeats=5, number=1)
    cpu = benchmark(nap, repeats=5, number=1, clock="cpu")
    assert wall.median_s >= 0.019
    assert cpu.median_s < 0.005
    with pytest.raises(ValueError, match="clock"):
        benchmark(nap, repeats=5, number=1, clock="sundial")
