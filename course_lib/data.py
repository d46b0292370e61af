"""Deterministic course data: the same scale and seed give the same rows on every backend.

>>> from course_lib.settings import choose_scale
>>> tables = dict(generate(choose_scale("tiny"), seed=1))
>>> len(tables["users"]), tables["users"][0]["email"]
(12, 'user1@example.com')

:func:`build` loads a scale with bulk Core inserts (``conn.execute(insert(table), rows)``),
records what it built in ``course_meta`` and skips the work next time, so any notebook can
call it first and Restart & Run All twice gives the same data.

Readers never see a half-built dataset, even from another kernel:

- SQLite: the build writes a new file beside the old one and renames it over the old one
  (atomic). Connections already open keep reading the old, complete file; new ones open the
  new file.
- PostgreSQL: the whole build (drop, create, load, fingerprint) is one transaction, as
  PostgreSQL's DDL is transactional. A query already running finishes on the old tables
  first (the DROP waits for it, at most ``LOCK_WAIT``); a query that starts during the
  build waits for the commit and then reads the new tables. Builders of the same database
  (other kernels, other checkouts on a shared server) queue on an advisory lock.

The scale is resolved once, where configuration enters (``course.setup``, this module's
command line); :func:`build` and :func:`dataset` take the :class:`Scale` it gives.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Connection, Table, func, insert, inspect, select
from sqlalchemy.exc import OperationalError

from .backends import Backend, _alive, _sqlite_at, backend
from .models import Base, CourseMeta
from .progress import Progress
from .progress import progress as progress_line
from .settings import CourseConfigError, Scale, choose_scale, data_dir, lookup_scale
from .settings import seed as default_seed

SCHEMA_VERSION = "1"
CHUNK = 5_000
EPOCH = datetime(2024, 1, 1)

_WORDS = [
    "query",
    "session",
    "engine",
    "index",
    "join",
    "select",
    "insert",
    "update",
    "delete",
    "cursor",
    "pool",
    "batch",
    "cache",
    "latency",
    "table",
    "column",
    "row",
    "schema",
    "commit",
    "rollback",
    "transaction",
    "lazy",
    "eager",
    "stream",
    "partition",
    "plan",
    "scan",
    "filter",
    "order",
    "limit",
    "offset",
    "keyset",
    "bind",
    "parameter",
    "driver",
    "socket",
    "network",
    "memory",
    "profile",
    "measure",
    "median",
    "spread",
    "warm",
    "repeat",
    "count",
    "budget",
    "async",
    "await",
]
_FIRST = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dennis",
    "Edsger",
    "Frances",
    "Grace",
    "Guido",
    "Ken",
    "Linus",
    "Margaret",
]
_LAST = [
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Ritchie",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Rossum",
    "Thompson",
]
_CITIES = [
    "Lyon",
    "Porto",
    "Gent",
    "Turin",
    "Leipzig",
    "Malmo",
    "Bergen",
    "Cork",
    "Graz",
    "Brno",
    "Lodz",
    "Split",
]
_MODELS = {
    "Toyota": ("Corolla", "Camry", "RAV4", "Yaris"),
    "Ford": ("Focus", "Fiesta", "Kuga", "Puma"),
    "Volkswagen": ("Golf", "Polo", "Passat", "Tiguan"),
    "Renault": ("Clio", "Megane", "Captur", "Zoe"),
    "Skoda": ("Octavia", "Fabia", "Superb", "Kodiaq"),
    "Kia": ("Ceed", "Picanto", "Sportage", "Niro"),
}


def _text_pool(rng: random.Random, size: int = 1 << 16) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _tables() -> dict[str, Table]:
    return dict(Base.metadata.tables)


def generate(scale: Scale, seed: int | None = None) -> Iterator[tuple[str, list[dict]]]:
    """Yield ``(table_name, rows)`` chunks in foreign-key order; pure and deterministic."""
    rng = random.Random(default_seed() if seed is None else seed)
    pool = _text_pool(rng)

    def snippet(chars: int) -> str:
        start = rng.randrange(0, len(pool) - chars)
        return pool[start : start + chars]

    def when(days: int = 700) -> datetime:
        return EPOCH + timedelta(minutes=rng.randrange(days * 24 * 60))

    yield (
        "users",
        [
            {
                "id": i,
                "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                "email": f"user{i}@example.com",
                "created_at": when(),
            }
            for i in range(1, scale.users + 1)
        ],
    )
    yield (
        "tags",
        [{"id": i, "name": f"{_WORDS[i % len(_WORDS)]}-{i}"} for i in range(1, scale.tags + 1)],
    )

    post_id = comment_id = 0
    posts: list[dict] = []
    links: list[dict] = []
    comments: list[dict] = []
    for user_id in range(1, scale.users + 1):
        for _ in range(scale.posts_per_user):
            post_id += 1
            posts.append(
                {
                    "id": post_id,
                    "author_id": user_id,
                    "title": " ".join(rng.choices(_WORDS, k=4)).capitalize(),
                    "body": snippet(scale.body_chars),
                    "created_at": when(),
                }
            )
            for tag_id in sorted(rng.sample(range(1, scale.tags + 1), scale.tags_per_post)):
                links.append({"post_id": post_id, "tag_id": tag_id})
            for _ in range(scale.comments_per_post):
                comment_id += 1
                comments.append(
                    {
                        "id": comment_id,
                        "post_id": post_id,
                        "user_id": rng.randint(1, scale.users),
                        "text": snippet(rng.randint(40, 200)),
                        "created_at": when(),
                    }
                )
        if len(comments) >= CHUNK:
            yield "posts", posts
            yield "post_tags", links
            yield "comments", comments
            posts, links, comments = [], [], []
    if posts:
        yield "posts", posts
        yield "post_tags", links
        yield "comments", comments

    yield (
        "dealerships",
        [
            {"id": i, "name": f"{city} Motors {i}", "city": city}
            for i in range(1, scale.dealerships + 1)
            for city in [rng.choice(_CITIES)]
        ],
    )
    cars: list[dict] = []
    car_id = 0
    for dealership_id in range(1, scale.dealerships + 1):
        for _ in range(scale.cars_per_dealership):
            car_id += 1
            make = rng.choice(list(_MODELS))
            created = when()
            cars.append(
                {
                    "id": car_id,
                    "dealership_id": dealership_id,
                    "make": make,
                    "model": rng.choice(_MODELS[make]),
                    "year": rng.randint(2008, 2025),
                    "price": rng.randrange(4_000, 80_000, 100),
                    "is_sold": rng.random() < 0.3,
                    "created_at": created,
                    "updated_at": created + timedelta(days=rng.randrange(90)),
                }
            )
            if len(cars) >= CHUNK:
                yield "cars", cars
                cars = []
    if cars:
        yield "cars", cars


def expected_rows(scale: Scale) -> dict[str, int]:
    """How many rows each table holds at ``scale``."""
    return {
        "users": scale.users,
        "tags": scale.tags,
        "posts": scale.posts,
        "post_tags": scale.posts * scale.tags_per_post,
        "comments": scale.comments,
        "dealerships": scale.dealerships,
        "cars": scale.cars,
    }


@dataclass
class BuildReport:
    """What :func:`build` did: whether it built, how long it took, and the rows now present."""

    backend: str
    database: str
    scale: str
    built: bool
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        action = f"built in {self.seconds:.1f} s" if self.built else "already built"
        total = sum(self.rows.values())
        return f"{self.backend}: {self.database} {action} ({total:,} rows)"


def fingerprint(scale: Scale, seed: int) -> str:
    """What ``course_meta`` records, so a database is rebuilt only when this changes."""
    return f"scale={scale.name};seed={seed};schema={SCHEMA_VERSION}"


def current_fingerprint(db: Backend) -> str | None:
    """The fingerprint stored in ``db``, or None when it holds no course data."""
    with db.sync_engine.connect() as conn:
        return _fingerprint_in(conn)


def row_counts(db: Backend) -> dict[str, int]:
    """Rows per course table, counted now."""
    tables = _tables()
    with db.sync_engine.connect() as conn:
        return {
            name: conn.scalar(select(func.count()).select_from(tables[name])) for name in TABLES
        }


#: The course tables, in the order reports list them.
TABLES = ("users", "tags", "posts", "post_tags", "comments", "dealerships", "cars")

#: How long a PostgreSQL rebuild waits for queries still reading the old tables.
LOCK_WAIT = "60s"


def _as_scale(scale: Scale | str) -> Scale:
    """A :class:`Scale`; a scale's name is looked up (never resolved from the environment)."""
    if isinstance(scale, Scale):
        return scale
    if isinstance(scale, str):
        return lookup_scale(scale)
    raise TypeError(
        "build() and dataset() take a Scale (from settings.choose_scale() at the boundary), "
        f"not {scale!r}"
    )


def build(
    db: Backend,
    scale: Scale,
    *,
    seed: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> BuildReport:
    """Make ``db`` hold exactly the dataset for ``scale``; skip when it already does.

    ``progress=None`` shows a bar only for builds of more than 200,000 rows. Readers in
    other kernels see the old dataset or the new one, never a half-built one (see above).
    """
    scale = _as_scale(scale)
    seed = default_seed() if seed is None else seed
    wanted = fingerprint(scale, seed)
    lock = FileLock(data_dir() / f"build-{db.name}-{db.database}.lock")
    with lock:
        if not force and current_fingerprint(db) == wanted:
            return BuildReport(db.name, db.database, scale.name, False, 0.0, row_counts(db))
        start = time.perf_counter()
        total = sum(expected_rows(scale).values())
        show = total > 200_000 if progress is None else progress
        with progress_line(total, f"{db.name} {scale.name}", enabled=show, unit="rows") as bar:
            if db.name == "sqlite":
                built = _build_sqlite_beside(db, scale, seed, bar)
            else:
                built = _build_postgres_at_once(db, scale, seed, bar, force=force)
        seconds = time.perf_counter() - start
    return BuildReport(db.name, db.database, scale.name, built, seconds, row_counts(db))


def _load(conn: Connection, scale: Scale, seed: int, bar: Progress) -> None:
    """Drop and create the course tables, insert the rows and the fingerprint, in ``conn``."""
    tables = _tables()
    Base.metadata.drop_all(conn)
    Base.metadata.create_all(conn)
    for name, rows in generate(scale, seed):
        for i in range(0, len(rows), CHUNK):
            batch = rows[i : i + CHUNK]
            conn.execute(insert(tables[name]), batch)
            bar.update(len(batch))
    if conn.dialect.name == "postgresql":
        _reset_sequences(conn)
    conn.execute(insert(CourseMeta), [{"key": "dataset", "value": fingerprint(scale, seed)}])


_BUILDING = re.compile(r"\.building-(\d+)\.sqlite$")


def _build_sqlite_beside(db: Backend, scale: Scale, seed: int, bar: Progress) -> bool:
    """Build into ``<name>.building-<pid>.sqlite``, then rename it over ``<name>.sqlite``."""
    path = Path(db.sync_url.database or "")
    for old in path.parent.glob(f"{path.stem}.building-*.sqlite"):  # left by a crashed build
        match = _BUILDING.search(old.name)
        if match and not _alive(int(match[1])):
            old.unlink(missing_ok=True)
    staging_path = path.with_name(f"{path.stem}.building-{os.getpid()}.sqlite")
    staging_path.unlink(missing_ok=True)
    staging = _sqlite_at(staging_path, db.database)
    try:
        with staging.sync_engine.begin() as conn:
            _load(conn, scale, seed, bar)
        _analyze(staging)
    except BaseException:
        staging.sync_engine.dispose()
        staging_path.unlink(missing_ok=True)
        raise
    staging.sync_engine.dispose()
    path.with_name(path.name + "-journal").unlink(missing_ok=True)  # never replay into it
    os.replace(staging_path, path)
    if "sync_engine" in db.__dict__:
        db.sync_engine.dispose()  # this process's next connection opens the new file
    return True


def _build_postgres_at_once(
    db: Backend, scale: Scale, seed: int, bar: Progress, *, force: bool
) -> bool:
    """The whole build as one transaction, builders queued on an advisory lock."""
    digest = hashlib.sha1(f"course build {db.database}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    try:
        with db.sync_engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(key)))
            # Another kernel (or checkout on this server) may have built it while we waited.
            if not force and _fingerprint_in(conn) == fingerprint(scale, seed):
                return False
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
            _load(conn, scale, seed, bar)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise CourseConfigError(
            f"Cannot rebuild {db.database}: another kernel has kept it open in a transaction "
            f"for over {LOCK_WAIT} (a Session not closed?). Close that session or restart "
            "that kernel, then run this again."
        ) from None
    _analyze(db)
    return True


def _fingerprint_in(conn: Connection) -> str | None:
    if not inspect(conn).has_table(CourseMeta.__tablename__):
        return None
    return conn.scalar(select(CourseMeta.value).where(CourseMeta.key == "dataset"))


def reset_schema(db: Backend) -> Backend:
    """Drop and re-create every course table in ``db``, empty (for notebooks that write)."""
    with FileLock(data_dir() / f"build-{db.name}-{db.database}.lock"):
        Base.metadata.drop_all(db.sync_engine)
        Base.metadata.create_all(db.sync_engine)
    return db


def _reset_sequences(conn) -> None:
    """After inserting explicit ids, move each serial sequence past the largest id."""
    for table in Base.metadata.sorted_tables:
        if "id" not in table.c or not table.c.id.primary_key:
            continue
        largest = select(func.coalesce(func.max(table.c.id), 0) + 1).scalar_subquery()
        conn.execute(
            select(func.setval(func.pg_get_serial_sequence(table.name, "id"), largest, False))
        )


def _analyze(db: Backend) -> None:
    """Fresh planner statistics, so plans are the same on every run."""
    with db.sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def dataset(backend_name: str, scale: Scale, **kwargs: object) -> Backend:
    """The backend holding ``scale``'s dataset, built if needed: ``course_<scale>``."""
    scale = _as_scale(scale)
    db = backend(backend_name, f"course_{scale.name}")
    build(db, scale, **kwargs)  # type: ignore[arg-type]
    return db


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.data build --scale small [--backend sqlite] [--force]``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.data")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--scale", default=None)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    scale = choose_scale(args.scale)  # the boundary: resolved once, passed down typed
    for name in args.backend or ["sqlite", "postgresql"]:
        db = backend(name, f"course_{scale.name}")
        print(build(db, scale, force=args.force, progress=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
