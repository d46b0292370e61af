"""What each monitoring instrument costs: a 1,000-statement loop timed with and without it.

Run with ``.venv/bin/python scripts/bench_instruments.py`` (``COURSE_BACKENDS`` picks the
backends; the data is the ``small`` dataset, as in ``scripts/bench_foundation.py``). It
prints measured figures only; nothing is asserted, because timings belong to the machine.

Two loops of 1,000 ``session.execute(select(User.name).where(...))``, sync: all in **one
session**, and **a session per statement** (a new unit of work each time, where a
detector's per-unit bookkeeping shows). Each instrument is switched on around one run of a
loop (switching it on and off is not timed), and every variant runs once per round, in a
rotated order, so a slow spell on a shared machine lands on all of them alike. A warm-up
round is discarded; then at least ``MIN_ROUNDS`` rounds, and more (up to ``MAX_ROUNDS``)
while the time budget of that loop and backend lasts (``--budget``, seconds, so that the
whole run stays under two minutes on an idle machine); each sample is taken after
``gc.collect()``.

The clock is the **CPU time of this process** (``time.process_time``): what an instrument
adds is Python work in the client, and CPU time does not count the time the process waits
for the database or for the CPU while other processes run. The overhead of a variant is
the median, over rounds, of its time divided by the time of ``none`` *in the same round*
(paired ratios), minus one; its IQR is that of the ratios. A verdict is "ok" when the
third quartile of the ratios is under the 10 % target, "over 10 %" when the first quartile
is above it, and "inconclusive" when the target lies between the two, or when the IQR of
``none`` itself is wider than the target (relative to its median): then the machine is too
noisy for a 10 % verdict at all.

Instruments: the course's statement counter (``cl.count_statements``), the slow-query log
of ``course_lib.query_log`` (notebook 07, at its default threshold: nothing is slow here,
so this is the cost of timing every statement), the Prometheus listeners
(``cl.instrument``), the OpenTelemetry instrumentation with an in-memory exporter
(``cl.tracing``), the course's N+1 detector (``cl.find_n_plus_one``, per block and per
transaction), and queryspy's ``record()`` window (with its default stack capture, the mode
its pytest plugin uses).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import queryspy
from sqlalchemy import select

import course_lib as cl
from course_lib import query_log  # notebook 07's tools
from course_lib.backends import Backend
from course_lib.data import dataset
from course_lib.models import User

LOOP = 1_000
MIN_ROUNDS = 7
MAX_ROUNDS = 31
BUDGET_S = 10.0
TARGET_PERCENT = 10.0


def _slow_query_log(db: Backend) -> AbstractContextManager[Any]:
    return query_log.log_slow_queries(db.sync_engine, logger=None)  # kept, not printed


@contextlib.contextmanager
def _traced(db: Backend) -> Iterator[Any]:
    with cl.tracing(db.sync_engine) as traces:
        yield traces


#: label -> a function of the backend returning the context manager that switches it on
INSTRUMENTS: dict[str, Callable[[Backend], AbstractContextManager[Any]]] = {
    "none": lambda db: contextlib.nullcontext(),
    "statement counter (cl.count_statements)": lambda db: cl.count_statements(db.sync_engine),
    "slow-query log (query_log, 07)": _slow_query_log,
    "origin tags (query_log.tag_origin, 07)": lambda db: query_log.tag_origin(db.sync_engine),
    "Prometheus listeners (cl.instrument)": lambda db: cl.instrument(db.sync_engine),
    "OpenTelemetry, in-memory exporter (cl.tracing)": _traced,
    "N+1 detector, per block (cl.find_n_plus_one)": lambda db: cl.find_n_plus_one(db.sync_engine),
    'N+1 detector, per="transaction"': lambda db: cl.find_n_plus_one(
        db.sync_engine, per="transaction"
    ),
    "queryspy 0.6 record()": lambda db: queryspy.record(),
}


def one_session(db: Backend) -> None:
    """one session"""
    with db.Session() as session:
        for i in range(LOOP):
            session.execute(select(User.name).where(User.id == i % 200 + 1))


def session_per_statement(db: Backend) -> None:
    """a session per statement"""
    for i in range(LOOP):
        with db.Session() as session:
            session.execute(select(User.name).where(User.id == i % 200 + 1))


LOOPS = (one_session, session_per_statement)


def _sample(
    db: Backend,
    loop: Callable[[Backend], None],
    switch_on: Callable[[Backend], AbstractContextManager[Any]],
) -> float:
    with switch_on(db):
        gc.collect()
        start = time.process_time()
        loop(db)
        return time.process_time() - start


def measure(
    db: Backend,
    loop: Callable[[Backend], None],
    min_rounds: int = MIN_ROUNDS,
    budget_s: float = BUDGET_S,
) -> list[dict[str, Any]]:
    """One row per instrument: median and IQR of CPU ms, paired overhead % and its IQR."""
    labels = list(INSTRUMENTS)
    runs: dict[str, list[float]] = {label: [] for label in labels}
    started = time.perf_counter()
    round_ = 0
    while round_ <= min_rounds or (
        round_ <= MAX_ROUNDS and time.perf_counter() - started < budget_s
    ):  # round 0 is the warm-up
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            seconds = _sample(db, loop, INSTRUMENTS[label])
            if round_:
                runs[label].append(seconds)
        round_ += 1
    base = runs["none"]
    q1, median, q3 = cl.quartiles(base)
    noisy = (q3 - q1) / median * 100 > TARGET_PERCENT
    rows = []
    for label in labels:
        ratios = [(t / b - 1) * 100 for t, b in zip(runs[label], base, strict=True)]
        r1, overhead, r3 = cl.quartiles(ratios)
        v1, value, v3 = cl.quartiles(runs[label])
        if label == "none":
            verdict = ""
        elif noisy or r1 <= TARGET_PERCENT <= r3:
            verdict = "inconclusive"
        else:
            verdict = "ok" if r3 < TARGET_PERCENT else "over 10 %"
        rows.append(
            {
                "backend": db.name,
                "loop": loop.__doc__,
                "instrument": label,
                "cpu_ms": value * 1000,
                "iqr_ms": (v3 - v1) * 1000,
                "overhead_%": overhead,
                "overhead_iqr_%": r3 - r1,
                "us_per_statement": (value - median) / LOOP * 1e6,
                "verdict": verdict,
                "rounds": len(base),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=MIN_ROUNDS, help="timed rounds at least (>= 5)"
    )
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="seconds per loop and backend"
    )
    args = parser.parse_args(argv)
    rounds = max(5, args.rounds)
    print(
        f"Instrument overhead on a {LOOP:,}-statement loop (sync; CPU time of this process; "
        f"at least {rounds} interleaved rounds after a warm-up; overhead = median of the "
        f"per-round ratios to `none`; target < {TARGET_PERCENT:g} %):"
    )
    for name in cl.settings.choose_backends():
        db = dataset(name, cl.settings.lookup_scale("small"))
        for loop in LOOPS:
            rows = measure(db, loop, rounds, args.budget)
            none = rows[0]
            spread = none["iqr_ms"] / none["cpu_ms"] * 100
            print(
                f"\n  {name}, {loop.__doc__}, {none['rounds']} rounds: none "
                f"{none['cpu_ms']:.1f} ms CPU, IQR {spread:.1f} % of it"
                + (
                    "  (wider than the target: verdicts inconclusive)"
                    if spread > TARGET_PERCENT
                    else ""
                )
            )
            print(
                f"  {'instrument':<48} {'CPU ms':>8} {'IQR ms':>7} {'overhead':>9} "
                f"{'± IQR':>7} {'µs/stmt':>8}"
            )
            for row in rows:
                print(
                    f"  {row['instrument']:<48} {row['cpu_ms']:8.1f} {row['iqr_ms']:7.1f} "
                    f"{row['overhead_%']:+8.1f}% {row['overhead_iqr_%']:6.1f}% "
                    f"{row['us_per_statement']:8.1f}  {row['verdict']}"
                )
        db.sync_engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
