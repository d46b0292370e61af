"""The picker's stored form: an untrusted notebook shows only its text/plain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib.widgets import (
    WIDGET_VIEW,
    SettingsPicker,
    current_choice,
    settings_picker,
    strip_widget_state,
)


def test_plain_text_says_what_the_cell_is(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """text/plain is one sentence with the choice in force, never VBox(children=...)."""
    monkeypatch.setenv("COURSE_SCALE", "small")
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite,postgresql")
    bundle = settings_picker()._repr_mimebundle_()
    assert bundle["text/plain"] == (
        "Scale/backends picker: run this cell in JupyterLab to choose; "
        "choice in force when this output was made: scale=small, backends=sqlite,postgresql"
    )
    assert WIDGET_VIEW in bundle  # JupyterLab still renders the live widget


def test_drop_downs_start_at_the_choice_in_force(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COURSE_SCALE=tiny, COURSE_BACKENDS=sqlite: the drop-downs show that choice."""
    monkeypatch.setenv("COURSE_SCALE", "tiny")
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite")
    picker = settings_picker()
    assert isinstance(picker, SettingsPicker)
    scale, backends, _save, _message = picker.children
    assert (scale.value, backends.value) == ("tiny", "SQLite only")
    assert current_choice() == "scale=tiny, backends=sqlite"


def test_a_broken_choice_still_gives_a_picker(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown COURSE_SCALE does not break the picker: it is how to fix the choice."""
    monkeypatch.setenv("COURSE_SCALE", "huge")
    picker = settings_picker()
    assert "when this output was made: none that works (" in repr(picker)
    assert "'huge'" in repr(picker)
    assert picker.children[0].value == "tiny"


def test_strip_widget_state_keeps_only_the_sentence() -> None:
    """Saved widget state and views go; the picker's one-line text/plain stays."""
    notebook = {
        "metadata": {"widgets": {"state": {}}},
        "cells": [
            {
                "cell_type": "code",
                "outputs": [{"data": {WIDGET_VIEW: {"model_id": "x"}, "text/plain": "Picker"}}],
            }
        ],
    }
    assert strip_widget_state(notebook)
    assert notebook["metadata"] == {}
    assert notebook["cells"][0]["outputs"][0]["data"] == {"text/plain": "Picker"}
    assert not strip_widget_state(notebook)


def test_notebook_00_is_stored_without_widget_state() -> None:
    """A fresh clone, trusted or not, draws no dead drop-downs: only the sentence."""
    path = Path(__file__).parents[1] / "notebooks" / "00_start_here.ipynb"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in notebook["metadata"]
    outputs = [o for c in notebook["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    picker = [o for o in outputs if "picker" in "".join(o.get("data", {}).get("text/plain", ""))]
    assert picker and "when this output was made" in "".join(picker[0]["data"]["text/plain"])
