"""Tests for course_lib.pgbouncer: one line without PgBouncer, a real one started, reused, stopped.

The PgBouncers these tests start live in the session's temporary data folder and are
stopped at the end of the module (and by their last user's exit, which one test proves).
"""

from __future__ import annotations

import doctest
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from course_lib import pgbouncer as pb
from course_lib.backends import Backend, _alive
from course_lib.settings import CourseConfigError, data_dir

needs_binary = pytest.mark.skipif(pb.pgbouncer_binary() is None, reason="no pgbouncer binary")


@pytest.fixture(scope="module", autouse=True)
def _stop_what_we_started() -> Iterator[None]:
    yield
    pb.stop_pgbouncers()


@pytest.fixture(params=["pg_service", "pg_embedded"])
def pg_db(request: pytest.FixtureRequest) -> Backend:
    """The tiny dataset on each PostgreSQL path (service over TCP, embedded over a socket)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pb.PGBOUNCER_ENV, raising=False)


def _fake_postgres() -> Backend:
    url = make_url("postgresql+psycopg://postgres@127.0.0.1:9/course_tiny")
    return Backend("postgresql", url, url.set(drivername="postgresql+asyncpg"), "x", "course_tiny")


def _one_line(exc: pytest.ExceptionInfo[CourseConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_module_doctests() -> None:
    assert doctest.testmod(pb).failed == 0


# ------------------------------------------------------------------------ without one


def test_without_pgbouncer_one_line_says_how(
    no_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pb.shutil, "which", lambda _name: None)
    monkeypatch.setattr(pb, "DEBIAN_BINARY", tmp_path / "no-pgbouncer")
    assert pb.pgbouncer_binary() is None
    with pytest.raises(CourseConfigError) as info:
        pb.pgbouncer(_fake_postgres())
    message = _one_line(info)
    for needed in ("apt install pgbouncer", "brew install pgbouncer", "COURSE_PGBOUNCER_URL"):
        assert needed in message


def test_debian_path_is_found_off_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "pgbouncer"
    binary.write_text("#!/bin/sh\necho 'PgBouncer 9.8.7'\n")
    binary.chmod(0o755)
    monkeypatch.setattr(pb.shutil, "which", lambda _name: None)
    monkeypatch.setattr(pb, "DEBIAN_BINARY", binary)
    assert pb.pgbouncer_binary() == binary
    assert pb.binary_version(binary) == "9.8.7"


def test_sqlite_is_refused(sqlite_db: Backend) -> None:
    with pytest.raises(CourseConfigError) as info:
        pb.pgbouncer(sqlite_db)
    assert "COURSE_BACKENDS=sqlite,postgresql" in _one_line(info)


@pytest.mark.parametrize("url", ["not a url", "redis://127.0.0.1:6379/0", "postgresql:///db"])
def test_bad_env_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pb.PGBOUNCER_ENV, url)
    with pytest.raises(CourseConfigError) as info:
        pb.pgbouncer(_fake_postgres())
    assert _one_line(info).startswith("COURSE_PGBOUNCER_URL is not a PgBouncer URL")


def test_env_url_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pb.PGBOUNCER_ENV, "postgresql://postgres@127.0.0.1:9/db")
    with pytest.raises(CourseConfigError) as info:
        pb.pgbouncer(_fake_postgres())
    message = _one_line(info)
    assert message.startswith(
        "Cannot use PgBouncer at 127.0.0.1:9 (COURSE_PGBOUNCER_URL): Connection refused. "
    )  # the first useful line of libpq's error, not its "Is the server running" hint
    assert "docker compose up -d pgbouncer" in message


# ------------------------------------------------------------------ one started here


def _through(url: object, sql: str) -> object:
    engine = create_engine(url, poolclass=NullPool, connect_args={"prepare_threshold": None})
    try:
        with engine.connect() as conn:
            return conn.scalar(text(sql))
    finally:
        engine.dispose()


@needs_binary
def test_started_in_transaction_mode_in_front_of_the_backend(pg_db: Backend, no_env: None) -> None:
    bouncer = pb.pgbouncer(pg_db)
    assert bouncer.started_here and bouncer.url.host == "127.0.0.1"
    assert bouncer.url.database == pg_db.database
    assert bouncer.folder is not None and bouncer.folder.parent == data_dir() / "pgbouncer"
    assert _through(bouncer.url, "select count(*) from cars") == 60
    assert _through(bouncer.url, "select current_database()") == pg_db.database
    config = {row["key"]: row["value"] for row in pb.admin(bouncer, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["listen_addr"] == "127.0.0.1"
    assert (
        pb.reported_version(bouncer) == bouncer.version == pb.binary_version(pb.pgbouncer_binary())
    )


@needs_binary
def test_transaction_mode_shares_server_sessions(pg_db: Backend, no_env: None) -> None:
    """Client connections one after another share server sessions: that is the pooling."""
    url = pb.pgbouncer(pg_db).url
    through = {_through(url, "select pg_backend_pid()") for _ in range(5)}
    direct = {_through(pg_db.sync_url, "select pg_backend_pid()") for _ in range(5)}
    assert len(direct) == 5  # without PgBouncer, each connection is a server process
    assert len(through) < 5


@needs_binary
def test_reused_then_restarted_after_it_dies(pg_service: Backend, no_env: None) -> None:
    first = pb.pgbouncer(pg_service)
    again = pb.pgbouncer(pg_service)
    assert again.pid == first.pid and again.url == first.url
    assert first.pid is not None
    os.kill(first.pid, signal.SIGTERM)  # the PgBouncer this test's module started
    deadline = time.monotonic() + 10
    while _alive(first.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = pb.pgbouncer(pg_service)
    assert fresh.pid != first.pid
    assert _through(fresh.url, "select 1") == 1


@needs_binary
def test_no_fixed_port_and_files_in_the_data_folder(pg_service: Backend, no_env: None) -> None:
    bouncer = pb.pgbouncer(pg_service)
    assert bouncer.folder is not None
    ini = (bouncer.folder / "pgbouncer.ini").read_text()
    assert f"listen_port = {bouncer.url.port}" in ini
    assert "listen_addr = 127.0.0.1" in ini and "unix_socket_dir =\n" in ini
    assert oct((bouncer.folder / "userlist.txt").stat().st_mode)[-3:] == "600"


@needs_binary
def test_env_url_wins_and_names_the_database(
    pg_service: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(pb.PGBOUNCER_ENV, raising=False)
    own = pb.pgbouncer(pg_service)
    monkeypatch.setenv(pb.PGBOUNCER_ENV, own.url.set(database="elsewhere").render_as_string(False))
    used = pb.pgbouncer(pg_service)
    assert not used.started_here and "COURSE_PGBOUNCER_URL" in used.source
    assert used.url.database == pg_service.database and used.url.port == own.url.port
    assert _through(used.url, "select count(*) from cars") == 60


@needs_binary
def test_last_user_to_exit_stops_it(pg_service: Backend, no_env: None) -> None:
    """A process that started it and exits while this one still uses it leaves it running;
    a process that is the only user stops it when it exits."""
    script = (
        "from course_lib.backends import postgres\n"
        "from course_lib.pgbouncer import pgbouncer\n"
        f"print(pgbouncer(postgres({pg_service.database!r})).pid)\n"
    )
    env = {**os.environ, "COURSE_POSTGRES_URL": pg_service.sync_url.render_as_string(False)}
    env.pop(pb.PGBOUNCER_ENV, None)
    pb.stop_pgbouncers()
    alone = int(
        subprocess.run(
            [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    assert not _alive(alone)  # it was the only user: stopped at its exit
    mine = pb.pgbouncer(pg_service)  # this process is a user now
    shared = int(
        subprocess.run(
            [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    assert shared == mine.pid and _alive(shared)  # reused, and left running for this process


@needs_binary
def test_asks_for_a_password(pg_db: Backend, no_env: None) -> None:
    """Not open to every local user: without the password, or with a wrong one, PgBouncer
    refuses the connection, to the databases and to the admin console alike."""
    bouncer = pb.pgbouncer(pg_db)
    assert bouncer.url.password and bouncer.admin_url.password == bouncer.url.password
    assert _through(bouncer.url, "select 1") == 1
    assert pb.admin(bouncer, "SHOW VERSION")  # the admin console, with the password
    for database in (pg_db.database, "pgbouncer"):
        for password in (None, "wrong"):
            args = {"password": password} if password else {}
            with pytest.raises(psycopg.OperationalError, match=r"password|SASL"):
                psycopg.connect(
                    host="127.0.0.1",
                    port=bouncer.url.port,
                    user=bouncer.url.username,
                    dbname=database,
                    connect_timeout=5,
                    **args,
                )
    config = {row["key"]: row["value"] for row in pb.admin(bouncer, "SHOW CONFIG")}
    assert config["auth_type"] == "scram-sha-256"


@needs_binary
def test_password_kept_private(pg_service: Backend, no_env: None) -> None:
    """The folder is 0700 and its files 0600; the random password is stored as a SCRAM
    secret, never in plain text; it is a new one for each PgBouncer started."""
    bouncer = pb.pgbouncer(pg_service)
    assert bouncer.folder is not None
    assert stat.S_IMODE(bouncer.folder.stat().st_mode) == 0o700
    for name in ("userlist.txt", "pgbouncer.ini", "state.json"):
        assert stat.S_IMODE((bouncer.folder / name).stat().st_mode) == 0o600, name
    userlist = (bouncer.folder / "userlist.txt").read_text()
    assert "SCRAM-SHA-256$" in userlist and bouncer.url.password not in userlist
    assert bouncer.pid in pb.stop_pgbouncers()
    again = pb.pgbouncer(pg_service)
    assert again.url.password != bouncer.url.password and _through(again.url, "select 1") == 1


@needs_binary
def test_an_older_configuration_is_restarted(pg_service: Backend, no_env: None) -> None:
    """A PgBouncer started with an older configuration (before passwords) is not reused."""
    old = pb.pgbouncer(pg_service)
    assert old.folder is not None
    state_file = old.folder / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"], state["password"]
    state_file.write_text(json.dumps(state))
    fresh = pb.pgbouncer(pg_service)
    assert fresh.pid != old.pid and not _alive(old.pid)
    assert _through(fresh.url, "select 1") == 1


@needs_binary
def test_log_stays_small(pg_service: Backend, no_env: None) -> None:
    """Connections are not logged one by one, and each start begins a new log."""
    bouncer = pb.pgbouncer(pg_service)
    assert bouncer.folder is not None
    for _ in range(5):
        _through(bouncer.url, "select 1")
    log = (bouncer.folder / "pgbouncer.log").read_text()
    assert "login attempt" not in log and "closing because" not in log
    pb.stop_pgbouncers()
    (bouncer.folder / "pgbouncer.log").write_text("an earlier run's line\n" * 1000)
    pb.pgbouncer(pg_service)
    assert "an earlier run's line" not in (bouncer.folder / "pgbouncer.log").read_text()


@needs_binary
def test_watchdog_stops_it_when_its_users_are_killed(pg_service: Backend, no_env: None) -> None:
    """A kernel killed (not shut down) cannot unregister: the watchdog beside PgBouncer stops
    it once every registered user has died."""
    pb.stop_pgbouncers()  # this process is no user of it any more
    script = (
        "import time\n"
        "from course_lib.backends import postgres\n"
        "from course_lib.pgbouncer import pgbouncer\n"
        f"print(pgbouncer(postgres({pg_service.database!r})).pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "COURSE_POSTGRES_URL": pg_service.sync_url.render_as_string(False)}
    env.pop(pb.PGBOUNCER_ENV, None)
    user = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert user.stdout is not None
        pid = int(user.stdout.readline())
        assert _alive(pid)
        user.kill()  # the process this test started: no atexit runs
        user.wait(10)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)
    finally:
        if user.poll() is None:
            user.kill()
            user.wait(10)


@needs_binary
def test_stop_pgbouncers(pg_service: Backend, no_env: None) -> None:
    bouncer = pb.pgbouncer(pg_service)
    assert bouncer.pid in pb.stop_pgbouncers()
    assert not _alive(bouncer.pid)
    assert pb.stop_pgbouncers() == []
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=bouncer.url.port, user="postgres", connect_timeout=2)
