"""Tests for course_lib.settings: scale and backend choices, saved settings, display paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib.settings import (
    REPO_ROOT,
    CourseConfigError,
    Scale,
    choose_backends,
    choose_scale,
    data_dir,
    display_path,
    save_choice,
    scales,
    scales_table,
    seed,
)


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty COURSE_DATA_DIR (no saved settings) and no COURSE_SCALE / COURSE_BACKENDS."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_SCALE", raising=False)
    monkeypatch.delenv("COURSE_BACKENDS", raising=False)
    return tmp_path


# ----------------------------------------------------------------------------- scales


def test_scales_are_ordered_smallest_first() -> None:
    """data/scales.toml defines tiny, small, medium and large, in that order."""
    assert list(scales()) == ["tiny", "small", "medium", "large"]
    assert all(isinstance(s, Scale) for s in scales().values())


def test_seed_is_the_configured_one() -> None:
    """The generator seed comes from data/scales.toml."""
    assert seed() == 20261121


def test_tiny_scale_values() -> None:
    """The tiny scale the unit tests rely on has these exact sizes."""
    tiny = scales()["tiny"]
    assert (tiny.users, tiny.posts, tiny.comments, tiny.tags, tiny.cars) == (12, 36, 72, 6, 60)


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large"])
def test_scale_properties_are_products(name: str) -> None:
    """posts, comments and cars are products of the per-parent counts."""
    s = scales()[name]
    assert s.posts == s.users * s.posts_per_user
    assert s.comments == s.users * s.posts_per_user * s.comments_per_post
    assert s.cars == s.dealerships * s.cars_per_dealership


def test_scales_table_has_one_row_per_scale() -> None:
    """scales_table() is indexed by scale name and agrees with the Scale properties."""
    table = scales_table()
    assert list(table.index) == ["tiny", "small", "medium", "large"]
    assert list(table.columns) == [
        "users",
        "posts",
        "comments",
        "tags",
        "dealerships",
        "cars",
        "body chars",
    ]
    assert table.loc["small", "comments"] == scales()["small"].comments
    assert table.loc["tiny", "cars"] == 60


# ----------------------------------------------------------------------- choose_scale


def test_choose_scale_default_is_small(fresh: Path) -> None:
    """With nothing set or saved, the default from data/scales.toml is used."""
    assert choose_scale().name == "small"


def test_choose_scale_explicit_name(fresh: Path) -> None:
    """An explicit name is returned as that Scale."""
    assert choose_scale("tiny") == scales()["tiny"]


def test_choose_scale_from_env(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COURSE_SCALE is used when no name is given."""
    monkeypatch.setenv("COURSE_SCALE", "medium")
    assert choose_scale().name == "medium"


def test_choose_scale_explicit_name_beats_env(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit argument wins over COURSE_SCALE."""
    monkeypatch.setenv("COURSE_SCALE", "medium")
    assert choose_scale("tiny").name == "tiny"


def test_choose_scale_empty_env_is_ignored(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty COURSE_SCALE counts as unset."""
    monkeypatch.setenv("COURSE_SCALE", "")
    assert choose_scale().name == "small"


def test_unknown_scale_message(fresh: Path) -> None:
    """An unknown explicit name: one line naming the value and every valid scale."""
    with pytest.raises(CourseConfigError) as info:
        choose_scale("huge")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "Unknown scale 'huge': choose one of tiny, small, medium, large (see data/scales.toml)."
    )


def test_unknown_scale_from_env_names_the_variable(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad COURSE_SCALE is blamed on COURSE_SCALE, in one line."""
    monkeypatch.setenv("COURSE_SCALE", "Huge")
    with pytest.raises(CourseConfigError) as info:
        choose_scale()
    message = str(info.value)
    assert "\n" not in message
    assert "COURSE_SCALE" in message
    assert "'Huge'" in message
    assert "tiny, small, medium, large" in message


# -------------------------------------------------------------------- choose_backends


def test_choose_backends_default_is_both(fresh: Path) -> None:
    """With nothing set or saved, both backends are used, SQLite first."""
    assert choose_backends() == ["sqlite", "postgresql"]


def test_choose_backends_from_env(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COURSE_BACKENDS=sqlite selects SQLite alone."""
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite")
    assert choose_backends() == ["sqlite"]


def test_choose_backends_canonical_order_and_spaces(fresh: Path) -> None:
    """A comma-separated string is split, trimmed, deduplicated and put in canonical order."""
    assert choose_backends(" postgresql , sqlite,sqlite ") == ["sqlite", "postgresql"]
    assert choose_backends(["postgresql"]) == ["postgresql"]


def test_choose_backends_bad_value_message(fresh: Path) -> None:
    """An unknown backend: one line naming it and the valid ones."""
    with pytest.raises(CourseConfigError) as info:
        choose_backends("sqlite,mysql")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "Unknown backends ['mysql']: use a comma-separated subset of sqlite, postgresql, "
        "e.g. COURSE_BACKENDS=sqlite."
    )


def test_choose_backends_bad_env_names_the_variable(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad COURSE_BACKENDS is blamed on COURSE_BACKENDS."""
    monkeypatch.setenv("COURSE_BACKENDS", "oracle")
    with pytest.raises(CourseConfigError) as info:
        choose_backends()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Unknown COURSE_BACKENDS ['oracle']")


def test_choose_backends_empty_list_is_rejected(fresh: Path) -> None:
    """An explicitly empty choice is an error, not 'no backends'."""
    with pytest.raises(CourseConfigError, match=r"Unknown backends \[\]"):
        choose_backends([])


# ------------------------------------------------------------------------ save_choice


def test_save_choice_writes_settings_json(fresh: Path) -> None:
    """save_choice writes settings.json into COURSE_DATA_DIR."""
    path = save_choice(scale="tiny", backends=["postgresql", "sqlite"])
    assert path == fresh / "settings.json"
    assert json.loads(path.read_text()) == {"scale": "tiny", "backends": ["sqlite", "postgresql"]}


def test_save_choice_merges_with_earlier_choice(fresh: Path) -> None:
    """Saving only backends keeps the scale saved before."""
    save_choice(scale="medium")
    save_choice(backends=["sqlite"])
    saved = json.loads((fresh / "settings.json").read_text())
    assert saved == {"scale": "medium", "backends": ["sqlite"]}


def test_saved_scale_is_used(fresh: Path) -> None:
    """After saving, choose_scale() and choose_backends() return the saved choice."""
    save_choice(scale="tiny", backends=["sqlite"])
    assert choose_scale().name == "tiny"
    assert choose_backends() == ["sqlite"]


def test_env_wins_over_saved(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COURSE_SCALE and COURSE_BACKENDS win over settings.json."""
    save_choice(scale="tiny", backends=["sqlite"])
    monkeypatch.setenv("COURSE_SCALE", "large")
    monkeypatch.setenv("COURSE_BACKENDS", "postgresql")
    assert choose_scale().name == "large"
    assert choose_backends() == ["postgresql"]


def test_save_choice_rejects_unknown_scale_without_writing(fresh: Path) -> None:
    """A bad scale raises and leaves no settings.json behind."""
    with pytest.raises(CourseConfigError, match="'huge'"):
        save_choice(scale="huge")
    assert not (fresh / "settings.json").exists()


def test_corrupt_settings_file_is_ignored(fresh: Path) -> None:
    """A settings.json that is not JSON falls back to the defaults."""
    (fresh / "settings.json").write_text("{not json")
    assert choose_scale().name == "small"
    assert choose_backends() == ["sqlite", "postgresql"]


# ----------------------------------------------------------------------- paths


def test_data_dir_follows_env(fresh: Path) -> None:
    """COURSE_DATA_DIR decides data_dir()."""
    assert data_dir() == fresh


def test_data_dir_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_dir() creates a missing folder."""
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("COURSE_DATA_DIR", str(target))
    assert data_dir() == target
    assert target.is_dir()


def test_display_path_inside_repo_is_relative() -> None:
    """A path under the repository is shown relative to it."""
    assert display_path(REPO_ROOT / ".course" / "x.sqlite") == ".course/x.sqlite"


def test_display_path_in_data_dir(fresh: Path) -> None:
    """A file directly in an outside COURSE_DATA_DIR is shown as $COURSE_DATA_DIR/<name>."""
    assert display_path(fresh / "course_tiny.sqlite") == "$COURSE_DATA_DIR/course_tiny.sqlite"


@pytest.mark.parametrize(
    "path",
    [
        Path("/somewhere/else/y.sqlite"),
        Path("/"),
        Path("/tmp"),
        REPO_ROOT,
        REPO_ROOT / "a" / "b.txt",
        Path("relative/z.sqlite"),
    ],
)
def test_display_path_is_never_absolute(fresh: Path, path: Path) -> None:
    """Whatever the path, what a learner sees is not absolute."""
    shown = display_path(path)
    assert not shown.startswith("/")
    assert not Path(shown).is_absolute()


def test_display_path_outside_everything_is_the_name(fresh: Path) -> None:
    """A path outside the repository and the data folder is shown by its name only."""
    assert display_path(Path("/somewhere/else/y.sqlite")) == "y.sqlite"
    assert display_path(fresh / "sub" / "deep.rdb") == "deep.rdb"
