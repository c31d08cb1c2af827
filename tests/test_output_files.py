"""`dripmail.output_files`: what an operator's --out may name, and a file written whole or not
at all (real files, a real SQLite database)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dripmail.errors import InputError
from dripmail.output_files import check_target, replaced_atomically, store_files
from tests.store_fixture import new_store


def test_store_files_name_the_database_and_its_companions(tmp_path: Path) -> None:
    kept = store_files("sqlite:///data/dripmail.db", tmp_path)
    base = str(tmp_path / "data" / "dripmail.db")
    assert set(kept) == {Path(base + s) for s in ("", "-wal", "-shm", "-journal", ".lock")}
    assert store_files("postgresql+psycopg://u:p@127.0.0.1/db", tmp_path) == {}
    assert store_files("sqlite://", tmp_path) == {}


@pytest.mark.parametrize("name", ["dripmail.db", "dripmail.db-wal", "dripmail.db-shm",
                                  "dripmail.db-journal", "dripmail.db.lock"])  # fmt: skip
def test_the_databases_files_are_refused_and_left_as_they_are(tmp_path: Path, name: str) -> None:
    engine = new_store("sqlite:///dripmail.db", tmp_path)
    engine.dispose()
    before = (tmp_path / "dripmail.db").read_bytes()
    kept = store_files("sqlite:///dripmail.db", tmp_path)
    said = f"--out .*{name}: that is .*SQLite database"
    with pytest.raises(InputError, match=said), replaced_atomically(tmp_path / name, kept) as out:
        out.write("email\n")
    assert (tmp_path / "dripmail.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_link_or_another_spelling_of_the_database_is_refused(tmp_path: Path) -> None:
    new_store("sqlite:///dripmail.db", tmp_path).dispose()
    kept = store_files("sqlite:///dripmail.db", tmp_path)
    (tmp_path / "link.csv").symlink_to(tmp_path / "dripmail.db")
    (tmp_path / "sub").mkdir()
    for target in (tmp_path / "link.csv", tmp_path / "sub" / ".." / "dripmail.db"):
        with pytest.raises(InputError, match="the SQLite database"):
            check_target(target, kept)


def test_a_missing_folder_a_folder_and_a_file_as_folder_say_the_path(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    cases = {
        tmp_path / "nowhere" / "out.csv": "the folder .*nowhere does not exist; create it",
        tmp_path: "is a folder: give a file name in it",
        tmp_path / "plain" / "out.csv": "plain is a file, not a folder",
    }
    for target, said in cases.items():
        with pytest.raises(InputError, match=said):
            check_target(target)


def test_a_failure_midway_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    with pytest.raises(KeyboardInterrupt), replaced_atomically(target) as handle:
        handle.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with replaced_atomically(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)  # the old file's permissions kept


def test_a_device_is_written_to_and_a_link_stays_a_link(tmp_path: Path) -> None:
    """A rename over the target replaced `--out /dev/null` (the device itself, as root) and
    turned a symlink into a plain file. Here through a link to /dev/null in tmp_path, so a
    regression replaces the link, never the machine's device."""
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    with replaced_atomically(null) as out:
        out.write("email\nann@example.org\n")
    assert null.is_symlink() and Path("/dev/null").is_char_device()
    (tmp_path / "t.csv").write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to("t.csv")
    with replaced_atomically(link) as out:
        out.write("email\n")
    assert link.is_symlink() and (tmp_path / "t.csv").read_text() == "email\n"


def test_the_projects_own_files_are_refused(tmp_path: Path) -> None:
    from dripmail.output_files import kept_files

    for folder in ("course", "outbox"):
        (tmp_path / folder).mkdir()
    (tmp_path / "outbox" / "index.jsonl").write_text('{"to": "ann@example.org"}\n')
    kept = kept_files("sqlite:///dripmail.db", tmp_path)
    cases = {
        tmp_path / "outbox" / "index.jsonl": "the outbox's files",
        tmp_path / ".env": r"the project's settings file \(.env\)",
        tmp_path / "course" / "new.md": r"the course's own files \(course/\)",
    }
    for target, said in cases.items():
        with pytest.raises(InputError, match=said):
            check_target(target, kept)
    assert (tmp_path / "outbox" / "index.jsonl").read_text() == '{"to": "ann@example.org"}\n'


def test_a_name_too_long_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="File name too long; choose another path"):
        check_target(tmp_path / ("x" * 300 + ".csv"))
