"""Static checks of the classroom Docker setup (docker-compose.yml, Dockerfile, .env.example).

No Docker engine is needed: the files are parsed and their values asserted directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
GITIGNORE = REPO / ".gitignore"

EXPECTED_SERVICES = {"postgres", "pgbouncer", "redis", "jupyter"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VAR_EXPR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `services` mapping of docker-compose.yml."""
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services mapping"
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, accepting both the mapping and the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _strings(node: Any) -> list[str]:
    """Every string value (not key) anywhere in a parsed YAML tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _substitute(value: str) -> tuple[str, set[str]]:
    """Replace each ${...} expression by a distinct placeholder; return text and placeholders."""
    placeholders: set[str] = set()

    def repl(match: re.Match[str]) -> str:
        token = f"placeholder{len(placeholders)}"
        placeholders.add(token)
        return token

    return VAR_EXPR.sub(repl, value), placeholders


def _is_reference(value: str) -> bool:
    """True if the whole value is a single ${VAR...} reference."""
    return VAR_EXPR.fullmatch(value.strip()) is not None


def _env_example_names() -> set[str]:
    """Variable names assigned (not commented out) in .env.example."""
    names: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_services_and_images(services: dict[str, dict[str, Any]]) -> None:
    """postgres and redis use pinned official images, pgbouncer a pinned maintained one;
    jupyter is built from the Dockerfile."""
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"
    assert services["postgres"].get("image") == "postgres:16"
    assert services["redis"].get("image") == "redis:7"
    image = services["pgbouncer"].get("image", "")
    assert re.fullmatch(r"edoburu/pgbouncer:v1\.\d+\.\d+(-p\d+)?", image), image

    build = services["jupyter"].get("build")
    assert build is not None, "jupyter must be built from the repository"
    if isinstance(build, str):
        build = {"context": build}
    assert build.get("context") == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES))
def test_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    """Every service has a healthcheck with a non-empty test command."""
    healthcheck = services[name].get("healthcheck")
    assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
    test = healthcheck.get("test")
    assert test, f"{name} healthcheck has no test command"
    if isinstance(test, list):
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name} healthcheck test must start CMD/CMD-SHELL"
        assert len(test) > 1 and all(isinstance(part, str) and part for part in test[1:])
    command = " ".join(test) if isinstance(test, list) else test
    expected = {
        "postgres": "pg_isready",
        "pgbouncer": "pg_isready -h 127.0.0.1 -p 6432",
        "redis": "redis-cli ping",
        "jupyter": "http://127.0.0.1:8888/api",
    }[name]
    assert expected in command, f"{name} healthcheck should use {expected!r}, got {command!r}"


def test_jupyter_waits_for_healthy_backends(services: dict[str, dict[str, Any]]) -> None:
    """jupyter starts only once postgres, pgbouncer and redis report healthy."""
    depends_on = services["jupyter"].get("depends_on")
    assert isinstance(depends_on, dict), "jupyter.depends_on must use the long (mapping) form"
    for backend in ("postgres", "pgbouncer", "redis"):
        assert backend in depends_on, f"jupyter does not depend on {backend}"
        assert depends_on[backend].get("condition") == "service_healthy"


def test_ports_bound_to_localhost(services: dict[str, dict[str, Any]]) -> None:
    """Every published port is bound to 127.0.0.1, never to all interfaces."""
    published = 0
    for name, service in services.items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} not on 127.0.0.1"
            else:
                assert isinstance(port, str), f"{name}: port {port!r} must be a quoted string"
                assert port.startswith("127.0.0.1:"), f"{name}: {port!r} not bound to 127.0.0.1"
            published += 1
    assert published >= 4, "expected published ports for postgres, pgbouncer, redis and jupyter"


def test_repository_bind_mounted(services: dict[str, dict[str, Any]]) -> None:
    """The repository is bind-mounted into the jupyter service at /workbook."""
    mounts: list[tuple[str, str]] = []
    for volume in services["jupyter"].get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source")), str(volume.get("target"))))
        else:
            source, _, rest = str(volume).partition(":")
            mounts.append((source, rest.split(":", 1)[0]))
    assert (".", "/workbook") in mounts, f"repository not mounted at /workbook: {mounts}"


def test_backend_urls_use_service_names(services: dict[str, dict[str, Any]]) -> None:
    """The course URLs point at the compose service names, not at localhost."""
    env = _environment(services["jupyter"])

    pg_text, pg_placeholders = _substitute(env["COURSE_POSTGRES_URL"])
    pg = urlsplit(pg_text)
    assert pg.scheme == "postgresql"
    assert pg.hostname == "postgres"
    assert pg.port == 5432
    assert pg.password in pg_placeholders, "postgres password must come from a ${VAR}"

    redis = urlsplit(_substitute(env["COURSE_REDIS_URL"])[0])
    assert redis.scheme == "redis"
    assert redis.hostname == "redis"

    assert env.get("COURSE_DATA_DIR") == "/workbook/.course"


def test_pgbouncer_in_transaction_mode_in_front_of_postgres(
    services: dict[str, dict[str, Any]],
) -> None:
    """pgbouncer pools the compose postgres in transaction mode, with postgres's credentials,
    and jupyter reaches it at the port it listens on (COURSE_PGBOUNCER_URL)."""
    bouncer = services["pgbouncer"]
    env = _environment(bouncer)
    assert env["POOL_MODE"] == "transaction"
    assert env["DB_HOST"] == "postgres" and env["DB_PORT"] == "5432"
    assert env["AUTH_TYPE"] == "scram-sha-256"  # postgres:16 stores SCRAM passwords
    assert _is_reference(env["DB_USER"]) and _is_reference(env["DB_PASSWORD"])
    assert VAR_EXPR.fullmatch(env["DB_PASSWORD"])[1] == "POSTGRES_PASSWORD"
    assert env["ADMIN_USERS"] == env["DB_USER"]  # the lesson reads SHOW CONFIG as the app user
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    listen = int(env["LISTEN_PORT"])
    assert [str(p).rsplit(":", 1)[-1] for p in bouncer["ports"]] == [str(listen)]

    url_text, placeholders = _substitute(_environment(services["jupyter"])["COURSE_PGBOUNCER_URL"])
    url = urlsplit(url_text)
    assert url.scheme == "postgresql" and url.hostname == "pgbouncer" and url.port == listen
    assert url.password in placeholders, "the pgbouncer URL's password must come from a ${VAR}"


def test_no_literal_secrets(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    """Password/token settings and passwords inside URLs are all ${VAR} references."""
    checked = 0
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_KEY.search(key):
                assert _is_reference(value), f"{name}.{key} holds a literal value: {value!r}"
                checked += 1
    assert checked >= 2, "expected POSTGRES_PASSWORD and JUPYTER_TOKEN to be set from ${VAR}"

    for value in _strings(compose):
        if "://" not in value:
            continue
        text, placeholders = _substitute(value)
        password = urlsplit(text).password
        assert password is None or password in placeholders, f"literal password in {value!r}"


def test_env_example_lists_required_variables() -> None:
    """.env.example exists and defines every variable the compose file marks required (:?)."""
    assert ENV_EXAMPLE.is_file(), ".env.example is missing"
    required = set(REQUIRED_VAR.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert {"POSTGRES_PASSWORD", "JUPYTER_TOKEN"} <= required
    missing = required - _env_example_names()
    assert not missing, f".env.example does not define: {sorted(missing)}"


def test_env_is_gitignored() -> None:
    """.env (real credentials) is listed in .gitignore."""
    assert GITIGNORE.is_file(), ".gitignore is missing"
    lines = {line.strip() for line in GITIGNORE.read_text(encoding="utf-8").splitlines()}
    assert lines & {".env", "/.env"}, ".env is not listed in .gitignore"


def test_dockerfile_uses_lock_and_python_311() -> None:
    """The image is python:3.11 and installs the locked requirements before the project."""
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    assert froms, "Dockerfile has no FROM"
    assert all(re.match(r"FROM\s+python:3\.11\b", line, re.IGNORECASE) for line in froms), froms

    text = "\n".join(lines)
    lock_install = re.search(r"pip install[^\n]*-r\s+requirements\.lock", text)
    assert lock_install, "Dockerfile does not pip install -r requirements.lock"
    copy_all = re.search(r"^COPY\s+(?:--\S+\s+)*\.\s+\.", text, re.MULTILINE)
    assert copy_all, "Dockerfile does not copy the project"
    assert lock_install.start() < copy_all.start(), "lock install must precede COPY . ."

    users = [line.split(None, 1)[1] for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "image must run as a non-root user"
