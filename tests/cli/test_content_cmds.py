"""check / render / test-send / init through typer's runner and as real subprocesses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dripmail.cli import app
from tests.course_fixture import lesson_text, make_project

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path / "studio")


def _invoke(root: Path, *args: str):
    return runner.invoke(app, ["--root", str(root), *args])


def test_check_passes_on_a_valid_project(root: Path) -> None:
    result = _invoke(root, "check")
    assert result.exit_code == 0, result.output
    assert "ok: 8 emails checked" in result.output


def test_check_reports_one_line_per_problem_and_exits_1(root: Path) -> None:
    (root / "course" / "day-3-stretch-3.md").write_text(lesson_text(3, video_url="htp://x"))
    (root / "course" / "day-5-stretch-5.md").unlink()
    out = subprocess.run(
        [sys.executable, str(REPO / "send.py"), "--root", str(root), "check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert 'error: course/day-3-stretch-3.md:8: video_url: not a URL ("htp://x")' in out.stderr
    assert "Traceback" not in out.stderr


def test_check_reports_template_errors_at_file_and_line(root: Path) -> None:
    layout = root / "emails" / "layout.mjml.j2"
    text = layout.read_text().replace("{{ course.postal_address }}", "{{ course.postal_adress }}")
    layout.write_text(text)
    result = _invoke(root, "check")
    assert result.exit_code == 1
    assert "emails/layout.mjml.j2:" in result.output and "postal_adress" in result.output


def test_render_writes_html_text_eml_and_index(root: Path) -> None:
    result = _invoke(root, "render")
    assert result.exit_code == 0, result.output
    out = root / "build" / "preview"
    assert (out / "day-1-stretch-1.html").read_text().startswith("<!doctype html>")
    assert "Hi Alex," in (out / "day-7-stretch-7.txt").read_text()
    assert (out / "confirm.eml").read_bytes().startswith(b"From:") or b"MIME" in (
        out / "confirm.eml"
    ).read_bytes()
    index = (out / "index.html").read_text()
    assert index.count("<tr>") == 1 + 8 and "Day 4: a stretch for your hips" in index


def test_test_send_writes_once_to_the_outbox(root: Path) -> None:
    first = _invoke(root, "test-send", "2", "--to", "Me@Example.org")
    assert first.exit_code == 0, first.output
    _invoke(root, "test-send", "2", "--to", "me@example.org")
    lines = [json.loads(x) for x in (root / "outbox" / "index.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["kind"] == "test" and lines[0]["ref"] == "2"
    assert lines[0]["to"] == "me@example.org"
    bad = _invoke(root, "test-send", "2", "--to", "not-an-address")
    assert bad.exit_code == 1


def test_init_scaffolds_a_project_that_passes_check(tmp_path: Path, root: Path) -> None:
    import dripmail.scaffold as scaffold

    target = tmp_path / "new-studio"
    original = scaffold.sample_root
    scaffold.sample_root = lambda: root  # the sample as it ships; here, the fixture project
    try:
        result = _invoke(tmp_path, "init", str(target))
    finally:
        scaffold.sample_root = original
    assert result.exit_code == 0, result.output
    assert (target / ".env.example").read_text().count("DRIPMAIL_SECRET_KEY") == 1
    assert _invoke(target, "check").exit_code == 0
    again = _invoke(tmp_path, "init", str(target))
    assert again.exit_code == 1 and "already exists" in str(again.exception or again.output)
