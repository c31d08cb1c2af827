"""`run --loop` uses the course's files as they are at each pass (issue: it kept sending the
subjects, bodies and templates it loaded at start), and a pass with broken files sends nothing
and says where, without ending the loop. The entry point in process with a real project, SQLite
and the outbox; the loop's sleep is the seam (edits happen between passes, no minute waited)."""

from __future__ import annotations

import email
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest

from dripmail.app import Dripmail
from dripmail.config import Project, load_settings
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project


def _add(root: Path, address: str) -> None:
    """A reader whose lesson 1 was due yesterday (the core, as `subscribers add` does)."""
    core = Dripmail(Project(root), load_settings(root))
    try:
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
        core.add_subscriber(address, timezone="UTC", start=yesterday)
    finally:
        core.close()
        core.engine.dispose()


def _sent(root: Path) -> dict[str, email.message.EmailMessage]:
    """Every lesson in the outbox, by recipient."""
    found = {}
    for path in sorted((root / "outbox").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        found[message["To"].addresses[0].addr_spec] = message
    return found


def _set(path: Path, key: str, value: str) -> str:
    """Replace front matter `key:` in `path`; returns the text before."""
    before = path.read_text()
    lines = before.split("\n")
    lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]
    path.write_text("\n".join(lines))
    return before


def _loop(root: Path, monkeypatch: pytest.MonkeyPatch, between: list[Callable[[], None]]):
    """`run --loop -q` in process; after pass N the loop's sleep runs `between[N-1]` instead
    of sleeping, and Ctrl-C ends the loop after the last."""
    import dripmail.cli.engine_cmds as engine_cmds

    steps = iter(between)

    class Clock:
        @staticmethod
        def sleep(seconds: float) -> None:
            step = next(steps, None)
            if step is None:
                raise KeyboardInterrupt
            step()

    monkeypatch.setattr(engine_cmds, "wallclock", Clock)
    return run_cli(root, "run", "--loop", "-q", env=dict(os.environ))


def test_the_loop_sends_the_text_as_it_is_at_each_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    _add(root, "ann@example.org")
    (lesson,) = (root / "course").glob("day-1-*.md")
    template = root / "emails" / "lesson.txt.j2"

    def edit() -> None:
        _set(lesson, "subject", '"Day 1, EDITED while the loop runs"')
        template.write_text(template.read_text() + "\nEDITED template line.\n")
        _add(root, "bo@example.org")

    out = _loop(root, monkeypatch, [edit])
    assert out.returncode == 130, out.stdout + out.stderr
    sent = _sent(root)
    assert sent["ann@example.org"]["Subject"] == "Day 1: a stretch for your hips"
    assert sent["bo@example.org"]["Subject"] == "Day 1, EDITED while the loop runs"
    body = sent["bo@example.org"].get_body(("plain",)).get_content()
    assert "EDITED template line." in body


def test_a_pass_with_broken_files_sends_nothing_says_where_and_the_next_pass_after_the_fix_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    (broken,) = (root / "course").glob("day-2-*.md")
    good = broken.read_text()
    line = 1 + good.split("\n").index(next(x for x in good.split("\n") if x.startswith("stretch:")))
    passes: list[int] = []

    def break_it() -> None:
        _add(root, "cy@example.org")  # lesson 1 due: held back while the course is broken
        _set(broken, "stretch", "[oops")

    def look_again() -> None:  # a second pass on the same broken files: said once
        passes.append(len(_sent(root)))

    def fix() -> None:
        passes.append(len(_sent(root)))
        broken.write_text(good)

    _add(root, "ann@example.org")
    out = _loop(root, monkeypatch, [break_it, look_again, fix])
    assert out.returncode == 130, out.stdout + out.stderr
    assert passes == [1, 1]  # nothing went out while the files were broken
    assert set(_sent(root)) == {"ann@example.org", "cy@example.org"}  # the pass after the fix
    where = f"course/{broken.name}:{line}: front matter is not valid YAML"
    assert out.stderr.count(where) == 1, out.stderr  # said once, not every minute
    assert "no lessons sent: the course has errors" in out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    assert any("the course loads again" in x for x in lines), lines
    assert any("1 sent" in x for x in lines[1:]), lines  # cy's lesson, after the fix
    assert lines[-1].startswith("stopped: 0 lessons handed over and recorded in this pass")


def test_one_run_with_broken_files_still_exits_1_naming_the_line(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    _add(root, "ann@example.org")
    (broken,) = (root / "course").glob("day-2-*.md")
    _set(broken, "stretch", "[oops")
    out = run_cli(root, "run", env=dict(os.environ))
    assert out.returncode == 1
    assert f"course/{broken.name}:" in out.stderr and not (root / "outbox").exists()
