"""`check` says what is wrong in words a marketer can act on, at file:line, once.

Through typer's CliRunner on a real project (the real templates) and once through the
entry point (`main()`, in process).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dripmail.cli import app
from tests.cli_in_process import run_cli
from tests.course_fixture import copy_real_project, make_project


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _check(root: Path) -> tuple[int, list[str]]:
    out = CliRunner().invoke(app, ["--root", str(root), "check"])
    return out.exit_code, out.output.splitlines()


def _append_to_template(root: Path, name: str, text: str) -> int:
    """Add `text` as the last line of emails/`name`; returns its line number."""
    path = root / "emails" / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, text]) + "\n")
    return len(lines) + 1


@pytest.mark.parametrize(
    ("typo", "said"),
    [
        (
            "{{ lesson.titel }}",
            "lesson has no field 'titel' (did you mean 'subject'? the lesson's title is its "
            "subject)",
        ),
        ("{{ course.titel }}", "course has no field 'titel' (did you mean 'title'?)"),
        ("{{ lesson.strech }}", "lesson has no field 'strech' (did you mean 'stretch'?)"),
        ("{{ recipient.frist_name }}", "recipient has no field 'frist_name' (did you mean"),
        ("{{ lesso.day }}", "unknown variable 'lesso' (did you mean 'lesson'?)"),
        ("{{ course.brand.primray }}", "course.brand has no field 'primray' (did you mean"),
    ],
)
def test_a_template_typo_names_the_field_meant_at_its_line(
    root: Path, typo: str, said: str
) -> None:
    line = _append_to_template(root, "lesson.txt.j2", typo)
    code, lines = _check(root)
    assert code == 1
    errors = [x for x in lines if x.startswith("error:")]
    assert errors == [f"error: emails/lesson.txt.j2:{line}: {said}"] or (
        len(errors) == 1 and errors[0].startswith(f"error: emails/lesson.txt.j2:{line}: {said}")
    ), lines
    assert "dripmail.content" not in "\n".join(lines)


def test_a_field_nobody_could_mean_lists_the_fields(root: Path) -> None:
    line = _append_to_template(root, "lesson.txt.j2", "{{ lesson.xyzzy }}")
    _, lines = _check(root)
    (error,) = [x for x in lines if x.startswith("error:")]
    assert error.startswith(f"error: emails/lesson.txt.j2:{line}: lesson has no field 'xyzzy'")
    assert "(its fields: day, slug, subject, preheader, stretch" in error
    assert "body_line" not in error and "path" not in error


def test_a_non_utf8_lesson_reads_like_a_non_utf8_template(root: Path) -> None:
    lesson = next((root / "course").glob("day-3-*.md"))
    data = lesson.read_bytes()
    lines = data.split(b"\n")
    lines[12] = lines[12] + b" caf\xe9"
    lesson.write_bytes(b"\n".join(lines))
    template = root / "emails" / "lesson.txt.j2"
    tdata = template.read_bytes().split(b"\n")
    tdata[1] = tdata[1] + b" \xe9"
    template.write_bytes(b"\n".join(tdata))
    code, out = _check(root)
    assert code == 1
    errors = [x for x in out if x.startswith("error:")]
    # The column an editor shows on that line, not a byte offset in the file.
    column = len(lines[12].decode("utf-8", errors="replace"))
    said = f"cannot read: not UTF-8 text (byte 0xe9 at column {column}) — save it as UTF-8"
    assert f"error: course/{lesson.name}:13: {said}" in errors, errors
    # Fix the lesson: the template's message has the same words, at its line.
    lesson.write_bytes(data)
    code, out = _check(root)
    errors = [x for x in out if x.startswith("error:")]
    assert code == 1 and errors, out
    column = len(tdata[1].decode("utf-8", errors="replace"))
    said = f"cannot read: not UTF-8 text (byte 0xe9 at column {column}) — save it as UTF-8"
    assert errors[0] == f"error: emails/lesson.txt.j2:2: {said}", errors


def test_a_tab_in_front_matter_is_explained_at_its_line(root: Path) -> None:
    lesson = next((root / "course").glob("day-2-*.md"))
    lines = lesson.read_text().splitlines()
    lines.insert(3, "\tstretch: indented with a tab")
    lesson.write_text("\n".join(lines) + "\n")
    code, out = _check(root)
    assert code == 1
    assert (
        f"error: course/{lesson.name}:4: front matter has a tab: YAML allows only spaces there; "
        "replace the tab with spaces (or remove the indentation)"
    ) in out


def test_http_links_and_images_are_warned_once_each(root: Path) -> None:
    lesson = next((root / "course").glob("day-2-*.md"))
    text = lesson.read_text()
    lesson.write_text(
        text + "\nWatch [the video](http://studio.example.com/v) and see "
        "![a pose](http://studio.example.com/p.jpg).\n"
    )
    line = len(text.splitlines()) + 2
    # A template's own http image shows in every email: warned for one email only.
    layout = root / "emails" / "layout.mjml.j2"
    pixel = '<mj-raw><img src="http://studio.example.com/pixel.png" alt="" /></mj-raw>'
    layout.write_text(
        layout.read_text().replace('css-class="body-bg">', f'css-class="body-bg">{pixel}', 1)
    )
    _, out = _check(root)
    warnings = [x for x in out if x.startswith("warning:")]
    where = f"course/{lesson.name}:{line}"
    assert warnings.count(f"warning: {where}: link is not https (http://studio.example.com/v)") == 1
    image = "image is not https (http://studio.example.com/p.jpg): mail clients block or flag it"
    assert warnings.count(f"warning: {where}: {image}") == 1
    assert sum("http://studio.example.com/v" in w for w in warnings) == 1
    assert sum("http://studio.example.com/p.jpg" in w for w in warnings) == 1
    assert sum("pixel.png" in w for w in warnings) == 1, warnings


def test_an_http_video_url_is_warned_once_at_its_line(root: Path) -> None:
    lesson = next((root / "course").glob("day-3-*.md"))
    old = "https://studio.example.com/videos/day-3"
    lines = lesson.read_text().splitlines()
    line = next(i for i, x in enumerate(lines, 1) if x.startswith("video_url:"))
    lesson.write_text(lesson.read_text().replace(old, "http://studio.example.com/videos/day-3"))
    _, out = _check(root)
    said = [x for x in out if "(http://studio.example.com/videos/day-3)" in x]
    assert said == [
        f"warning: course/{lesson.name}:{line}: video_url: not https "
        "(http://studio.example.com/videos/day-3)"
    ], out


def test_check_messages_through_the_entry_point(root: Path) -> None:
    line = _append_to_template(root, "lesson.txt.j2", "{{ course.titel }}")
    out = run_cli(root, "check")  # main(), as send.py calls it, in process
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        f"error: emails/lesson.txt.j2:{line}: course has no field 'titel' (did you mean 'title'?)"
        in out.stderr.splitlines()
    )


def test_a_lesson_variable_in_the_welcome_says_it_is_not_there_and_what_is(
    tmp_path: Path,
) -> None:
    """Tester's report: `{{ lesson.subject }}` in emails/welcome.mjml.j2 said "unknown
    variable 'lesson' (did you mean 'lesson'?)". A name is never suggested as itself."""
    root = copy_real_project(tmp_path)
    template = root / "emails" / "welcome.mjml.j2"
    text = template.read_text()
    template.write_text(text.replace("{{ welcome.subject }}", "{{ lesson.subject }}", 1))
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "{{ welcome.subject }}" in x)
    code, out = _check(root)
    assert code == 1
    assert [x for x in out if x.startswith("error:")] == [
        f"error: emails/welcome.mjml.j2:{line}: variable 'lesson' is not available in the "
        "welcome email — it has: course, recipient, welcome, body_html, body_top, body_rest, "
        "body_text"
    ]
    template.write_text(text.replace("{{ welcome.subject }}", "{{ welcom.subject }}", 1))
    code, out = _check(root)
    assert [x for x in out if x.startswith("error:")] == [
        f"error: emails/welcome.mjml.j2:{line}: unknown variable 'welcom' (did you mean 'welcome'?)"
    ]
    template.write_text(text.replace("{{ welcome.subject }}", "{{ zzz }}", 1))
    code, out = _check(root)
    (error,) = [x for x in out if x.startswith("error:")]
    assert error.endswith(
        "unknown variable 'zzz' (the welcome email has: course, recipient, "
        "welcome, body_html, body_top, body_rest, body_text)"
    )
