"""Tests for course_lib.claims: timing claims assert, and log for the rank-stability bench."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from course_lib.claims import ClaimFailed, claim


def test_a_claim_that_holds_returns_true() -> None:
    assert claim("lazy is slower", True) is True
    assert claim("slower on every backend", pd.Series([2.0, 3.0]) > 1.5) is True


def test_a_claim_that_fails_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """It must hold everywhere: one backend failing fails the claim, with the detail shown."""
    monkeypatch.delenv("COURSE_CLAIMS_LOG", raising=False)
    ratios = pd.Series({"sqlite": 3.0, "postgresql": 1.1})
    with pytest.raises(ClaimFailed, match=r"lazy is 1\.5x slower: did not hold") as info:
        claim("lazy is 1.5x slower", ratios > 1.5, detail=ratios.to_dict())
    assert "postgresql" in str(info.value)
    assert isinstance(info.value, AssertionError)


def test_claims_are_logged_and_record_only_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("COURSE_CLAIMS_LOG", str(log))
    monkeypatch.setenv("COURSE_CLAIMS_NOTEBOOK", "01_x.ipynb")
    claim("holds", True)
    with pytest.raises(ClaimFailed):
        claim("fails", False)
    monkeypatch.setenv("COURSE_CLAIMS_RECORD_ONLY", "1")
    assert claim("fails quietly", False) is False
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [
        {"notebook": "01_x.ipynb", "claim": "holds", "held": True},
        {"notebook": "01_x.ipynb", "claim": "fails", "held": False},
        {"notebook": "01_x.ipynb", "claim": "fails quietly", "held": False},
    ]


def test_a_claim_on_too_few_rows_is_not_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At the tiny scale nothing is asserted or logged; one line says why."""
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("COURSE_CLAIMS_LOG", str(log))
    assert claim("keyset beats OFFSET", False, rows=60) is None
    assert capsys.readouterr().out == (
        "Not claimed with 60 rows (timing claims need at least 1,000): keyset beats OFFSET\n"
    )
    assert not log.exists()
    with pytest.raises(ClaimFailed):
        claim("keyset beats OFFSET", False, rows=50_000)


def test_a_claim_on_a_frame_holds_only_when_every_cell_does() -> None:
    """A DataFrame of booleans (backends x sizes) is judged cell by cell."""
    frame = pd.DataFrame({"sqlite": [True, True], "postgresql": [True, True]})
    assert claim("every cell", frame) is True
    frame.loc[1, "postgresql"] = False
    with pytest.raises(ClaimFailed):
        claim("every cell", frame)
