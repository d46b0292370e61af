"""Connection pooling: what a connection costs, how many a pool opens, and which faults it survives.

>>> from sqlalchemy import create_engine
>>> engine = create_engine("sqlite:///course.sqlite", pool_size=2, max_overflow=1)
>>> pool_limits(engine)
{'pool_size': 2, 'max_overflow': 1, 'pool_timeout': 30.0, 'most': 3}

Machinery for notebook 09:

- what a connection is made of: :func:`connect_handshake` speaks PostgreSQL's startup
  protocol itself and times each part (transport, TLS, authentication, startup parameters);
  :func:`simulate_network` charges a simulated round trip to connects and pings as well as
  to statements;
- pools under load: :class:`PoolWatch` records pool events with timestamps,
  :func:`run_threads` / :func:`run_tasks` drive concurrent requests (threads, tasks) and
  return a :class:`Load`, and :func:`load_chart` draws, once a load has run, checked-out
  connections and requests waiting for one to come back (not those opening one) over time;
- what a server allows: :func:`server_limits`, a throwaway :class:`PrivateServer` that is
  yours to reconfigure and restart, and :func:`open_until_refused`;
- real faults: :func:`terminate_pooled` (``pg_terminate_backend`` on this engine's own
  connections only), :func:`idle_session_fault` and :func:`restart_fault`;
- watching: :func:`pool_log` (``echo_pool`` lines, addresses normalised),
  :func:`count_pings`, :func:`default_pools`, :func:`run_in_fork`;
- PgBouncer: :func:`show_pgbouncer`, :func:`prepared_statements_behind_pgbouncer`,
  :func:`pgbouncer_throughput`;
- the exercise: :data:`SCENARIOS`, :func:`run_sizing` and :func:`acheck_pool`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import hmac
import inspect
import logging
import math
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..backends import Backend, scratch_sibling
from ..claims import claim
from ..exercises import CheckResult, acheck
from ..measure import compare, simulate_round_trip
from ..pgbouncer import PgBouncer, admin, pgbouncer, reported_version
from ..plots import STYLE, bar_chart
from ..settings import CourseConfigError, data_dir

__all__ = [
    "HOLD_S",
    "SCENARIOS",
    "Handshake",
    "Load",
    "PoolLog",
    "PoolWatch",
    "PrivateServer",
    "Request",
    "Scenario",
    "SizingReport",
    "acheck_pool",
    "connect_handshake",
    "connections_opened",
    "count_pings",
    "default_pools",
    "describe",
    "idle_session_fault",
    "load_chart",
    "marked_connects",
    "open_until_refused",
    "outcome",
    "p95",
    "pgbouncer_throughput",
    "pool_limits",
    "pool_log",
    "prepared_statements_behind_pgbouncer",
    "private_server",
    "restart_fault",
    "run_in_fork",
    "run_sizing",
    "run_tasks",
    "run_threads",
    "server_limits",
    "show_pgbouncer",
    "simulate_network",
    "terminate_pooled",
    "timed_query",
    "took_connect",
]

#: How long a request holds its connection in the sizing demonstrations (seconds).
HOLD_S = 0.3
#: Waits shorter than this are not drawn as waiting (a thread or task being scheduled).
WAIT_SHOWN_S = 0.005
#: Marks the handshake step whose reply comes from the server process forked for you.
FORK_MARK = "(+ fork)"
#: The mark a pool record's ``info`` carries until the checkout that opened it takes it off.
CONNECT_KEY = "course_new_connection"


def outcome(exc: BaseException | None) -> str:
    """One deterministic line for a request's fate: "ok", or the error and the driver's cause.

    >>> outcome(None)
    'ok'
    >>> outcome(ValueError("bad\\nsecond line"))
    'ValueError: bad'
    """
    if exc is None:
        return "ok"
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) if orig is not None else None
    inner = cause or orig
    if inner is None:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return f"{type(exc).__name__} ({type(inner).__name__}): {_first_line(inner)}"


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip()
    line = text_.splitlines()[0] if text_ else type(exc).__name__
    if "FATAL:" in line:  # "connection to server on socket /path/... failed: FATAL:  why"
        line = "FATAL: " + line.split("FATAL:", 1)[1].strip()
    return line[:160]


def pool_limits(engine: Engine | AsyncEngine) -> dict[str, Any]:
    """The pool's sizing settings, and the most connections it may open (``most``)."""
    pool = engine.pool
    size = pool.size() if hasattr(pool, "size") else 0
    overflow = getattr(pool, "_max_overflow", 0)
    most = math.inf if overflow < 0 else size + overflow
    return {
        "pool_size": size,
        "max_overflow": overflow,
        "pool_timeout": getattr(pool, "_timeout", None),
        "most": most,
    }


# ----------------------------------------------------------------- what a connect is made of


@dataclass
class Handshake:
    """PostgreSQL's startup, step by step, as measured by :func:`connect_handshake`."""

    transport: str
    #: (step, milliseconds, round trips the client waited for)
    steps: list[tuple[str, float, int]]
    auth: str
    tls: str
    parameters: dict[str, str]
    backend_pid: int | None

    @property
    def total_ms(self) -> float:
        """The whole handshake, until the server is ready for a query."""
        return sum(ms for _, ms, _ in self.steps)

    @property
    def network_round_trips(self) -> int:
        """Round trips the same connect costs over TCP: the TCP handshake, the TLS request
        (libpq asks even when the server says no) and the authentication exchange."""
        auth = sum(trips for step, _, trips in self.steps if step.startswith("startup and"))
        tls = sum(trips for step, _, trips in self.steps if step.startswith("TLS"))
        return 1 + max(tls, 1) + auth

    def table(self) -> pd.DataFrame:
        """One row per step: what it does, its time, the round trips it waited for."""
        frame = pd.DataFrame(self.steps, columns=["step", "ms", "round trips"])
        frame["ms"] = frame["ms"].round(3)
        return frame


def _message(sock: socket.socket | ssl.SSLSocket) -> tuple[bytes, bytes]:
    head = _read(sock, 5)
    kind, length = head[:1], struct.unpack("!I", head[1:])[0]
    return kind, _read(sock, length - 4)


def _read(sock: socket.socket | ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection during the handshake")
        data += chunk
    return data


def _packet(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _error_text(payload: bytes) -> str:
    fields = dict(
        (part[:1], part[1:].decode(errors="replace")) for part in payload.split(b"\0") if part
    )
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '')}"


def _scram(sock: Any, password: str, mechanisms: list[str]) -> int:
    """SCRAM-SHA-256 (RFC 5802/7677), as libpq does it; returns the round trips it took."""
    if "SCRAM-SHA-256" not in mechanisms:
        raise ConnectionError(f"unsupported SASL mechanisms {mechanisms}")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    sock.sendall(_packet(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    kind, payload = _message(sock)
    if kind == b"E":
        raise ConnectionError(_error_text(payload))
    server_first = payload[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}".encode()
    sock.sendall(_packet(b"p", final))
    return 2


def connect_handshake(db: Backend, application_name: str = "course handshake") -> Handshake:
    """Open one PostgreSQL connection by hand, timing each part of the startup protocol.

    The parts: the transport (a TCP connect, or a unix socket), the TLS request over TCP
    (libpq asks by default; the server says yes or no), the startup message and the
    authentication exchange (trust answers at once; md5 and SCRAM-SHA-256 are answered with
    the URL's password), then the server's startup parameters and backend key until it is
    ready for a query. The postmaster forks the server process as it accepts the connection,
    so the first reply (to the TLS request over TCP, to the startup message over a unix
    socket) waits for the fork: that step is marked ``(+ fork)``. When the server refuses TLS,
    the probe reads why (``SHOW ssl``) before closing with a Terminate message.
    """
    if db.name != "postgresql":
        raise CourseConfigError(
            "connect_handshake speaks PostgreSQL's protocol: pass course.postgres"
        )
    url = db.sync_url
    host = str(url.query.get("host") or url.host or "127.0.0.1")
    port = int(url.port or 5432)
    user, password = url.username or "postgres", url.password or ""
    steps: list[tuple[str, float, int]] = []
    clock = time.perf_counter
    start = clock()
    if host.startswith("/"):
        sock: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(f"{host}/.s.PGSQL.{port}")
        transport, trips = "unix socket", 0
    else:
        sock = socket.create_connection((host, port), timeout=10)
        transport, trips = f"TCP {host}:{port}", 1
    steps.append((f"{transport.split()[0]} connect", (clock() - start) * 1000, trips))
    tls = "not asked (unix socket)"
    if transport != "unix socket":
        start = clock()
        sock.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
        answer = _read(sock, 1)
        trips = 1
        if answer == b"S":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # libpq's sslmode=prefer does not verify
            sock = context.wrap_socket(sock, server_hostname=host)
            tls = sock.version() or "TLS"
            trips += 1
        else:
            tls = "the server said no"
        label = "TLS request" + (" and handshake" if answer == b"S" else "")
        steps.append((f"{label} {FORK_MARK}", (clock() - start) * 1000, trips))
    start = clock()
    options = {
        "user": user,
        "database": url.database or "postgres",
        "application_name": application_name,
    }
    body = (
        struct.pack("!I", 196608)
        + b"".join(f"{k}\0{v}\0".encode() for k, v in options.items())
        + b"\0"
    )
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    trips, auth = 1, "trust (no password asked)"
    parameters: dict[str, str] = {}
    backend_pid = None
    ready_from = None
    while True:
        kind, payload = _message(sock)
        if kind == b"E":
            sock.close()
            raise ConnectionError(_error_text(payload))
        if kind == b"R":
            code = struct.unpack("!I", payload[:4])[0]
            if code == 0:
                label = "startup and authentication"
                if transport == "unix socket":  # the first reply: the forked process's
                    label += f" {FORK_MARK}"
                steps.append((label, (clock() - start) * 1000, trips))
                ready_from = clock()
            elif code == 3:
                auth = "password (cleartext)"
                sock.sendall(_packet(b"p", password.encode() + b"\0"))
                trips += 1
            elif code == 5:
                auth = "md5"
                inner = hashlib.md5((password + user).encode()).hexdigest()
                digest = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                sock.sendall(_packet(b"p", b"md5" + digest.encode() + b"\0"))
                trips += 1
            elif code == 10:
                auth = "SCRAM-SHA-256"
                mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
                trips += _scram(sock, password, mechanisms)
            elif code in (11, 12):
                continue
            else:
                raise ConnectionError(f"authentication method {code} is not supported here")
        elif kind == b"S":
            name, value = payload.split(b"\0")[:2]
            parameters[name.decode()] = value.decode()
        elif kind == b"K":
            backend_pid = struct.unpack("!I", payload[:4])[0]
        elif kind == b"Z":
            break
    steps.append(("startup parameters until ready", (clock() - (ready_from or start)) * 1000, 0))
    if tls == "the server said no":  # why: the server's own setting, read on this connection
        tls += f" (ssl = {_simple_query(sock, 'show ssl')})"
    with contextlib.suppress(OSError):
        sock.sendall(_packet(b"X", b""))  # Terminate
    sock.close()
    return Handshake(transport, steps, auth, tls, parameters, backend_pid)


def _simple_query(sock: Any, sql: str) -> str:
    """Run a constant query with the simple query protocol; the first value it returns."""
    sock.sendall(_packet(b"Q", sql.encode() + b"\0"))
    value = ""
    while True:
        kind, payload = _message(sock)
        if kind == b"D" and not value:  # DataRow: column count, then (length, bytes) each
            length = struct.unpack("!i", payload[2:6])[0]
            value = payload[6 : 6 + length].decode() if length >= 0 else "NULL"
        elif kind == b"E":
            value = _error_text(payload)
        elif kind == b"Z":
            return value


@contextlib.contextmanager
def simulate_network(engine: Engine, ms: float, connect_round_trips: int) -> Iterator[None]:
    """A simulated network on ``engine``: ``ms`` per round trip for statements, BEGIN/COMMIT/
    ROLLBACK (:func:`course_lib.simulate_round_trip`), each new connection
    (``connect_round_trips`` of them: see :attr:`Handshake.network_round_trips`) and each
    pre-ping (one round trip).
    """
    seconds = ms / 1000

    def on_connect(*_args: Any) -> None:
        time.sleep(seconds * connect_round_trips)

    dialect = engine.dialect
    original = dialect.do_ping

    def slow_ping(dbapi_connection: Any) -> bool:
        time.sleep(seconds)
        return original(dbapi_connection)

    event.listen(engine, "do_connect", on_connect)
    with _ping_replaced(dialect, slow_ping):
        try:
            with simulate_round_trip(engine, ms):
                yield
        finally:
            event.remove(engine, "do_connect", on_connect)


@contextlib.contextmanager
def _ping_replaced(dialect: Any, ping: Callable[[Any], bool]) -> Iterator[None]:
    """Put ``ping`` in place of ``dialect.do_ping`` for the block; nested uses stack."""
    before = vars(dialect).get("do_ping")
    dialect.do_ping = ping
    try:
        yield
    finally:
        if before is None:
            del dialect.do_ping
        else:
            dialect.do_ping = before


@contextlib.contextmanager
def count_pings(engine: Engine) -> Iterator[Counter[str]]:
    """Count the pre-pings ``engine``'s pool sends (``pool_pre_ping=True``), in ``["pings"]``."""
    counted: Counter[str] = Counter()
    dialect = engine.dialect
    original = dialect.do_ping

    def ping(dbapi_connection: Any) -> bool:
        counted["pings"] += 1
        return original(dbapi_connection)

    with _ping_replaced(dialect, ping):
        yield counted


def connections_opened(engine: Engine, requests: int) -> dict[str, Any]:
    """Run ``requests`` requests one after another: new connections, and PostgreSQL backends.

    A pooled engine connects once; ``NullPool`` connects for every request. On PostgreSQL
    each connection is a server process of its own (``pg_backend_pid()``).
    """
    with PoolWatch(engine) as watch:
        pids = set()
        for _ in range(requests):
            with engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    pids.add(conn.scalar(text("select pg_backend_pid()")))
                else:
                    conn.execute(text("select 1"))
    return {"requests": requests, "connects": watch.counts()["connect"], "backends": len(pids)}


# ---------------------------------------------------------------------------- pool events


class PoolWatch:
    """Pool events of one engine, timestamped (seconds from the start of the watch).

    ``with PoolWatch(engine) as watch: ...`` then ``watch.counts()``, ``watch.peak("checkout")``.
    """

    EVENTS = (
        "connect",
        "checkout",
        "checkin",
        "invalidate",
        "soft_invalidate",
        "close",
        "close_detached",
        "detach",
    )

    def __init__(self, engine: Engine | AsyncEngine, t0: float | None = None):
        self.engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        self.t0 = time.perf_counter() if t0 is None else t0
        self.events: list[tuple[float, str]] = []
        self._hooks = [(name, self._hook(name)) for name in self.EVENTS]

    def _hook(self, name: str) -> Callable[..., None]:
        record, clock = self.events.append, time.perf_counter

        def hook(*_args: Any, **_kw: Any) -> None:
            record((clock() - self.t0, name))

        return hook

    def __enter__(self) -> PoolWatch:
        for name, hook in self._hooks:
            event.listen(self.engine, name, hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        for name, hook in self._hooks:
            event.remove(self.engine, name, hook)

    def counts(self) -> Counter[str]:
        """How many times each event fired."""
        return Counter(name for _, name in self.events)

    def levels(self, up: str, down: Sequence[str]) -> list[tuple[float, int]]:
        """(time, level) after each ``up`` (+1) or ``down`` (-1) event, in order."""
        level, out = 0, [(0.0, 0)]
        for t, name in sorted(self.events):
            if name == up:
                level += 1
            elif name in down:
                level -= 1
            else:
                continue
            out.append((t, level))
        return out

    @property
    def peak_checked_out(self) -> int:
        """The most connections checked out at once (checkout minus checkin events)."""
        return max(level for _, level in self.levels("checkout", ("checkin",)))

    @property
    def peak_open(self) -> int:
        """The most connections open at once (connect minus close events)."""
        return max(level for _, level in self.levels("connect", ("close", "close_detached")))


# ------------------------------------------------------------------------------ load


@dataclass
class Request:
    """One request of a load: when it asked for a connection, got it, finished; its error."""

    wave: int
    at: float
    asked: float = 0.0
    got: float | None = None
    done: float | None = None
    error: str | None = None
    message: str | None = None
    #: whether its checkout opened a new connection (rather than borrow or wait for one)
    connected: bool = False

    @property
    def wait(self) -> float:
        """Seconds between asking for a connection and getting it (or giving up)."""
        end = self.got if self.got is not None else self.done
        return (end or self.asked) - self.asked

    @property
    def queued(self) -> float:
        """The wait for another request to give a connection back: 0 for a request that
        opened a new connection (a checkout borrows one, opens one, or waits for one)."""
        return 0.0 if self.connected else self.wait


@contextlib.contextmanager
def marked_connects(engine: Engine | AsyncEngine) -> Iterator[None]:
    """While the block runs, each new connection's pool record is marked (``info``), so the
    checkout that opened it can tell (:func:`took_connect`)."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    def mark(_dbapi_connection: Any, record: Any) -> None:
        record.info[CONNECT_KEY] = True

    event.listen(sync, "connect", mark)
    try:
        yield
    finally:
        event.remove(sync, "connect", mark)


def took_connect(conn: Any) -> bool:
    """Whether the checkout of ``conn`` (a Connection or AsyncConnection) opened a new
    connection, under :func:`marked_connects` (the mark is taken off)."""
    sync = getattr(conn, "sync_connection", None) or conn
    return bool(sync.connection.info.pop(CONNECT_KEY, False))


@dataclass
class Load:
    """What a concurrent load did to a pool (see :func:`run_threads`, :func:`run_tasks`)."""

    requests: list[Request]
    watch: PoolWatch
    limits: dict[str, Any]
    hold_s: float
    how: str

    @property
    def timeouts(self) -> int:
        """Requests that gave up waiting for a connection (``sqlalchemy.exc.TimeoutError``)."""
        return sum(r.error == "TimeoutError" for r in self.requests)

    @property
    def errors(self) -> Counter[str]:
        """Error names, with counts (empty when every request succeeded)."""
        return Counter(r.error for r in self.requests if r.error)

    @property
    def waited(self) -> int:
        """Requests that waited for another request to give a connection back: those that
        opened no connection and waited longer than half the shorter of a request's hold
        and ``pool_timeout``."""
        timeout = self.limits["pool_timeout"] or self.hold_s
        threshold = min(self.hold_s, timeout) / 2
        return sum(not r.connected and r.wait > threshold for r in self.requests)

    @property
    def peak_checked_out(self) -> int:
        """The most connections checked out at once, from pool events."""
        return self.watch.peak_checked_out

    @property
    def peak_open(self) -> int:
        """The most connections open at once, from pool events."""
        return self.watch.peak_open

    def first_error(self) -> str | None:
        """The message of the first failed request (deterministic: it names the settings)."""
        return next((r.message for r in self.requests if r.message), None)

    def summary(self) -> str:
        """One deterministic line: requests, peak, waits, timeouts, connections opened."""
        lim = self.limits
        return (
            f"{len(self.requests)} requests on {self.how}: peak {self.peak_checked_out} checked "
            f"out (pool_size {lim['pool_size']} + max_overflow {lim['max_overflow']}), "
            f"{self.waited} waited, {self.timeouts} timed out; "
            f"{self.watch.counts()['connect']} connections opened"
        )

    def timeline(self) -> pd.DataFrame:
        """Checked out (pool events) and waiting (requests) at every moment either changes.

        A request that opened a new connection is not counted as waiting while it connects:
        only requests waiting for a connection to be given back are.
        """
        marks = sorted(
            {0.0}
            | {t for t, _ in self.watch.events}
            | {r.asked for r in self.requests}
            | {r.wait + r.asked for r in self.requests}
        )
        levels = self.watch.levels("checkout", ("checkin",))
        rows, index = [], 0
        for t in marks:
            while index + 1 < len(levels) and levels[index + 1][0] <= t:
                index += 1
            waiting = sum(
                r.asked <= t < r.asked + r.wait
                for r in self.requests
                if not r.connected and r.wait > WAIT_SHOWN_S
            )
            rows.append({"t_s": t, "checked_out": levels[index][1], "waiting": waiting})
        return pd.DataFrame(rows)


def _hold(conn: Any, seconds: float) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("select pg_sleep(:s)"), {"s": seconds})
    else:
        conn.execute(text("select 1"))
        time.sleep(seconds)


async def _ahold(conn: Any, seconds: float) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("select pg_sleep(:s)"), {"s": seconds})
    else:
        await conn.execute(text("select 1"))
        await asyncio.sleep(seconds)


def _record_error(request: Request, exc: BaseException) -> None:
    request.error = type(exc).__name__
    request.message = _first_line(exc).split(" (Background on this error")[0]


def _plan(waves: Sequence[tuple[float, int]]) -> list[Request]:
    return [Request(w, at) for w, (at, count) in enumerate(waves) for _ in range(count)]


def run_threads(engine: Engine, waves: Sequence[tuple[float, int]], hold_s: float = HOLD_S) -> Load:
    """Requests on threads: ``waves`` is ``[(start_s, requests), ...]``; each request checks out
    a connection and holds it ``hold_s`` seconds (``pg_sleep`` on PostgreSQL, a sleep with
    the connection checked out on SQLite).
    """
    requests = _plan(waves)
    with PoolWatch(engine) as watch, marked_connects(engine):
        clock, t0 = time.perf_counter, watch.t0

        def one(request: Request) -> None:
            delay = t0 + request.at - clock()
            if delay > 0:
                time.sleep(delay)
            request.asked = clock() - t0
            try:
                with engine.connect() as conn:
                    request.got = clock() - t0
                    request.connected = took_connect(conn)
                    _hold(conn, hold_s)
            except Exception as exc:
                _record_error(request, exc)
            request.done = clock() - t0

        threads = [threading.Thread(target=one, args=(r,)) for r in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return Load(requests, watch, pool_limits(engine), hold_s, f"{len(requests)} threads")


async def run_tasks(
    engine: AsyncEngine, waves: Sequence[tuple[float, int]], hold_s: float = HOLD_S
) -> Load:
    """Like :func:`run_threads` with asyncio tasks on an async engine."""
    requests = _plan(waves)
    with PoolWatch(engine) as watch, marked_connects(engine):
        clock, t0 = time.perf_counter, watch.t0

        async def one(request: Request) -> None:
            delay = t0 + request.at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            request.asked = clock() - t0
            try:
                async with engine.connect() as conn:
                    request.got = clock() - t0
                    request.connected = took_connect(conn)
                    await _ahold(conn, hold_s)
            except Exception as exc:
                _record_error(request, exc)
            request.done = clock() - t0

        await asyncio.gather(*(one(r) for r in requests))
    return Load(requests, watch, pool_limits(engine), hold_s, f"{len(requests)} tasks")


def load_chart(load: Load, title: str) -> Figure:
    """Checked-out connections (pool events) and requests waiting for one to come back, over
    time, drawn after the load has run; timeouts marked."""
    frame = load.timeline()
    lim = load.limits
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.step(frame["t_s"], frame["checked_out"], where="post", label="checked out (pool events)")
        ax.step(
            frame["t_s"],
            frame["waiting"],
            where="post",
            linestyle="--",
            label="waiting for a connection to come back",
        )
        ax.axhline(
            lim["pool_size"], color="grey", linestyle=":", label=f"pool_size = {lim['pool_size']}"
        )
        if math.isfinite(lim["most"]):
            ax.axhline(
                lim["most"],
                color="black",
                linestyle="-.",
                linewidth=1,
                label=f"pool_size + max_overflow = {lim['most']}",
            )
        failed = [r for r in load.requests if r.error == "TimeoutError"]
        if failed:
            ax.plot(
                [r.done for r in failed],
                [0.1] * len(failed),
                "x",
                color="red",
                markersize=9,
                label=f"TimeoutError after pool_timeout = {lim['pool_timeout']:g} s",
            )
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("connections / requests")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
    plt.close(fig)
    return fig


def timed_query(engine: Engine, sql: str, **params: Any) -> tuple[str, float]:
    """Run one statement on a pooled connection: its outcome and how long it took (s)."""
    start = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(text(sql), params)
        error = None
    except Exception as exc:
        error = exc
    return outcome(error), time.perf_counter() - start


# ------------------------------------------------------------------ what the server allows


def server_limits(db: Backend | URL) -> dict[str, int]:
    """``max_connections``, the reserved slots, the connections open on the server now, and
    what is left for roles without SUPERUSER (``for_other_roles``)."""
    url = db.sync_url if isinstance(db, Backend) else db
    admin_engine = create_engine(url, poolclass=NullPool)
    try:
        with admin_engine.connect() as conn:
            settings = dict(
                conn.execute(
                    text(
                        "select name, setting::int from pg_settings where name in ("
                        "'max_connections', 'superuser_reserved_connections', "
                        "'reserved_connections')"
                    )
                ).all()
            )
            in_use = conn.scalar(
                text("select count(*) from pg_stat_activity where backend_type = 'client backend'")
            )
    finally:
        admin_engine.dispose()
    settings.setdefault("reserved_connections", 0)  # PostgreSQL 16 added it
    settings["in_use_now"] = int(in_use or 0)
    settings["for_other_roles"] = (
        settings["max_connections"]
        - settings["superuser_reserved_connections"]
        - settings["reserved_connections"]
    )
    return settings


class PrivateServer:
    """A throwaway PostgreSQL (pgserver) in a temporary folder: yours to reconfigure and restart.

    Other kernels never use it, so restarting it disturbs no one. It is deleted when the
    process exits (or by :meth:`stop`).
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import pgserver
            except ImportError:
                raise CourseConfigError(
                    "A private PostgreSQL needs pgserver, which has no build for this Python: "
                    "these cells run where pgserver installs (Python 3.11 or 3.12, Linux or "
                    "macOS)."
                ) from None
            _sweep_private_servers()
            self.folder = Path(tempfile.mkdtemp(prefix="private-pg-", dir=data_dir()))
            (self.folder / "owner").write_text(str(os.getpid()))
            self._server = pgserver.get_server(self.folder / "data", cleanup_mode="delete")
        atexit.register(self.stop)
        _watch_owner(self.folder, self._server.pgdata)
        self.restarts = 0

    @property
    def url(self) -> URL:
        """The superuser's URL (psycopg, over the server's unix socket)."""
        return make_url(self._server.get_uri()).set(drivername="postgresql+psycopg")

    def _ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", *args], pgdata=self._server.pgdata, user=self._server.system_user)

    def restart(self) -> None:
        """Fast shutdown (sessions are ended), then start again, on the same socket."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._ctl("-m", "fast", "stop")
            with self._server._lock:
                self._server.ensure_postgres_running()
        self.restarts += 1

    def configure(self, **settings: int) -> None:
        """``ALTER SYSTEM SET`` each setting (e.g. ``max_connections=10``), then restart."""
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name, value in settings.items():
                    if not re.fullmatch(r"[a-z_]+", name):
                        raise ValueError(f"not a setting name: {name!r}")
                    conn.execute(text(f"ALTER SYSTEM SET {name} = {int(value)}"))  # identifiers
        finally:
            engine.dispose()
        self.restart()

    def role_url(self, role: str = "app") -> URL:
        """The URL of a login role without SUPERUSER (created if missing), like an app's."""
        if not re.fullmatch(r"[a-z_]+", role):
            raise ValueError(f"not a role name: {role!r}")
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                if not conn.scalar(text("select 1 from pg_roles where rolname = :r"), {"r": role}):
                    conn.execute(text(f"CREATE ROLE {role} LOGIN"))  # a checked identifier
        finally:
            engine.dispose()
        return self.url.set(username=role)

    def setting(self, name: str) -> str:
        """``current_setting(name)`` on the server now."""
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return str(conn.scalar(text("select current_setting(:n)"), {"n": name}))
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server and delete its folder (safe to call twice)."""
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)
        if _private.get("server") is self:
            del _private["server"]


#: Runs beside a private server (stdlib only): when the kernel that owns it dies without
#: stopping it (killed, not shut down), it shuts the server down and deletes its folder.
_OWNER_WATCHDOG = r"""
import os, shutil, signal, sys, time
owner, folder, pgdata = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def alive(p):
    try:
        os.kill(p, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{p}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True

while alive(owner) and os.path.isdir(folder):
    time.sleep(1)
if os.path.isdir(folder):
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as fh:
            postmaster = int(fh.readline())
        os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown: it is a throwaway
        for _ in range(100):
            if not alive(postmaster):
                break
            time.sleep(0.1)
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
"""


def _sweep_private_servers() -> None:
    """Delete the private servers of kernels that died before their watchdog could (the
    folder records its owner's pid)."""
    import signal

    from ..backends import _alive

    for folder in data_dir().glob("private-pg-*"):
        try:
            owner = int((folder / "owner").read_text())
        except (OSError, ValueError):
            owner = 0
        if (owner and _alive(owner)) or (not owner and time.time() - folder.stat().st_mtime < 60):
            continue  # in use, or being made right now
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
            if _alive(postmaster):
                os.kill(postmaster, signal.SIGQUIT)
                time.sleep(0.5)
        shutil.rmtree(folder, ignore_errors=True)


def _watch_owner(folder: Path, pgdata: Path) -> None:
    import subprocess
    import sys

    if os.name != "posix":
        return
    subprocess.Popen(
        [sys.executable, "-c", _OWNER_WATCHDOG, str(os.getpid()), str(folder), str(pgdata)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


_private: dict[str, PrivateServer] = {}


def private_server() -> PrivateServer:
    """This kernel's :class:`PrivateServer`, started on first use (about a second)."""
    if "server" not in _private:
        _private["server"] = PrivateServer()
    return _private["server"]


def open_until_refused(engines: Sequence[Engine]) -> dict[str, Any]:
    """Check out every connection each engine's pool allows, until the server refuses one.

    The engines stand in for app processes: each has its own pool, as each process would.
    Returns how many were wanted (the pools' maxima added up), how many opened, and the
    refusal's outcome (None when all fit).
    """
    held: list[Any] = []
    refused = None
    wanted = sum(pool_limits(e)["most"] for e in engines)
    try:
        for engine in engines:
            for _ in range(int(pool_limits(engine)["most"])):
                conn = engine.connect()
                held.append(conn)
                conn.execute(text("select 1"))
    except Exception as exc:
        refused = outcome(exc)
    finally:
        for conn in held:
            conn.close()
        for engine in engines:
            engine.dispose()
    return {"wanted": wanted, "opened": len(held), "refused": refused}


# ------------------------------------------------------------------------------ faults


@dataclass
class FaultReport:
    """A fault and what the next requests saw (deterministic: names and counts)."""

    fault: str
    outcomes: list[str]
    events: Counter[str] = field(default_factory=Counter)
    reused: list[bool] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [self.fault]
        for i, (result, reused) in enumerate(zip(self.outcomes, self.reused, strict=True), 1):
            where = (
                ""
                if result != "ok"
                else (" (an old connection)" if reused else " (a new connection)")
            )
            lines.append(f"  request {i}: {result}{where}")
        shown = {k: self.events[k] for k in ("connect", "invalidate") if self.events[k]}
        lines.append("  pool events: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        return "\n".join(lines)


def _track_pids(engine: Engine) -> Callable[[], None]:
    """Store each new connection's ``pg_backend_pid()`` in its pool record (``info``)."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("select pg_backend_pid()")
            record.info["backend_pid"] = cursor.fetchone()[0]
        finally:
            cursor.close()
        dbapi_connection.commit()

    event.listen(engine, "connect", on_connect)
    return lambda: event.remove(engine, "connect", on_connect)


def _fill(engine: Engine, connections: int) -> list[int]:
    """Check out ``connections`` at once (so the pool holds that many), return their pids."""
    held = [engine.connect() for _ in range(connections)]
    try:
        return [conn.connection._connection_record.info["backend_pid"] for conn in held]
    finally:
        for conn in held:
            conn.close()


def _requests(engine: Engine, count: int, old: set[int]) -> tuple[list[str], list[bool]]:
    outcomes, reused = [], []
    for _ in range(count):
        try:
            with engine.connect() as conn:
                pid = conn.scalar(text("select pg_backend_pid()"))
            outcomes.append("ok")
            reused.append(pid in old)
        except Exception as exc:
            outcomes.append(
                outcome(exc)
                + f" [connection_invalidated={getattr(exc, 'connection_invalidated', None)}]"
            )
            reused.append(False)
    return outcomes, reused


def _admin_engine(url: URL) -> Engine:
    return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def terminate_pooled(
    engine: Engine, db: Backend, connections: int = 2, requests: int = 3
) -> FaultReport:
    """Fill ``engine``'s pool, end those server sessions with ``pg_terminate_backend``, then
    send ``requests`` requests.

    Only the pids this engine's own connections reported on connect are terminated: never
    another user's session on a shared server. ``pg_terminate_backend(pid, 5000)`` waits
    until each session has ended.
    """
    untrack = _track_pids(engine)
    admin_engine = _admin_engine(db.sync_url)
    try:
        with PoolWatch(engine) as watch:
            pids = _fill(engine, connections)
            with admin_engine.connect() as conn:
                ended = [
                    conn.scalar(text("select pg_terminate_backend(:pid, 5000)"), {"pid": p})
                    for p in pids
                ]
            if not all(ended):
                raise RuntimeError(f"pg_terminate_backend did not end {pids}")
            outcomes, reused = _requests(engine, requests, set(pids))
    finally:
        untrack()
        admin_engine.dispose()
    return FaultReport(
        f"pg_terminate_backend ended this pool's {len(pids)} connections",
        outcomes,
        watch.counts(),
        reused,
    )


def _wait_gone(admin_engine: Engine, pid: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    with admin_engine.connect() as conn:
        while conn.scalar(text("select count(*) from pg_stat_activity where pid = :p"), {"p": pid}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server session {pid} did not end within {seconds} s")
            time.sleep(0.05)


def idle_session_fault(engine: Engine, db: Backend, requests: int = 2) -> FaultReport:
    """One request, then idle until the server has ended the session itself (its
    ``idle_session_timeout``; watched in ``pg_stat_activity``), then ``requests`` requests.
    """
    untrack = _track_pids(engine)
    admin_engine = _admin_engine(db.sync_url)
    try:
        with PoolWatch(engine) as watch:
            (pid,) = _fill(engine, 1)
            _wait_gone(admin_engine, pid)
            outcomes, reused = _requests(engine, requests, {pid})
    finally:
        untrack()
        admin_engine.dispose()
    return FaultReport(
        "the server ended the idle session (idle_session_timeout)", outcomes, watch.counts(), reused
    )


def restart_fault(
    engine: Engine, server: PrivateServer, connections: int = 2, requests: int = 2
) -> FaultReport:
    """Fill ``engine``'s pool, restart the private server under it, then send ``requests``."""
    untrack = _track_pids(engine)
    try:
        with PoolWatch(engine) as watch:
            pids = _fill(engine, connections)
            server.restart()
            outcomes, reused = _requests(engine, requests, set(pids))
    finally:
        untrack()
    return FaultReport(
        "the server restarted (fast shutdown, then start)", outcomes, watch.counts(), reused
    )


# ---------------------------------------------------------------------------- watching


@dataclass
class PoolLog:
    """Pool log lines captured by :func:`pool_log`: (level, message), addresses normalised."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def show(self) -> str:
        """The lines as text, one per record (deterministic)."""
        if not self.lines:
            return "(no pool log lines)"
        return "\n".join(f"{level:<5} {message}" for level, message in self.lines)


class _Capture(logging.Handler):
    def __init__(self, log: PoolLog):
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = re.sub(r"<[^<>]*>", "<connection>", record.getMessage())
        self.log.lines.append((record.levelname, " ".join(message.split())))


_POOL_CLASSES = (
    "QueuePool",
    "AsyncAdaptedQueuePool",
    "NullPool",
    "SingletonThreadPool",
    "StaticPool",
)


@contextlib.contextmanager
def pool_log() -> Iterator[PoolLog]:
    """Capture what pools log (``echo_pool=True`` or ``"debug"``) instead of printing it.

    SQLAlchemy's ``echo_pool`` adds a handler that prints to stdout, with timestamps and
    object addresses; while this block runs, the pool loggers write to a :class:`PoolLog`
    instead, with each ``<connection ...>`` shown as ``<connection>``.
    """
    log = PoolLog()
    capture = _Capture(log)
    saved = []
    for name in _POOL_CLASSES:
        logger = logging.getLogger(f"sqlalchemy.pool.impl.{name}")
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [capture]
        logger.propagate = False
    try:
        yield log
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


def default_pools() -> pd.DataFrame:
    """The pool class each driver gets by default (engines are created, nothing connects)."""
    rows = []
    sync = [
        ("sqlite (file)", "sqlite:///course.sqlite"),
        ("sqlite (:memory:)", "sqlite://"),
        ("postgresql", "postgresql+psycopg://u@localhost/db"),
    ]
    asynchronous = [
        ("sqlite (file)", "sqlite+aiosqlite:///course.sqlite"),
        ("sqlite (:memory:)", "sqlite+aiosqlite://"),
        ("postgresql", "postgresql+asyncpg://u@localhost/db"),
    ]
    for (database, url), (_, aurl) in zip(sync, asynchronous, strict=True):
        engine, aengine = create_engine(url), create_async_engine(aurl)
        rows.append(
            {
                "database": database,
                "sync driver": engine.dialect.driver,
                "sync pool": type(engine.pool).__name__,
                "async driver": aengine.dialect.driver,
                "async pool": type(aengine.pool).__name__,
            }
        )
        engine.dispose()
    return pd.DataFrame(rows).set_index("database")


#: How long :func:`run_in_fork` waits for the child's result before it ends the child.
FORK_TIMEOUT_S = 60.0


def run_in_fork(fn: Callable[..., Any], *args: Any, timeout: float = FORK_TIMEOUT_S) -> Any:
    """Run ``fn(*args)`` in a child process made by ``fork`` (as gunicorn and multiprocessing
    do), and return its result; the child inherits everything, pools included.

    A child that gives no result within ``timeout`` seconds is killed (this process started
    it) and ``TimeoutError`` is raised; one that dies without a result raises RuntimeError.
    """
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child() -> None:
        reader.close()
        try:
            writer.send(("ok", fn(*args)))
        except BaseException as exc:
            writer.send(("error", outcome(exc)))
        finally:
            writer.close()

    process = context.Process(target=child)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        process.start()
    writer.close()  # the child's copy stays open: EOF here means the child has gone
    try:
        if not reader.poll(timeout):
            process.kill()
            process.join(5)
            raise TimeoutError(f"the child gave no result within {timeout:g} s: it was killed")
        try:
            status, value = reader.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(
                f"the child exited (code {process.exitcode}) without a result"
            ) from None
    finally:
        reader.close()
    process.join(30)
    if status == "error":
        raise RuntimeError(f"the child failed: {value}")
    return value


# --------------------------------------------------------------------------- PgBouncer


def _bouncer(db: Backend) -> PgBouncer | None:
    """The PgBouncer in front of ``db``, or None after printing the one line that says how."""
    try:
        return pgbouncer(db)
    except CourseConfigError as exc:
        print(f"Skipped: {exc}")
        return None


def describe(bouncer: PgBouncer) -> dict[str, Any]:
    """Version, pool mode and prepared-statement support of a PgBouncer (volatile)."""
    import psycopg

    version = reported_version(bouncer)
    try:
        config = {row["key"]: row["value"] for row in admin(bouncer, "SHOW CONFIG")}
        admin_ok = True
    except psycopg.Error:
        config, admin_ok = {}, False
    return {
        "version": version,
        "pool_mode": config.get("pool_mode"),
        "max_prepared_statements": config.get("max_prepared_statements"),
        "admin console": admin_ok,
        "source": bouncer.source,
    }


def show_pgbouncer(db: Backend) -> None:
    """Print where this course's PgBouncer comes from and what it supports (or how to get one)."""
    bouncer = _bouncer(db)
    if bouncer is None:
        return
    facts = describe(bouncer)
    supported = _protocol_prepares(facts)
    print(f"PgBouncer {facts['version'] or '(version not reported)'}, {facts['source']}")
    print(f"pool_mode = {facts['pool_mode'] or 'unknown (no admin console)'}")
    if facts["max_prepared_statements"] is None:
        print(
            "max_prepared_statements: not a setting of this version (PgBouncer 1.21 added it): "
            "prepared statements must be fixed in the client."
        )
    else:
        print(
            f"max_prepared_statements = {facts['max_prepared_statements']}: PgBouncer "
            + (
                "tracks protocol-level prepared statements itself."
                if supported
                else "does not track them (0)."
            )
        )
    if facts["pool_mode"] is not None:
        assert facts["pool_mode"] == "transaction", facts


def _protocol_prepares(facts: dict[str, Any]) -> bool:
    value = facts.get("max_prepared_statements")
    return value is not None and int(value) > 0


def _clean(bouncer: PgBouncer) -> bool:
    """Close PgBouncer's server connections to this database (``KILL`` then ``RESUME``), so
    no prepared statement from an earlier run lingers; False when the console is not ours."""
    import psycopg

    database = bouncer.url.database
    try:
        admin(bouncer, f"KILL {database}")  # a scratch database name this module made
        admin(bouncer, f"RESUME {database}")
    except psycopg.Error:
        return False
    return True


_PROBE = text("select cast(:x as integer) + 1")


def _worker(url: URL, connect_args: dict[str, Any]) -> str:
    """One app process's first request through PgBouncer (run in a forked child)."""
    result: list[str] = []

    async def request() -> str:
        engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            async with engine.connect() as conn:
                await conn.scalar(_PROBE, {"x": 1})
            return "ok"
        except Exception as exc:
            return _error_name(exc)
        finally:
            await engine.dispose()

    # The parent is a notebook kernel whose event loop runs: start a fresh one in a thread.
    thread = threading.Thread(target=lambda: result.append(asyncio.run(request())))
    thread.start()
    thread.join()
    return result[0]


def _error_name(exc: BaseException) -> str:
    """The driver's own error class (asyncpg's), under SQLAlchemy's wrappers."""
    inner: BaseException = exc
    for _ in range(3):
        nxt = getattr(inner, "orig", None) or inner.__cause__
        if nxt is None:
            break
        inner = nxt
    return type(inner).__name__


async def _two_clients(url: URL, connect_args: dict[str, Any]) -> str:
    """One app reuses its statement in a second transaction while another client holds the
    server connection it was prepared on: PgBouncer hands it a different one."""
    first = create_async_engine(url, connect_args=connect_args)
    second = create_async_engine(url, connect_args=connect_args)
    try:
        async with first.connect() as conn:
            await conn.scalar(_PROBE, {"x": 1})
            await conn.commit()  # the server connection goes back to PgBouncer
            async with second.connect() as other:
                await other.execute(text("select 1"))  # holds that server connection
                try:
                    await conn.scalar(_PROBE, {"x": 2})  # a new transaction, another server conn
                except Exception as exc:
                    return _error_name(exc)
        return "ok"
    finally:
        await first.dispose()
        await second.dispose()


ASYNCPG_ERRORS = {"DuplicatePreparedStatementError", "InvalidSQLStatementNameError"}
#: The two situations of :func:`prepared_statements_behind_pgbouncer` (its columns).
SITUATIONS = ("second app process", "statement reused in a later transaction")


def asyncpg_unnamed_when_uncached() -> bool:
    """Whether asyncpg's ``prepare()`` makes unnamed statements when its own statement cache
    is off (``statement_cache_size=0``): asyncpg 0.31 and later (MagicStack/asyncpg#1245).
    SQLAlchemy's dialect prepares every statement with ``prepare()``."""
    import asyncpg

    major, minor = (int(part) for part in asyncpg.__version__.split(".")[:2])
    return (major, minor) >= (0, 31)


def expected_behind_pgbouncer(connect_args: dict[str, Any], tracks: bool) -> dict[str, str] | None:
    """What each situation must show with these ``connect_args`` (None: not known here).

    Where PgBouncer does not track prepared statements itself (``tracks`` false: before
    1.21, or ``max_prepared_statements = 0``): asyncpg's names count from the same number
    in every process, so a second process collides; SQLAlchemy's statement cache
    (``prepared_statement_cache_size``, 100 by default) reuses a statement in a later
    transaction, which PgBouncer may run on another server session. Unique names fix the
    first only, the cache off the second only, both together fix both; asyncpg's own
    ``statement_cache_size=0`` (0.31+) uses unnamed statements, parsed again each time,
    and fixes both. Where PgBouncer tracks them, only the fixes are known to work here.
    """
    named = "prepared_statement_name_func" in connect_args
    uncached = connect_args.get("prepared_statement_cache_size") == 0
    unnamed = connect_args.get("statement_cache_size") == 0 and asyncpg_unnamed_when_uncached()
    ok = dict.fromkeys(SITUATIONS, "ok")
    if unnamed or (named and uncached):
        return ok
    if tracks:
        return None
    second = "ok" if named else "DuplicatePreparedStatementError"
    reused = "ok" if uncached else "InvalidSQLStatementNameError"
    return dict(zip(SITUATIONS, (second, reused), strict=True))


async def prepared_statements_behind_pgbouncer(
    db: Backend, variants: dict[str, dict[str, Any]]
) -> pd.DataFrame | None:
    """asyncpg through PgBouncer in transaction mode, with each ``connect_args`` variant.

    Two situations every app behind PgBouncer meets: a second app process (forked, as
    gunicorn's workers are) whose statement names collide with the first's on the server
    connection PgBouncer hands it, and one app whose cached prepared statement is used in a
    later transaction that PgBouncer runs on another server connection. Each runs on a
    scratch database of this kernel, with PgBouncer's server connections to it closed first
    (admin console ``KILL``/``RESUME``), so no earlier run's statements linger. Returns a
    table of outcomes (asyncpg's error class, or "ok"), or None without a PgBouncer. The
    facts are asserted, row by row, as :func:`expected_behind_pgbouncer` states them.
    """
    bouncer = _bouncer(db)
    if bouncer is None:
        return None
    scratch = scratch_sibling(db, "bouncer", "pool")
    bouncer = bouncer.for_database(scratch.database)
    url = bouncer.url.set(drivername="postgresql+asyncpg")
    facts = describe(bouncer)
    rows = {}
    clean = True
    for label, connect_args in variants.items():
        clean &= _clean(bouncer)
        processes = [run_in_fork(_worker, url, connect_args) for _ in range(2)]
        clean &= _clean(bouncer)
        rows[label] = dict(
            zip(
                SITUATIONS,
                (
                    next((p for p in processes if p != "ok"), "ok"),
                    await _two_clients(url, connect_args),
                ),
                strict=True,
            )
        )
    frame = pd.DataFrame(rows).T
    tracks = _protocol_prepares(facts)
    for label, connect_args in variants.items():
        expected = expected_behind_pgbouncer(connect_args, tracks)
        if expected is None or (not clean and set(expected.values()) != {"ok"}):
            continue  # not known here, or an earlier run's statements may linger
        assert frame.loc[label].to_dict() == expected, (label, frame.loc[label].to_dict())
    return frame


def pgbouncer_throughput(
    db: Backend, request: Callable[[Engine], Any], n: int = 20
) -> Figure | None:
    """Time ``request(engine)`` directly and through PgBouncer, connecting per request
    (``NullPool``) and pooled; print requests per second and the claim; return the chart.
    """
    bouncer = _bouncer(db)
    if bouncer is None:
        return None
    no_prepare = {"prepare_threshold": None}  # psycopg: no server-side prepares behind PgBouncer
    engines = {
        "direct, connect per request (NullPool)": create_engine(db.sync_url, poolclass=NullPool),
        "PgBouncer, connect per request (NullPool)": create_engine(
            bouncer.url, poolclass=NullPool, connect_args=no_prepare
        ),
        "direct, pooled (QueuePool)": create_engine(db.sync_url),
        "PgBouncer, pooled (QueuePool)": create_engine(bouncer.url, connect_args=no_prepare),
    }
    strategies = []
    for label, engine in engines.items():

        def strategy(_db: Backend, count: int, engine: Engine = engine) -> None:
            for _ in range(count):
                request(engine)

        strategy.__doc__ = label
        strategies.append(strategy)
    try:
        frame = compare(strategies, [db], n=n)
    finally:
        for engine in engines.values():
            engine.dispose()
    frame["ms_per_request"] = (frame["median_ms"] / n).round(3)
    frame["requests_per_s"] = (1000 * n / frame["median_ms"]).round(0)
    per = frame.set_index("strategy")["median_ms"]
    labels = list(engines)
    cheaper = per[labels[0]] / per[labels[1]]  # direct / PgBouncer, both connecting per request
    pooled_wins = per[labels[1]] / per[labels[2]]  # PgBouncer per request / direct pooled
    from IPython.display import display

    display(frame[["strategy", "ms_per_request", "requests_per_s"]].set_index("strategy"))
    claim(
        "connecting through PgBouncer is more than 1.2x faster than connecting to PostgreSQL",
        cheaper > 1.2,
        detail=round(float(cheaper), 2),
    )
    claim(
        "a pool in the process is more than 1.5x faster than connecting per request through "
        "PgBouncer",
        pooled_wins > 1.5,
        detail=round(float(pooled_wins), 2),
    )
    return bar_chart(frame, f"{n} requests, directly and through PgBouncer")


# ----------------------------------------------------------------------------- exercise


@dataclass(frozen=True)
class Scenario:
    """An app to size a pool for: ``processes`` processes, each running ``concurrency``
    requests at a time (``requests_per_task`` in a row each), every request holding its
    connection ``request_s`` seconds; the server allows the app ``server_limit`` connections.
    """

    concurrency: int
    request_s: float
    server_limit: int
    processes: int
    requests_per_task: int = 3

    @property
    def per_process(self) -> int:
        """Connections one process may open: its share of the server limit."""
        return self.server_limit // self.processes

    @property
    def best(self) -> int:
        """The most connections worth opening per process: more than the concurrency idles."""
        return min(self.concurrency, self.per_process)

    @property
    def ideal_wait_s(self) -> float:
        """The longest wait for a connection to come back with ``best`` connections: the
        requests queue in rounds of ``best`` (none at all when ``best`` is the concurrency)."""
        return self.waiting_rounds * self.request_s

    @property
    def waiting_rounds(self) -> int:
        """How many rounds of other requests a request may wait through with ``best``."""
        return math.ceil(self.concurrency / self.best) - 1

    @property
    def p95_bound_s(self) -> float:
        """The bound on the p95 wait: the ideal pool's longest wait, plus half a request of
        slack for a busy machine and half a request more for each round it waits through.
        In the first of :data:`SCENARIOS` the ideal pool never waits, and a pool one
        connection smaller makes a third of the requests wait a whole request."""
        return self.ideal_wait_s + self.request_s / 2 * (self.waiting_rounds + 1)


#: The check's two apps. In the first the limit allows a connection per concurrent request,
#: so the right pool never makes a request wait; in the second the limit binds and requests
#: queue. No hard-coded pool fits both: a pool smaller than the concurrency waits in the
#: first, one larger than 2 connections breaks the second's limit.
SCENARIOS = (
    Scenario(concurrency=4, request_s=0.3, server_limit=8, processes=2),
    Scenario(concurrency=5, request_s=0.3, server_limit=8, processes=4),
)

_SETTINGS = ("pool_size", "max_overflow", "pool_timeout")


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank); 0 for no values.

    >>> p95([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    19
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class SizingReport:
    """What one scenario's load did with the settings a learner chose."""

    scenario: Scenario
    settings: dict[str, Any]
    peak_connections: int = 0
    timeouts: int = 0
    p95_wait_s: float = 0.0
    problem: str | None = None

    @property
    def holds(self) -> bool:
        """Whether every requirement held."""
        return (
            self.problem is None
            and self.timeouts == 0
            and self.peak_connections <= self.scenario.server_limit
            and self.p95_wait_s <= self.scenario.p95_bound_s
        )


def _checked_settings(settings: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The settings when they are ones a pool accepts, else (None, what is wrong).

    ``pool_size`` a whole number ≥ 1, ``max_overflow`` a whole number ≥ -1 (-1: unlimited),
    ``pool_timeout`` a finite number of seconds > 0.

    >>> _checked_settings({"pool_size": float("nan")})[1]
    'pool_size must be a whole number of connections (an int), not nan'
    >>> _checked_settings({"pool_size": 2, "max_overflow": -2})[1]
    'max_overflow must be at least -1 (-1 means unlimited), not -2'
    """
    if not isinstance(settings, dict):
        return None, f"return a dict of pool settings, not {type(settings).__name__}"
    unknown = set(settings) - set(_SETTINGS)
    if unknown:
        return None, f"only {', '.join(_SETTINGS)} are sized here, not {', '.join(sorted(unknown))}"
    for key, value in settings.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None, f"{key} must be a number, not {value!r}"
    for key in ("pool_size", "max_overflow"):
        if key in settings and not isinstance(settings[key], int):
            return None, (
                f"{key} must be a whole number of connections (an int), not {settings[key]!r}"
            )
    if settings.get("pool_size", 5) < 1:
        return None, f"pool_size must be at least 1, not {settings['pool_size']}"
    if settings.get("max_overflow", 10) < -1:
        return None, (
            f"max_overflow must be at least -1 (-1 means unlimited), not {settings['max_overflow']}"
        )
    timeout = settings.get("pool_timeout", 30.0)
    if not (math.isfinite(timeout) and timeout > 0):
        return None, f"pool_timeout must be a finite number of seconds above 0, not {timeout!r}"
    return dict(settings), None


async def run_sizing(db: Backend, scenario: Scenario, settings: dict[str, Any]) -> SizingReport:
    """Run ``scenario`` on ``db`` with pools made from ``settings`` (one async engine per
    process, all concurrently): peak connections open across them, timeouts, and the p95 of
    the waits for a connection to come back (a request that opened a new connection waited
    for the server, not for the pool: it counts as no wait).
    """
    checked, problem = _checked_settings(settings)
    report = SizingReport(
        scenario, dict(settings) if isinstance(settings, dict) else {}, problem=problem
    )
    if checked is None:
        return report
    engines = [create_async_engine(db.async_url, **checked) for _ in range(scenario.processes)]
    t0 = time.perf_counter()
    watches = [PoolWatch(engine, t0) for engine in engines]
    requests: list[Request] = []

    async def task(engine: AsyncEngine) -> None:
        for _ in range(scenario.requests_per_task):
            request = Request(0, 0.0, asked=time.perf_counter() - t0)
            requests.append(request)
            try:
                async with engine.connect() as conn:
                    request.got = time.perf_counter() - t0
                    request.connected = took_connect(conn)
                    await conn.execute(text("select 1"))
                    await asyncio.sleep(scenario.request_s)
            except Exception as exc:
                _record_error(request, exc)
            request.done = time.perf_counter() - t0

    try:
        with contextlib.ExitStack() as stack:
            for watch, engine in zip(watches, engines, strict=True):
                stack.enter_context(watch)
                stack.enter_context(marked_connects(engine))
            await asyncio.gather(*(task(e) for e in engines for _ in range(scenario.concurrency)))
    finally:
        for engine in engines:
            await engine.dispose()
    merged = PoolWatch(engines[0], t0)
    merged.events = sorted(e for watch in watches for e in watch.events)
    report.peak_connections = merged.peak_open
    report.timeouts = sum(r.error == "TimeoutError" for r in requests)
    report.p95_wait_s = p95([r.queued for r in requests if r.error is None])
    other = Counter(r.error for r in requests if r.error and r.error != "TimeoutError")
    if other:
        report.problem = "requests failed: " + ", ".join(f"{n} {name}" for name, n in other.items())
    return report


def _verdict(result: CheckResult, reports: list[SizingReport]) -> CheckResult:
    if result.status == "not attempted":
        return result
    for report in reports:
        sc, s = report.scenario, report.settings
        where = (
            f"for {sc.processes} processes × {sc.concurrency} concurrent requests of "
            f"{sc.request_s:g} s, server limit {sc.server_limit}"
        )
        if report.problem:
            return replace(
                result, status="wrong settings", message=f"✗ {report.problem} ({where})."
            )
        if report.peak_connections > sc.server_limit:
            size, overflow = s.get("pool_size", 5), s.get("max_overflow", 10)
            overflow = "unlimited (-1)" if overflow == -1 else overflow
            hint = (
                " max_overflow defaults to 10: pool_size alone is not the maximum."
                if "max_overflow" not in s
                else ""
            )
            return replace(
                result,
                status="over the limit",
                message=(
                    f"✗ {report.peak_connections} connections open at the peak, over the server "
                    f"limit of {sc.server_limit} ({where}): each process may open pool_size + "
                    f"max_overflow = {size} + {overflow}, and {sc.processes} × that must fit.{hint}"
                ),
            )
        if report.timeouts:
            return replace(
                result,
                status="timeouts",
                message=(
                    f"✗ {report.timeouts} checkouts timed out (TimeoutError after pool_timeout = "
                    f"{s.get('pool_timeout', 30):g} s) ({where}): a request may wait for others "
                    "to finish; pool_timeout must outlast that wait."
                ),
            )
        if report.p95_wait_s > sc.p95_bound_s:
            return replace(
                result,
                status="slow checkouts",
                message=(
                    f"✗ p95 wait for a connection {report.p95_wait_s:.2f} s, over the bound of "
                    f"{sc.p95_bound_s:.2f} s ({where}): the pool is smaller than it may be; "
                    f"{sc.best} connections per process fit the limit"
                    + (", one per concurrent request." if sc.best == sc.concurrency else ".")
                ),
            )
    if result.status != "passed":
        return result
    shown = "; ".join(
        f"peak {r.peak_connections}/{r.scenario.server_limit} connections, p95 wait within "
        f"{r.scenario.p95_bound_s:.2f} s"
        for r in reports
    )
    return replace(result, message=f"✓ Passed: no checkout timed out; {shown}.")


async def acheck_pool(size_pool: Callable[..., Any], db: Backend) -> CheckResult:
    """The exercise check: ``size_pool(concurrency, request_s, server_limit, processes)``
    returns pool settings (``pool_size``, ``max_overflow``, ``pool_timeout``) for one process.

    For each of :data:`SCENARIOS` the load runs on ``db`` (an async engine per process, all
    at once, each request holding its connection ``request_s`` seconds with ``asyncio.sleep``)
    and must show: no checkout timeouts, at most ``server_limit`` connections open at the
    peak across the processes, and a p95 wait for a connection to come back within
    :attr:`Scenario.p95_bound_s`. Settings a pool would refuse or misread (a float size, NaN,
    ``max_overflow`` below -1, a timeout that is not a positive finite number) are named
    before anything runs. The verdict names the mistake.
    """
    reports: list[SizingReport] = []

    async def attempt(_session: Any) -> list[bool]:
        for scenario in SCENARIOS:
            settings = size_pool(
                scenario.concurrency, scenario.request_s, scenario.server_limit, scenario.processes
            )
            if inspect.isawaitable(settings):
                settings = await settings
            reports.append(await run_sizing(db, scenario, settings))
            if not reports[-1].holds:
                break
        return [r.holds for r in reports]

    result = await acheck(attempt, db, expected=[True] * len(SCENARIOS), budget=0)
    return _verdict(result, reports)
