"""Deterministic course data: the same scale and seed give the same rows on every backend.

>>> from course_lib.settings import choose_scale
>>> tables = dict(generate(choose_scale("tiny"), seed=1))
>>> len(tables["users"]), tables["users"][0]["email"]
(12, 'user1@example.com')

:func:`build` loads a scale with bulk Core inserts (``conn.execute(insert(table), rows)``),
records what it built in ``course_meta`` and skips the work next time, so any notebook can
call it first and Restart & Run All twice gives the same data.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from filelock import FileLock
from sqlalchemy import Table, func, insert, inspect, select
from tqdm.auto import tqdm

from .backends import Backend, backend
from .models import Base, CourseMeta
from .settings import Scale, choose_scale, data_dir
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
    engine = db.sync_engine
    with engine.connect() as conn:
        if not inspect(conn).has_table(CourseMeta.__tablename__):
            return None
        return conn.scalar(select(CourseMeta.value).where(CourseMeta.key == "dataset"))


def row_counts(db: Backend) -> dict[str, int]:
    """Rows per course table, counted now."""
    tables = _tables()
    with db.sync_engine.connect() as conn:
        return {
            name: conn.scalar(select(func.count()).select_from(tables[name]))
            for name in expected_rows(choose_scale("tiny"))
        }


def build(
    db: Backend,
    scale: Scale | str | None = None,
    *,
    seed: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> BuildReport:
    """Make ``db`` hold exactly the dataset for ``scale``; skip when it already does.

    ``progress=None`` shows a bar only for builds of more than 200,000 rows.
    """
    scale = scale if isinstance(scale, Scale) else choose_scale(scale)
    seed = default_seed() if seed is None else seed
    wanted = fingerprint(scale, seed)
    lock = FileLock(data_dir() / f"build-{db.name}-{db.database}.lock")
    with lock:
        if not force and current_fingerprint(db) == wanted:
            return BuildReport(db.name, db.database, scale.name, False, 0.0, row_counts(db))
        start = time.perf_counter()
        total = sum(expected_rows(scale).values())
        show = total > 200_000 if progress is None else progress
        tables = _tables()
        engine = db.sync_engine
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with (
            tqdm(
                total=total, unit=" rows", desc=f"{db.name} {scale.name}", disable=not show
            ) as bar,
            engine.begin() as conn,
        ):
            for name, rows in generate(scale, seed):
                for i in range(0, len(rows), CHUNK):
                    batch = rows[i : i + CHUNK]
                    conn.execute(insert(tables[name]), batch)
                    bar.update(len(batch))
            if engine.dialect.name == "postgresql":
                _reset_sequences(conn)
            conn.execute(insert(CourseMeta), [{"key": "dataset", "value": wanted}])
        _analyze(db)
        seconds = time.perf_counter() - start
    return BuildReport(db.name, db.database, scale.name, True, seconds, row_counts(db))


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


def dataset(backend_name: str, scale: Scale | str | None = None, **kwargs: object) -> Backend:
    """The backend holding ``scale``'s dataset, built if needed: ``course_<scale>``."""
    scale = scale if isinstance(scale, Scale) else choose_scale(scale)
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
    for name in args.backend or ["sqlite", "postgresql"]:
        db = backend(name, f"course_{choose_scale(args.scale).name}")
        print(build(db, args.scale, force=args.force, progress=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
