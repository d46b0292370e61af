"""Tests for course_lib.settings: scale and backend choices, saved settings, display paths."""

from __future__ import annotations

import errno
import json
import os
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
    lookup_scale,
    save_choice,
    scales,
    scales_table,
    seed,
)

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


RESET = "delete $COURSE_DATA_DIR/settings.json or pick again in notebook 00"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON (line 1)"),
        ('["x"]', "holds a JSON list"),
        ("42", "holds a JSON int"),
        (b"\xff\xfe", "cannot be read (UnicodeDecodeError)"),
    ],
)
def test_broken_settings_file_names_the_file_and_the_reset(
    fresh: Path, content: str | bytes, problem: str
) -> None:
    """A settings.json that is not a JSON object: one line naming that file and the reset."""
    path = fresh / "settings.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for choose in (choose_scale, choose_backends):
        with pytest.raises(CourseConfigError) as info:
            choose()
        message = str(info.value)
        assert "\n" not in message
        assert message == (
            f"The saved settings file $COURSE_DATA_DIR/settings.json {problem}, not an object "
            f'like {{"scale": "small"}}: {RESET}.'
        )


def test_settings_file_that_is_a_folder(fresh: Path) -> None:
    """settings.json being a folder is blamed on that path too."""
    (fresh / "settings.json").mkdir()
    with pytest.raises(
        CourseConfigError, match=r"settings.json cannot be read \(IsADirectoryError"
    ):
        choose_scale()


def test_unknown_saved_scale_names_the_file(fresh: Path) -> None:
    """A scale saved in settings.json that scales.toml no longer has: the file is the source."""
    (fresh / "settings.json").write_text('{"scale": "huge"}')
    with pytest.raises(CourseConfigError) as info:
        choose_scale()
    assert str(info.value) == (
        "Unknown scale 'huge' saved in $COURSE_DATA_DIR/settings.json: choose one of tiny, "
        f"small, medium, large (see data/scales.toml); or {RESET}."
    )


@pytest.mark.parametrize("saved", ['{"backends": ["oracle"]}', '{"backends": "sqlite"}'])
def test_bad_saved_backends_names_the_file(fresh: Path, saved: str) -> None:
    """Backends saved in settings.json that are not a list of known names: the file is named."""
    (fresh / "settings.json").write_text(saved)
    with pytest.raises(CourseConfigError) as info:
        choose_backends()
    message = str(info.value)
    assert message.startswith("Unknown backends [")
    assert "] saved in $COURSE_DATA_DIR/settings.json: use a comma-separated subset" in message
    assert message.endswith(f"; or {RESET}.")


def test_env_wins_over_a_broken_settings_file(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COURSE_SCALE / COURSE_BACKENDS never read the file, so a broken one does not matter."""
    (fresh / "settings.json").write_text('["x"]')
    monkeypatch.setenv("COURSE_SCALE", "tiny")
    monkeypatch.setenv("COURSE_BACKENDS", "sqlite")
    assert (choose_scale().name, choose_backends()) == ("tiny", ["sqlite"])
    assert choose_scale("small").name == "small"


def test_picking_again_repairs_a_broken_settings_file(fresh: Path) -> None:
    """save_choice (the picker in notebook 00) overwrites a broken file with the new choice."""
    (fresh / "settings.json").write_text('["x"]')
    save_choice(scale="tiny", backends=["sqlite"])
    assert choose_scale().name == "tiny"
    assert choose_backends() == ["sqlite"]


def test_lookup_scale_ignores_environment_and_saved_choice(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lookup_scale is a pure lookup: the scale is resolved once, by choose_scale."""
    monkeypatch.setenv("COURSE_SCALE", "medium")
    (fresh / "settings.json").write_text("{not json")
    assert lookup_scale("tiny").name == "tiny"
    with pytest.raises(CourseConfigError, match="Unknown scale 'huge'"):
        lookup_scale("huge")


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


# ------------------------------------------------------------------ a bad COURSE_DATA_DIR


def _data_dir_error(monkeypatch: pytest.MonkeyPatch, value: str) -> str:
    monkeypatch.setenv("COURSE_DATA_DIR", value)
    with pytest.raises(CourseConfigError) as info:
        data_dir()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"COURSE_DATA_DIR={value} cannot hold the course's files (")
    assert message.endswith(
        "): set COURSE_DATA_DIR to a folder you can write, or unset it to use .course/."
    )
    return message


def test_data_dir_under_a_regular_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path below a regular file: one line, 'Not a directory'."""
    (tmp_path / "file").write_text("x")
    message = _data_dir_error(monkeypatch, str(tmp_path / "file" / "data"))
    assert "(Not a directory)" in message


def test_data_dir_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COURSE_DATA_DIR naming a regular file: one line saying so."""
    (tmp_path / "file").write_text("x")
    assert "(it is a file, not a folder)" in _data_dir_error(monkeypatch, str(tmp_path / "file"))


def test_data_dir_in_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder under /proc cannot be created: one line, not an OSError traceback."""
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    _data_dir_error(monkeypatch, "/proc/course-data")


def test_data_dir_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that exists but refuses new files (mode 0500; root ignores modes)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: file modes do not stop writes")
        assert "(Permission denied)" in _data_dir_error(monkeypatch, str(folder))
    finally:
        folder.chmod(0o700)


def test_data_dir_on_a_read_only_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS (a read-only mount) is reported by name; simulated, as mounting needs privileges."""
    import tempfile

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    message = _data_dir_error(monkeypatch, str(tmp_path / "mounted"))
    assert "(Read-only file system)" in message


def test_default_data_dir_unwritable_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without COURSE_DATA_DIR, the message names .course/ and COURSE_DATA_DIR as the fix."""
    import tempfile

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr("course_lib.settings._writable", set())
    with pytest.raises(CourseConfigError) as info:
        data_dir()
    assert str(info.value) == (
        "The course's data folder .course/ cannot be written (Permission denied): make the "
        "repository folder writable, or set COURSE_DATA_DIR to a folder you can write."
    )


def test_setup_with_a_bad_data_dir_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cl.setup() itself stops with the same one line (no OSError from deeper down)."""
    from course_lib.course import setup

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "file" / "data"))
    with pytest.raises(CourseConfigError, match=r"^COURSE_DATA_DIR=.* \(Not a directory\)"):
        setup(scale="tiny", backends="sqlite")
