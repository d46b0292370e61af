"""The README tells a newcomer the truth: the two commands exist, the course map is current."""

from __future__ import annotations

import re
from pathlib import Path

from course_lib.navigation import course_map

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_commands_are_make_targets() -> None:
    """`make lab` and `make test` are in the README and defined in the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run ends by running exactly `make test`."""
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert lines[-1].strip() == "make test"


def test_course_map_in_readme_matches_data() -> None:
    """Every planned notebook appears in the README's map with its number and minutes."""
    for entry in course_map():
        row = next((ln for ln in README.splitlines() if ln.startswith(f"| {entry.number} |")), "")
        assert entry.title in row, f"README course map lacks {entry.number} {entry.title}"
        assert row.rstrip(" |").endswith(str(entry.minutes)), row
