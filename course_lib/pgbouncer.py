"""A real PgBouncer in transaction mode in front of the course's PostgreSQL.

>>> from course_lib.backends import postgres
>>> bouncer = pgbouncer(postgres("course_tiny"))  # doctest: +SKIP
>>> bouncer.url.render_as_string(hide_password=True)  # doctest: +SKIP
'postgresql+psycopg://postgres:***@127.0.0.1:40123/course_tiny'

Where it comes from, in order:

- ``COURSE_PGBOUNCER_URL`` when it is set (the compose ``pgbouncer`` service, or your own);
- otherwise one started here, when a ``pgbouncer`` binary is on PATH or at
  ``/usr/sbin/pgbouncer`` (where Debian and Ubuntu install it): it listens on 127.0.0.1 on a
  free port, pools in transaction mode, and forwards every database name to the backend's
  PostgreSQL (the service over TCP, or the embedded server over its unix socket). Its files
  live in the git-ignored data folder (``.course/pgbouncer/<target>/``), and the next kernel
  reuses it, as it reuses the embedded PostgreSQL. Each process that uses it registers its
  pid; the last one to exit stops it, and :func:`stop_pgbouncers` stops it on demand.

It is not open to every local user: it asks for a password (SCRAM-SHA-256), a random one
made for each PgBouncer and stored as a SCRAM secret (or, when the backend's URL has a
password, that password, which PgBouncer needs to log in to the server). The password is
in the URL this module returns, and on disk only in the folder, which only its owner may
read (0700, files 0600).

A kernel that is killed (not shut down) cannot unregister: a small watchdog process beside
PgBouncer stops it once every registered user has died. Without either,
:class:`~course_lib.settings.CourseConfigError` says in one line how to get
one. Nothing here uses a fixed port or a name another checkout could collide with.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from .backends import Backend, _alive, embedded_postgres
from .settings import CourseConfigError, data_dir, display_path

__all__ = [
    "PGBOUNCER_ENV",
    "PgBouncer",
    "admin",
    "pgbouncer",
    "pgbouncer_binary",
    "pgbouncer_url",
    "reported_version",
    "scram_secret",
    "stop_pgbouncers",
]

#: The variable naming a PgBouncer to use instead of starting one.
PGBOUNCER_ENV = "COURSE_PGBOUNCER_URL"
#: Where Debian and Ubuntu install the binary (``/usr/sbin`` is not on every user's PATH).
DEBIAN_BINARY = Path("/usr/sbin/pgbouncer")
#: How to get a PgBouncer, in the one line a learner reads when there is none.
HOW_TO_GET_ONE = (
    "install it (`apt install pgbouncer` on Debian/Ubuntu, `brew install pgbouncer` on "
    f"macOS), or set {PGBOUNCER_ENV}=postgresql://user:password@127.0.0.1:6432/dbname "
    "(e.g. `docker compose up -d pgbouncer`)"
)
#: Server connections per (database, user) pair that the started PgBouncer keeps.
POOL_SIZE = 20
#: How clients log in to the PgBouncer started here (never ``trust``: it would hand the
#: server's superuser and the admin console to every local user).
AUTH_TYPE = "scram-sha-256"
#: PBKDF2 iterations of the stored SCRAM secret for the random password. Iterations slow
#: down guessing a human's password from a stolen secret; a random 32-character password
#: cannot be guessed anyway, and PostgreSQL's 4096 would cost every client connect about as
#: much hashing as a direct connection costs in all (the lesson compares the two).
SCRAM_ITERATIONS = 64
#: Bumped when the generated configuration changes: a running PgBouncer started with an
#: older one is stopped and started again.
CONFIG_VERSION = 2
_READY_S = 10.0


@dataclass(frozen=True)
class PgBouncer:
    """A PgBouncer to connect through: its URL for one database, and where it came from."""

    #: the backend's database, through PgBouncer (the backend's sync driver)
    url: URL
    #: where it comes from, in words (machine-specific: not for checked output)
    source: str
    #: the version the binary reports ("1.18.0"), or None when not known (a service)
    version: str | None = None
    #: the process, when course_lib started it
    pid: int | None = None
    #: the folder holding its configuration, when course_lib started it
    folder: Path | None = None

    @property
    def started_here(self) -> bool:
        """Whether course_lib runs this PgBouncer (it may stop and reconfigure it)."""
        return self.folder is not None

    @property
    def admin_url(self) -> URL:
        """The admin console (the special database ``pgbouncer``: SHOW, KILL, RESUME)."""
        return self.url.set(database="pgbouncer")

    def for_database(self, database: str) -> PgBouncer:
        """The same PgBouncer, for another database on the same server."""
        return PgBouncer(
            self.url.set(database=database), self.source, self.version, self.pid, self.folder
        )


def pgbouncer_binary() -> Path | None:
    """The ``pgbouncer`` executable: on PATH, or Debian's ``/usr/sbin/pgbouncer``, or None."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    if DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return None


def binary_version(binary: Path) -> str | None:
    """``pgbouncer --version``'s number ("1.18.0"), or None when it does not say."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"PgBouncer\s+(\d+(?:\.\d+)+)", out)
    return match[1] if match else None


# ------------------------------------------------------------------------ the one to use


def service_pgbouncer_url() -> URL | None:
    """``COURSE_PGBOUNCER_URL`` parsed and checked, or None when it is not set."""
    raw = os.environ.get(PGBOUNCER_ENV, "").strip()
    if not raw:
        return None
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        url = None
    if url is None or url.get_backend_name() != "postgresql" or not url.host:
        raise CourseConfigError(
            f"{PGBOUNCER_ENV} is not a PgBouncer URL: expected "
            "postgresql://user:password@host:6432/dbname; fix it, or unset it to let "
            "course_lib start a PgBouncer."
        )
    return url


def pgbouncer(db: Backend) -> PgBouncer:
    """The PgBouncer in front of ``db``'s PostgreSQL (see the module docstring).

    Raises :class:`CourseConfigError` (one line) when there is none, or it does not answer.
    """
    if db.name != "postgresql":
        raise CourseConfigError(
            f"PgBouncer pools PostgreSQL connections, not {db.name}: pass the postgresql "
            "backend (set COURSE_BACKENDS=sqlite,postgresql)."
        )
    service = service_pgbouncer_url()
    if service is not None:
        url = service.set(drivername=db.sync_url.drivername, database=db.database)
        _check_answers(url, f"{service.host}:{service.port or 5432} ({PGBOUNCER_ENV})")
        return PgBouncer(url, f"service from {PGBOUNCER_ENV} ({service.host}:{service.port})")
    binary = pgbouncer_binary()
    if binary is None:
        raise CourseConfigError(f"No PgBouncer here: {HOW_TO_GET_ONE}.")
    if db.pgdata is not None:
        embedded_postgres(db.pgdata)  # starts the embedded server again if it was stopped
    return _started(binary, db)


def pgbouncer_url(db: Backend) -> URL:
    """The URL of ``db``'s database through PgBouncer (see :func:`pgbouncer`)."""
    return pgbouncer(db).url


def _check_answers(url: URL, where: str) -> None:
    """Connect once through ``url``; a failure is one line naming the fix."""
    import psycopg

    try:
        with psycopg.connect(**_libpq(url), connect_timeout=5, autocommit=True) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        raise CourseConfigError(
            f"Cannot use PgBouncer at {where}: {_reason(exc)}. Start it (e.g. `docker compose "
            f"up -d pgbouncer`), fix the URL, or unset {PGBOUNCER_ENV} to let course_lib start one."
        ) from None


def _reason(exc: BaseException) -> str:
    """The first useful line of a libpq error: "Connection refused", not its hint.

    >>> _reason(OSError('connection failed: connection to server at "127.0.0.1", port 9 '
    ...                 'failed: Connection refused\\n\\tIs the server running on that host?'))
    'Connection refused'
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0].rsplit(" failed: ", 1)[-1]
    return first.removeprefix("FATAL:").strip().rstrip(".")[:160]


def _libpq(url: URL) -> dict[str, Any]:
    """psycopg keyword arguments for ``url`` (a unix-socket folder rides in ``?host=``)."""
    args: dict[str, Any] = {
        "host": url.query.get("host") or url.host or "127.0.0.1",
        "port": url.port or 5432,
        "dbname": url.database or "postgres",
        "user": url.username or "postgres",
    }
    if url.password:
        args["password"] = url.password
    return args


def admin(bouncer: PgBouncer, command: str) -> list[dict[str, Any]]:
    """Run an admin-console command (``SHOW VERSION``, ``SHOW CONFIG``, ``KILL db``, ...).

    Returns its rows as dicts (empty for commands without rows). The console speaks only the
    simple query protocol, and only to ``admin_users``; a refusal raises ``psycopg.Error``.
    """
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(
        **_libpq(bouncer.admin_url), connect_timeout=5, autocommit=True, row_factory=dict_row
    ) as conn:
        cursor = conn.execute(command)
        return list(cursor.fetchall()) if cursor.description else []


def reported_version(bouncer: PgBouncer) -> str | None:
    """The version PgBouncer reports on its admin console ("1.18.0"); None if refused."""
    import psycopg

    try:
        rows = admin(bouncer, "SHOW VERSION")
    except psycopg.Error:
        return bouncer.version
    text = " ".join(str(value) for row in rows for value in row.values())
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    return match[1] if match else bouncer.version


# ------------------------------------------------------------------ one started here


def _target(db: Backend) -> dict[str, Any]:
    """Where PgBouncer forwards to: host (or socket folder), port, user and password."""
    url = db.sync_url
    host = url.query.get("host") or url.host or "127.0.0.1"
    if isinstance(host, tuple):  # a repeated ?host= (multi-host URLs): take the first
        host = host[0]
    return {
        "host": str(host),
        "port": int(url.port or 5432),
        "user": url.username or "postgres",
        "password": url.password or "",
    }


def _key(target: dict[str, Any]) -> str:
    """Eight hex digits naming one target: one PgBouncer folder per server and user."""
    raw = f"{target['host']}:{target['port']}:{target['user']}"
    return hashlib.sha1(raw.encode()).hexdigest()[:8]


def _folder(target: dict[str, Any]) -> Path:
    """This target's folder, readable by its owner only (it holds the password)."""
    folder = data_dir() / "pgbouncer" / _key(target)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def _private_write(path: Path, content: str) -> None:
    """Write ``content`` to a file only its owner may read or write (0600 from the start)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(content)
    path.chmod(0o600)


def _free_port() -> int:
    """A port no one listens on now (the kernel picks it: never a fixed number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as(target: dict[str, Any]) -> str | None:
    """The user PgBouncer switches to when started as root (it refuses to run as root).

    The owner of the unix-socket folder for the embedded server (pgserver runs PostgreSQL as
    its own user, in a folder only that user may enter), else ``nobody``.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    if target["host"].startswith("/"):
        try:
            owner = pwd.getpwuid(Path(target["host"]).stat().st_uid).pw_name
        except (OSError, KeyError):
            owner = "root"
        if owner != "root":
            return owner
    return "nobody"


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def scram_secret(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 secret for ``password``, as PostgreSQL stores it (RFC 5803 form).

    PgBouncer checks clients against it without the plain password on disk, and without
    hashing the password again at each connect.

    >>> scram_secret("pw", 4).startswith("SCRAM-SHA-256$4:")
    True
    """
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    stored = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server_key)}"


def _config(folder: Path, target: dict[str, Any], port: int) -> str:
    """pgbouncer.ini: transaction pooling, 127.0.0.1 only, a password asked, every database
    forwarded; connections are not logged one by one (the log stays small)."""
    host = target["host"]
    lines = [
        "; written by course_lib.pgbouncer: regenerated at every start",
        "[databases]",
        f"* = host={host} port={target['port']}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "pool_mode = transaction",
        f"default_pool_size = {POOL_SIZE}",
        "max_client_conn = 500",
        f"auth_type = {AUTH_TYPE}",
        f"auth_file = {folder / 'userlist.txt'}",
        f"admin_users = {target['user']}",
        "ignore_startup_parameters = extra_float_digits",
        "log_connections = 0",
        "log_disconnections = 0",
        "log_stats = 0",
    ]
    user = _run_as(target)
    if user is not None:
        lines.append(f"user = {user}")
    return "\n".join(lines) + "\n"


#: Runs beside a PgBouncer it started (stdlib only, a few MB): when every registered user
#: has died without stopping it (a kernel killed, not shut down), it stops PgBouncer. It
#: takes the same lock as :func:`_started`, so a kernel registering meanwhile keeps it.
_WATCHDOG = r"""
import fcntl, json, os, signal, sys, time
folder, pid = sys.argv[1], int(sys.argv[2])
lock = folder.rstrip("/") + ".lock"

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

def users():
    try:
        with open(os.path.join(folder, "users.json")) as fh:
            return [u for u in json.load(fh) if isinstance(u, int)]
    except (OSError, ValueError):
        return None

while alive(pid) and os.path.isdir(folder):
    time.sleep(1)
    found = users()
    if found is None or any(alive(u) for u in found):
        continue
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        found = users()
        if found is not None and not any(alive(u) for u in found):
            os.kill(pid, signal.SIGTERM)
            try:
                os.remove(os.path.join(folder, "state.json"))
            except OSError:
                pass
            break
"""


def _watch(folder: Path, pid: int) -> None:
    """Start the watchdog that stops PgBouncer ``pid`` once all its users have died."""
    import sys

    if os.name != "posix":
        return
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(folder), str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _state_file(folder: Path) -> Path:
    return folder / "state.json"


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads(_state_file(folder).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _running(folder: Path) -> dict[str, Any] | None:
    """The state of the PgBouncer this folder started, if it still runs and answers."""
    state = _read_state(folder)
    pid, port = state.get("pid"), state.get("port")
    if not isinstance(pid, int) or not isinstance(port, int) or not _alive(pid):
        return None
    if not _is_ours(pid, folder):  # the pid was reused by another program
        return None
    if state.get("config") != CONFIG_VERSION or not state.get("password"):
        _stop_in(folder)  # started with an older configuration (no password): start again
        return None
    if not _answers(port):
        return None
    return state


def _is_ours(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` is a pgbouncer reading this folder's configuration."""
    try:
        import psutil

        cmdline = psutil.Process(pid).cmdline()
    except Exception:  # no such process, or no permission to look
        return False
    return any(str(folder / "pgbouncer.ini") == part for part in cmdline)


def _answers(port: int, seconds: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds):
            return True
    except OSError:
        return False


def _started(binary: Path, db: Backend) -> PgBouncer:
    """Reuse the PgBouncer of this target, or start one; register this process as a user."""
    target = _target(db)
    folder = _folder(target)
    with FileLock(folder.parent / f"{folder.name}.lock"):
        state = _running(folder)
        if state is None:
            state = _start(binary, folder, target)
        _register(folder)
    url = db.sync_url.set(
        host="127.0.0.1", port=state["port"], query={}, password=state["password"]
    )
    return PgBouncer(
        url,
        f"started by course_lib in {display_path(folder)}",
        state.get("version"),
        state["pid"],
        folder,
    )


def _start(binary: Path, folder: Path, target: dict[str, Any], tries: int = 3) -> dict[str, Any]:
    """Write the configuration and start PgBouncer in the background (it outlives the kernel).

    The password clients must give: the backend's own when its URL has one (PgBouncer logs
    in to the server with it, so it is written as it is), else a new random one (written as
    a SCRAM secret: the server trusts PgBouncer, which needs no password for it).
    """
    password = target["password"] or secrets.token_urlsafe(24)
    secret = target["password"] or scram_secret(password)
    _private_write(folder / "userlist.txt", f"{_quote(target['user'])} {_quote(secret)}\n")
    log = folder / "pgbouncer.log"
    for attempt in range(tries):
        port = _free_port()
        ini = folder / "pgbouncer.ini"
        _private_write(ini, _config(folder, target, port))
        with open(log, "wb") as out:  # a new log at each start: it never grows across runs
            process = subprocess.Popen(
                [str(binary), str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with the kernel's process group
                close_fds=True,
            )
        deadline = time.monotonic() + _READY_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(port, 0.2):
                state = {
                    "pid": process.pid,
                    "port": port,
                    "version": binary_version(binary),
                    "password": password,
                    "config": CONFIG_VERSION,
                }
                _private_write(_state_file(folder), json.dumps(state))
                _watch(folder, process.pid)
                return state
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(5)
        reason = _last_line(log)
        if "already in use" not in reason or attempt == tries - 1:
            raise CourseConfigError(
                f"PgBouncer did not start ({reason or 'no reason given'}); see "
                f"{display_path(log)}, or set {PGBOUNCER_ENV} to a PgBouncer you run."
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].split(" ", 3)[-1][:160] if lines else ""


# --------------------------------------------------------------------- users and stopping

_registered: set[Path] = set()


def _users_file(folder: Path) -> Path:
    return folder / "users.json"


def _users(folder: Path) -> list[int]:
    try:
        pids = json.loads(_users_file(folder).read_text())
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if isinstance(pid, int)] if isinstance(pids, list) else []


def _register(folder: Path) -> None:
    """Record this process as a user of the PgBouncer in ``folder`` (called under its lock)."""
    pids = [pid for pid in _users(folder) if _alive(pid)]
    if os.getpid() not in pids:
        pids.append(os.getpid())
    _users_file(folder).write_text(json.dumps(pids))
    if folder not in _registered:
        _registered.add(folder)
        if len(_registered) == 1:
            atexit.register(_release_all)


def _release_all() -> None:
    """At exit: leave every PgBouncer this process used; stop those no one else uses."""
    pid = os.getpid()
    for folder in list(_registered):
        lock = FileLock(folder.parent / f"{folder.name}.lock", timeout=10)
        with contextlib.suppress(Exception), lock:  # at exit, never raise
            others = [p for p in _users(folder) if p != pid and _alive(p)]
            _users_file(folder).write_text(json.dumps(others))
            if not others:
                _stop_in(folder)
    _registered.clear()


def _stop_in(folder: Path) -> bool:
    """Stop the PgBouncer started in ``folder`` (SIGTERM, then SIGKILL); True if one ran."""
    state = _read_state(folder)
    pid = state.get("pid")
    stopped = False
    if isinstance(pid, int) and _alive(pid) and _is_ours(pid, folder):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped = True
    _state_file(folder).unlink(missing_ok=True)
    return stopped


def stop_pgbouncers(folder: Path | None = None) -> list[int]:
    """Stop every PgBouncer started under ``folder`` (default: the data folder).

    For ``python -m course_lib.backends stop`` and the test suite: returns the pids stopped.
    """
    base = (data_dir() if folder is None else folder) / "pgbouncer"
    stopped = []
    if not base.is_dir():
        return stopped
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        pid = _read_state(sub).get("pid")
        if _stop_in(sub) and isinstance(pid, int):
            stopped.append(pid)
        _users_file(sub).unlink(missing_ok=True)
        _registered.discard(sub)
    return stopped
