"""Foundation benchmarks: statement-counter overhead and embedded-server start times.

Run with ``make bench`` (or ``.venv/bin/python scripts/bench_foundation.py``). It prints
measured figures only; nothing here is asserted, because timings belong to the machine.

- Counter overhead: a loop of 1,000 ``session.execute(select(...))`` calls, timed with and
  without :func:`course_lib.count_statements` (warm-up, repeats, median). Target: < 10 %.
- Embedded PostgreSQL: cold start (initdb + start in an empty folder), warm start (a new
  process attaching to the running server) and restart (folder exists, server stopped),
  each in a fresh Python process, as a learner's kernel would meet it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import select

import course_lib as cl
from course_lib.data import dataset
from course_lib.models import User

LOOP = 1_000


def counter_overhead(db: cl.backends.Backend) -> tuple[float, float, float]:
    """Median ms of the 1,000-statement loop without and with the counter, and the overhead."""

    def loop() -> None:
        with db.Session() as session:
            for i in range(LOOP):
                session.execute(select(User.name).where(User.id == i % 200 + 1))

    def counted() -> None:
        with cl.count_statements(db) as log:
            loop()
        assert log.count == LOOP, log.count

    # interleave the two so drift on a shared machine hits both alike
    plain, with_counter = [], []
    for _ in range(5):
        plain += cl.benchmark(loop, warmup=1, repeats=5, number=1).runs_s
        with_counter += cl.benchmark(counted, warmup=1, repeats=5, number=1).runs_s
    a, b = statistics.median(plain), statistics.median(with_counter)
    return a * 1000, b * 1000, (b / a - 1) * 100


def _python(code: str, env: dict[str, str]) -> float:
    """Seconds a fresh interpreter takes to run ``code`` (the import cost is subtracted)."""
    script = (
        "import time, course_lib.backends as b\n"
        "t = time.perf_counter()\n" + code + "\nprint(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def embedded_start_times() -> dict[str, float]:
    """Cold, warm and restart times of the embedded PostgreSQL, in seconds."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pgserver-"))
    env = {k: v for k, v in os.environ.items() if k != "COURSE_POSTGRES_URL"}
    env["COURSE_DATA_DIR"] = str(folder)
    start = "b.embedded_postgres()"
    times = {"cold start (initdb + start)": _python(start, env)}
    times["warm start (server already running)"] = statistics.median(
        _python(start, env) for _ in range(3)
    )
    _python("b.embedded_postgres(); b.stop_embedded_postgres()", env)
    times["restart (stopped server, data kept)"] = _python(start, env)
    _python("b.embedded_postgres(); b.stop_embedded_postgres()", env)
    return times


def main() -> int:
    """Print the figures."""
    print(f"Counter overhead on a {LOOP:,}-statement loop (median of 25 runs each):")
    for name in cl.settings.choose_backends():
        db = dataset(name, cl.settings.lookup_scale("small"))
        plain, counted, overhead = counter_overhead(db)
        print(
            f"  {name:<10} without {plain:8.1f} ms   with {counted:8.1f} ms   "
            f"overhead {overhead:+5.1f} %   (target < 10 %)"
        )
    print("Embedded PostgreSQL (pgserver), each in a fresh process:")
    for label, seconds in embedded_start_times().items():
        print(f"  {label:<38} {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
