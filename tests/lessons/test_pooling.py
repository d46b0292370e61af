"""Tests for course_lib.lessons.pooling: loads, faults, logs, PgBouncer, and the exercise check.

Faults are done only to connections the test opened, or to a private server of its own.
The exercise check is fed every naive answer notebook 09 warns about; each must fail with a
reason naming the mistake, and the solution must pass, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import doctest
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from course_lib import pgbouncer as pb
from course_lib.backends import Backend
from course_lib.lessons import pooling
from course_lib.settings import CourseConfigError

needs_binary = pytest.mark.skipif(pb.pgbouncer_binary() is None, reason="no pgbouncer binary")


@pytest.fixture(params=["sqlite_db", "pg_service"])
def db(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["pg_service", "pg_embedded"])
def pg_db(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def server() -> Iterator[pooling.PrivateServer]:
    pytest.importorskip("pgserver")
    private = pooling.private_server()
    yield private
    private.stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_bouncers() -> Iterator[None]:
    yield
    pb.stop_pgbouncers()


def test_module_doctests() -> None:
    assert doctest.testmod(pooling).failed == 0


def test_outcome_names_the_driver_cause(pg_service: Backend) -> None:
    engine = create_engine(pg_service.sync_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("select * from no_such_table"))
    except Exception as exc:
        assert pooling.outcome(exc).startswith("ProgrammingError (UndefinedTable): relation")
    engine.dispose()


# ---------------------------------------------------------------- what a connection costs


def test_connections_opened(db: Backend) -> None:
    fresh = pooling.connections_opened(create_engine(db.sync_url, poolclass=NullPool), 4)
    kept = pooling.connections_opened(create_engine(db.sync_url), 4)
    assert (fresh["connects"], kept["connects"]) == (4, 1)
    if db.name == "postgresql":
        assert (fresh["backends"], kept["backends"]) == (4, 1)


def test_handshake(pg_db: Backend) -> None:
    shake = pooling.connect_handshake(pg_db)
    assert {"server_version", "client_encoding", "TimeZone"} <= set(shake.parameters)
    assert shake.parameters["application_name"] == "course handshake"
    assert shake.backend_pid and shake.total_ms > 0
    steps = [step for step, _, _ in shake.steps]
    assert steps[-1] == "startup parameters until ready"
    assert steps[-2].startswith("startup and authentication")
    forked = [step for step in steps if step.endswith(pooling.FORK_MARK)]
    if shake.transport == "unix socket":
        assert shake.network_round_trips == 3  # TCP + TLS request + trust's one exchange
        assert forked == [steps[-2]]  # the startup message is the first reply
    else:
        assert forked == [steps[1]] and steps[1].startswith("TLS request")  # the first reply
        if "said no" in shake.tls:  # the reason is read from the server, never guessed
            assert shake.tls == "the server said no (ssl = off)"


def test_handshake_reads_ssl_off_over_tcp(pg_service: Backend) -> None:
    """The service answers the TLS request with no; the probe says why from SHOW ssl."""
    engine = create_engine(pg_service.sync_url, poolclass=NullPool)
    with engine.connect() as conn:
        ssl = conn.scalar(text("show ssl"))
    engine.dispose()
    shake = pooling.connect_handshake(pg_service)
    if shake.transport.startswith("TCP") and ssl == "off":
        assert shake.tls == "the server said no (ssl = off)"
        assert [s for s, _, _ in shake.steps][1] == f"TLS request {pooling.FORK_MARK}"


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_handshake_with_a_password(server: pooling.PrivateServer, method: str) -> None:
    """The probe answers md5 and SCRAM-SHA-256 as libpq would (a role of the private server)."""
    role = f"pw_{method[:3]}"
    admin = create_engine(server.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"SET password_encryption = '{method}'"))  # a fixed literal
        if not conn.scalar(text("select 1 from pg_roles where rolname = :r"), {"r": role}):
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'secret-pw'"))
        hba = conn.scalar(text("show hba_file"))
    admin.dispose()
    from pathlib import Path

    path = Path(hba)
    lines = path.read_text()
    rule = f"local all {role} {method}\n"
    if rule not in lines:
        path.write_text(rule + lines)
        admin = create_engine(server.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("select pg_reload_conf()"))
        admin.dispose()
        time.sleep(0.3)
    url = server.url.set(username=role, password="secret-pw")
    probe = Backend("postgresql", url, url.set(drivername="postgresql+asyncpg"), "x", "postgres")
    shake = pooling.connect_handshake(probe)
    assert shake.auth == {"scram-sha-256": "SCRAM-SHA-256", "md5": "md5"}[method]
    auth_trips = next(t for s, _, t in shake.steps if s.startswith("startup and authentication"))
    assert auth_trips == (3 if method == "scram-sha-256" else 2)
    wrong = server.url.set(username=role, password="wrong")
    with pytest.raises(ConnectionError, match="password authentication failed"):
        pooling.connect_handshake(Backend("postgresql", wrong, wrong, "x", "postgres"))


def test_simulate_network_charges_connects_and_pings(pg_service: Backend) -> None:
    engine = create_engine(pg_service.sync_url, poolclass=NullPool)
    with pooling.simulate_network(engine, 20.0, connect_round_trips=3):
        start = time.perf_counter()
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        elapsed = time.perf_counter() - start
    assert elapsed >= (3 + 3) * 0.020  # connect (3) + BEGIN, the statement, ROLLBACK
    pinged = create_engine(pg_service.sync_url, pool_pre_ping=True)
    with pinged.connect() as conn:
        conn.execute(text("select 1"))
    with pooling.simulate_network(pinged, 20.0, 3), pooling.count_pings(pinged) as pings:
        start = time.perf_counter()
        with pinged.connect() as conn:
            pass
        assert time.perf_counter() - start >= 0.020 and pings["pings"] == 1
    engine.dispose()
    pinged.dispose()


# ------------------------------------------------------------------------------ sizing


def test_threads_peak_at_pool_size_plus_overflow(db: Backend) -> None:
    engine = create_engine(db.sync_url, pool_size=2, max_overflow=2, pool_timeout=10)
    load = pooling.run_threads(engine, [(0.0, 7)], hold_s=0.2)
    assert load.peak_checked_out == 4 and load.timeouts == 0 and load.waited == 3
    assert load.watch.counts()["connect"] == 4 and load.peak_open == 4
    assert "peak 4 checked out (pool_size 2 + max_overflow 2)" in load.summary()
    frame = load.timeline()
    assert frame["checked_out"].max() == 4 and frame["checked_out"].iloc[-1] == 0
    engine.dispose()


def test_tasks_peak_at_pool_size_plus_overflow(db: Backend) -> None:
    async def go() -> pooling.Load:
        engine = create_async_engine(db.async_url, pool_size=1, max_overflow=2, pool_timeout=10)
        try:
            return await pooling.run_tasks(engine, [(0.0, 6)], hold_s=0.2)
        finally:
            await engine.dispose()

    load = asyncio.run(go())
    assert load.peak_checked_out == 3 and load.timeouts == 0 and load.waited == 3


def test_connecting_is_not_waiting(pg_service: Backend) -> None:
    """Requests that open a new connection (slow here: 3 simulated round trips of 100 ms) are
    not counted, or drawn, as waiting for one to come back."""
    engine = create_engine(pg_service.sync_url, pool_size=4, max_overflow=0, pool_timeout=10)
    with pooling.simulate_network(engine, 100.0, connect_round_trips=3):
        load = pooling.run_threads(engine, [(0.0, 4)], hold_s=0.1)
    assert load.timeouts == 0 and load.waited == 0
    assert all(r.connected and r.wait >= 0.3 and r.queued == 0 for r in load.requests)
    assert load.timeline()["waiting"].max() == 0
    engine.dispose()


def test_async_connect_time_is_recorded(db: Backend) -> None:
    async def go() -> pooling.Load:
        engine = create_async_engine(db.async_url, pool_size=2, max_overflow=0, pool_timeout=10)
        try:
            return await pooling.run_tasks(engine, [(0.0, 4)], hold_s=0.2)
        finally:
            await engine.dispose()

    load = asyncio.run(go())
    assert sum(r.connected for r in load.requests) == 2
    assert load.waited == 2  # two connected, two waited for a release


def test_timeouts_then_recovery(db: Backend) -> None:
    engine = create_engine(db.sync_url, pool_size=1, max_overflow=1, pool_timeout=0.1)
    load = pooling.run_threads(engine, [(0.0, 4), (1.0, 2)], hold_s=0.6)
    waves = [sorted(r.error or "ok" for r in load.requests if r.wave == w) for w in (0, 1)]
    assert waves == [["TimeoutError", "TimeoutError", "ok", "ok"], ["ok", "ok"]]
    assert all(r.wait >= 0.1 for r in load.requests if r.error == "TimeoutError")
    assert load.first_error() == (
        "QueuePool limit of size 1 overflow 1 reached, connection timed out, timeout 0.10"
    )
    fig = pooling.load_chart(load, "test")
    assert "TimeoutError" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    engine.dispose()


def test_pool_limits_unbounded_overflow() -> None:
    engine = create_engine("sqlite:///x.sqlite", pool_size=2, max_overflow=-1)
    assert pooling.pool_limits(engine)["most"] == math.inf


def test_pool_timeout_is_not_a_query_timeout(pg_service: Backend) -> None:
    engine = create_engine(pg_service.sync_url, pool_timeout=0.1)
    result, seconds = pooling.timed_query(engine, "select pg_sleep(:s)", s=0.3)
    assert result == "ok" and seconds >= 0.3
    engine.dispose()


def test_server_limits(pg_service: Backend) -> None:
    limits = pooling.server_limits(pg_service)
    reserved = limits["superuser_reserved_connections"] + limits["reserved_connections"]
    assert limits["for_other_roles"] == limits["max_connections"] - reserved
    assert limits["in_use_now"] >= 1


def test_private_server_limit_and_restart(server: pooling.PrivateServer) -> None:
    server.configure(max_connections=8)
    assert server.setting("max_connections") == "8"
    allowed = pooling.server_limits(server.url)["for_other_roles"]
    engines = [create_engine(server.role_url("app"), pool_size=2, max_overflow=2) for _ in range(2)]
    result = pooling.open_until_refused(engines)
    assert result["wanted"] == 8 and result["opened"] == allowed == 5
    assert "remaining connection slots are reserved" in result["refused"]
    plain = pooling.restart_fault(create_engine(server.url, pool_size=2), server)
    pinged = pooling.restart_fault(
        create_engine(server.url, pool_size=2, pool_pre_ping=True), server
    )
    assert (
        plain.outcomes[0].startswith("OperationalError (AdminShutdown)")
        and plain.outcomes[1] == "ok"
    )
    assert pinged.outcomes == ["ok", "ok"] and server.restarts >= 3


def test_private_server_watchdog_cleans_up_after_a_killed_kernel() -> None:
    """A kernel killed (not shut down) cannot stop its private server: the watchdog beside it
    shuts the server down and deletes its folder once the kernel has died."""
    pytest.importorskip("pgserver")
    import subprocess
    import sys
    from pathlib import Path

    from course_lib.backends import _alive

    script = (
        "import time\n"
        "from course_lib.lessons import pooling\n"
        "server = pooling.private_server()\n"
        "pid = (server.folder / 'data' / 'postmaster.pid').read_text().split()[0]\n"
        "print(server.folder, pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout is not None
        folder_text, pid_text = kernel.stdout.readline().split()
        folder, postmaster = Path(folder_text), int(pid_text)
        assert folder.is_dir() and _alive(postmaster)
        kernel.kill()  # the process this test started: no atexit runs
        kernel.wait(10)
        deadline = time.monotonic() + 30
        while (folder.exists() or _alive(postmaster)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not folder.exists() and not _alive(postmaster)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(10)


# ------------------------------------------------------------------------------ faults


def test_terminate_pooled_only_this_pools_connections(pg_service: Backend) -> None:
    bystander = create_engine(pg_service.sync_url, poolclass=NullPool)
    with bystander.connect() as other:
        other_pid = other.scalar(text("select pg_backend_pid()"))
        plain = pooling.terminate_pooled(
            create_engine(pg_service.sync_url, pool_size=2), pg_service
        )
        pinged = pooling.terminate_pooled(
            create_engine(pg_service.sync_url, pool_size=2, pool_pre_ping=True), pg_service
        )
        assert other.scalar(text("select pg_backend_pid()")) == other_pid  # left alone
    bystander.dispose()
    assert plain.outcomes[0].startswith("OperationalError (AdminShutdown)")
    assert "connection_invalidated=True" in plain.outcomes[0]
    assert plain.outcomes[1:] == ["ok", "ok"] and pinged.outcomes == ["ok", "ok", "ok"]
    assert plain.events["invalidate"] == 1 and "request 1: OperationalError" in str(plain)


def test_idle_session_timeout(pg_service: Backend) -> None:
    idle = {"options": "-c idle_session_timeout=200"}
    plain = pooling.idle_session_fault(
        create_engine(pg_service.sync_url, connect_args=idle), pg_service
    )
    recycled = pooling.idle_session_fault(
        create_engine(pg_service.sync_url, connect_args=idle, pool_recycle=0.1), pg_service
    )
    assert plain.outcomes[0].startswith("OperationalError (IdleSessionTimeout)")
    assert recycled.outcomes == ["ok", "ok"] and recycled.events["invalidate"] == 0


# ---------------------------------------------------------------------------- watching


def test_pool_log_debug_shows_checkouts_true_does_not(db: Backend) -> None:
    for echo, expected in (("debug", 2), (True, 0)):
        with pooling.pool_log() as log:
            engine = create_engine(db.sync_url, echo_pool=echo)
            for _ in range(2):
                with engine.connect() as conn:
                    conn.execute(text("select 1"))
            engine.dispose()
        assert sum("checked out from pool" in line for _, line in log.lines) == expected
        assert not any("0x" in line for _, line in log.lines)
        assert any("Pool disposed" in line for _, line in log.lines)


def test_count_pings_and_default_pools(sqlite_db: Backend) -> None:
    engine = create_engine(sqlite_db.sync_url, pool_pre_ping=True)
    with engine.connect():
        pass
    with pooling.count_pings(engine) as pings:
        for _ in range(3):
            with engine.connect():
                pass
    assert pings["pings"] == 3 and "do_ping" not in vars(engine.dialect)
    pools = pooling.default_pools()
    assert pools.loc["sqlite (file)", "sync pool"] == "QueuePool"
    assert pools.loc["sqlite (file)", "async pool"] == "AsyncAdaptedQueuePool"
    assert pools.loc["sqlite (:memory:)", "sync pool"] == "SingletonThreadPool"
    assert pools.loc["postgresql", "async pool"] == "AsyncAdaptedQueuePool"


def _pid(engine: Any) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("select pg_backend_pid()"))


def _fixed_child(engine: Any) -> int:
    engine.dispose(close=False)
    return _pid(engine)


def test_fork_shares_the_session_until_dispose_close_false(pg_service: Backend) -> None:
    engine = create_engine(pg_service.sync_url, pool_size=1)
    parent = _pid(engine)
    assert pooling.run_in_fork(_pid, engine) == parent
    assert pooling.run_in_fork(_fixed_child, engine) != parent
    assert _pid(engine) == parent
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        pooling.run_in_fork(lambda: 1 / 0)
    engine.dispose()


def test_run_in_fork_never_hangs() -> None:
    """A child that never answers is killed after the timeout; one that dies says so."""
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="killed"):
        pooling.run_in_fork(time.sleep, 30, timeout=1.0)
    assert time.perf_counter() - start < 10
    with pytest.raises(RuntimeError, match=r"exited \(code 3\) without a result"):
        pooling.run_in_fork(os._exit, 3)


# --------------------------------------------------------------------------- PgBouncer


def test_pgbouncer_cells_print_one_line_without_one(
    pg_service: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def absent(_db: Backend) -> None:
        raise CourseConfigError("No PgBouncer here: install it.")

    monkeypatch.setattr(pooling, "pgbouncer", absent)
    pooling.show_pgbouncer(pg_service)
    assert asyncio.run(pooling.prepared_statements_behind_pgbouncer(pg_service, {})) is None
    assert pooling.pgbouncer_throughput(pg_service, lambda engine: None) is None
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Skipped: No PgBouncer here: install it."] * 3


@needs_binary
def test_asyncpg_prepared_statements_behind_pgbouncer(
    pg_service: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(pb.PGBOUNCER_ENV, raising=False)
    import uuid

    def name() -> str:
        return f"__asyncpg_{uuid.uuid4()}__"

    variants = {
        "asyncpg defaults": {},
        "names": {"prepared_statement_name_func": name},
        "cache 0": {"prepared_statement_cache_size": 0},
        "fix": {"prepared_statement_cache_size": 0, "prepared_statement_name_func": name},
        "asyncpg cache 0": {"statement_cache_size": 0},
    }
    frame = asyncio.run(pooling.prepared_statements_behind_pgbouncer(pg_service, variants))
    assert frame is not None
    second, reused = pooling.SITUATIONS
    assert frame.loc["asyncpg defaults", second] == "DuplicatePreparedStatementError"
    assert frame.loc["asyncpg defaults", reused] == "InvalidSQLStatementNameError"
    assert frame.loc["names", second] == "ok"  # the docs' recipe: no collisions...
    assert frame.loc["names", reused] == "InvalidSQLStatementNameError"  # ...but the cache
    assert frame.loc["cache 0", second] == "DuplicatePreparedStatementError"
    assert frame.loc["cache 0", reused] == "ok"
    assert (frame.loc["fix"] == "ok").all()
    assert pooling.asyncpg_unnamed_when_uncached()  # asyncpg 0.31+ in the lock file
    assert (frame.loc["asyncpg cache 0"] == "ok").all()


def test_expected_behind_pgbouncer() -> None:
    def name() -> str:
        return "x"

    ok = dict.fromkeys(pooling.SITUATIONS, "ok")
    expect = pooling.expected_behind_pgbouncer
    assert set(expect({}, tracks=False).values()) == pooling.ASYNCPG_ERRORS
    assert expect({}, tracks=True) is None  # not known here: only the fixes are asserted
    both = {"prepared_statement_cache_size": 0, "prepared_statement_name_func": name}
    assert expect(both, tracks=False) == ok == expect(both, tracks=True)
    assert expect({"prepared_statement_name_func": name}, tracks=False) == {
        "second app process": "ok",
        "statement reused in a later transaction": "InvalidSQLStatementNameError",
    }
    if pooling.asyncpg_unnamed_when_uncached():
        assert expect({"statement_cache_size": 0}, tracks=False) == ok


# ---------------------------------------------------------------------------- exercise


def _solution(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    size = min(concurrency, server_limit // processes)
    rounds = math.ceil(concurrency / size)
    return {"pool_size": size, "max_overflow": 0, "pool_timeout": 5 * rounds * request_s}


def _pool_size_alone(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": server_limit // processes}  # the errata: max_overflow stays 10


def _whole_limit(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": server_limit, "max_overflow": 0}  # forgets the other processes


def _too_small_impatient(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return {"pool_size": 1, "max_overflow": 0, "pool_timeout": request_s / 2}


def _too_small(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": 1, "max_overflow": 0}


def _right_size_impatient(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return {**_solution(concurrency, request_s, server_limit, processes), "pool_timeout": 0.05}


def _not_a_dict(concurrency: int, request_s: float, server_limit: int, processes: int) -> list:
    return [server_limit // processes, 0]


def _hard_coded(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": 2, "max_overflow": 0}  # fits the second app's limit, not the first's


def _one_fewer(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": server_limit // processes - 1, "max_overflow": 0}


def _the_concurrency(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": concurrency, "max_overflow": 0}  # forgets the limit


def _unlimited_overflow(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return {"pool_size": server_limit // processes, "max_overflow": -1}


def _float_share(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": server_limit / processes, "max_overflow": 0}


def _nan_size(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {"pool_size": float("nan"), "max_overflow": 0}


def _overflow_below_minus_one(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return {"pool_size": server_limit // processes, "max_overflow": -2}


def _infinite_timeout(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return {**_solution(concurrency, request_s, server_limit, processes), "pool_timeout": math.inf}


def _zero_timeout(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    return {**_solution(concurrency, request_s, server_limit, processes), "pool_timeout": 0}


async def _async_solution(
    concurrency: int, request_s: float, server_limit: int, processes: int
) -> dict:
    return _solution(concurrency, request_s, server_limit, processes)


def _stub(concurrency: int, request_s: float, server_limit: int, processes: int) -> dict:
    raise NotImplementedError("your turn")


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (_pool_size_alone, "over the limit", "max_overflow defaults to 10"),
        (_whole_limit, "over the limit", "processes"),
        (_too_small_impatient, "timeouts", "pool_timeout must outlast"),
        (_right_size_impatient, "timeouts", "TimeoutError"),
        (_too_small, "slow checkouts", "p95 wait"),
        (_hard_coded, "slow checkouts", "4 connections per process fit the limit, one per"),
        (_one_fewer, "slow checkouts", "the pool is smaller than it may be"),
        (_the_concurrency, "over the limit", "4 × that must fit"),
        (_unlimited_overflow, "over the limit", "2 + unlimited (-1)"),
        (_not_a_dict, "wrong settings", "return a dict"),
        (_stub, "not attempted", "Not attempted yet"),
    ],
)
def test_check_rejects_naive_answers(db: Backend, answer: Any, status: str, words: str) -> None:
    verdict = asyncio.run(pooling.acheck_pool(answer, db))
    assert verdict.status == status, verdict.message
    assert words in verdict.message and not verdict.passed


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (_float_share, "pool_size must be a whole number of connections (an int), not 4.0"),
        (_nan_size, "pool_size must be a whole number of connections (an int), not nan"),
        (_overflow_below_minus_one, "max_overflow must be at least -1 (-1 means unlimited)"),
        (_infinite_timeout, "pool_timeout must be a finite number of seconds above 0, not inf"),
        (_zero_timeout, "pool_timeout must be a finite number of seconds above 0, not 0"),
    ],
)
def test_check_names_settings_a_pool_would_refuse(
    sqlite_db: Backend, answer: Any, words: str
) -> None:
    """Refused before any load runs: no ValueError or RecursionError from inside the pool."""
    start = time.perf_counter()
    verdict = asyncio.run(pooling.acheck_pool(answer, sqlite_db))
    assert verdict.status == "wrong settings" and words in verdict.message, verdict.message
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("where", ["sqlite_db", "pg_service", "pg_embedded"])
def test_check_passes_the_solution(where: str, request: pytest.FixtureRequest) -> None:
    verdict = asyncio.run(pooling.acheck_pool(_solution, request.getfixturevalue(where)))
    assert verdict.passed, verdict.message
    assert verdict.message.startswith("✓ Passed: no checkout timed out")


def test_check_accepts_an_async_answer(sqlite_db: Backend) -> None:
    assert asyncio.run(pooling.acheck_pool(_async_solution, sqlite_db)).passed


def test_scenarios_bounds_are_derived() -> None:
    """The first app: a connection per concurrent request fits, so the right pool never
    waits and the bound is half a request; the second: the limit binds (two rounds)."""
    first, second = pooling.SCENARIOS
    assert (first.best, first.waiting_rounds, first.ideal_wait_s) == (4, 0, 0.0)
    assert first.p95_bound_s == pytest.approx(first.request_s / 2)
    assert first.best == first.concurrency == first.per_process
    assert (second.best, second.waiting_rounds) == (2, 2)
    assert second.ideal_wait_s == pytest.approx(2 * second.request_s)
    assert second.p95_bound_s == pytest.approx(3.5 * second.request_s)
    assert all(sc.request_s >= 0.3 for sc in pooling.SCENARIOS)  # margins for a busy machine
    # a hard-coded pool cannot fit both: the first needs 4 per process, the second allows 2
    assert first.per_process * second.processes > second.server_limit
    assert pooling.p95([0.1] * 19 + [5.0]) == 0.1
