"""Shared fixtures: tiny datasets on SQLite and on both PostgreSQL paths.

- ``sqlite_db``: the tiny dataset in a SQLite file.
- ``pg_service``: the tiny dataset on the PostgreSQL service (``COURSE_POSTGRES_URL``, or
  127.0.0.1:5432 when it answers); skipped when no service answers.
- ``pg_embedded``: the tiny dataset on an embedded pgserver started in a temporary folder
  (``COURSE_POSTGRES_URL`` unset); stopped at the end of the session.
- ``any_db``: parametrized over all three.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from course_lib import backends
from course_lib.backends import Backend
from course_lib.data import dataset

SERVICE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


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
    os.environ["COURSE_DATA_DIR"] = str(tmp_path_factory.mktemp("course_data"))
    os.environ.pop("COURSE_SCALE", None)
    os.environ.pop("COURSE_BACKENDS", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def sqlite_db() -> Backend:
    """The tiny dataset on SQLite."""
    return dataset("sqlite", "tiny")


@pytest.fixture(scope="session")
def pg_service() -> Backend:
    """The tiny dataset on the PostgreSQL service."""
    url = os.environ.get("COURSE_POSTGRES_URL") or (SERVICE_URL if _service_answers() else "")
    if not url:
        pytest.skip("no PostgreSQL service answers on 127.0.0.1:5432")
    with pytest.MonkeyPatch.context() as mp:  # the Backend keeps its URL; the env is restored
        mp.setenv("COURSE_POSTGRES_URL", url)
        db = dataset("postgresql", "tiny")
    return db


@pytest.fixture(scope="session")
def pg_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The tiny dataset on an embedded PostgreSQL (pgserver) in a temporary folder."""
    pytest.importorskip("pgserver")
    with pytest.MonkeyPatch.context() as mp:  # the server stays cached; the env is restored
        mp.delenv("COURSE_POSTGRES_URL", raising=False)
        mp.setenv("COURSE_DATA_DIR", str(tmp_path_factory.mktemp("embedded")))
        db = dataset("postgresql", "tiny")
    yield db
    backends.stop_embedded_postgres()


@pytest.fixture(params=["sqlite_db", "pg_service", "pg_embedded"])
def any_db(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn."""
    return request.getfixturevalue(request.param)
