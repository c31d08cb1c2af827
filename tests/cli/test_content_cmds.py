"""check / render / test-send / init through typer's runner or the entry point in process; real
subprocesses where the process is the point (byte-identical renders across processes, the
built wheel, the preview server)."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dripmail.cli import app
from tests.cli_in_process import run_cli
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
    out = run_cli(root, "check")
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


def test_render_out_refuses_a_file_and_never_writes_over_the_database(root: Path) -> None:
    """Every file `render --out` writes goes through `output_files`: the database's files are
    refused even where a rendered file's name would land on them, and a file given as the
    folder is one line."""
    (root / "notes.txt").write_text("mine")
    as_folder = run_cli(root, "render", "--out", "notes.txt")
    assert as_folder.returncode == 1 and as_folder.stdout == ""
    assert as_folder.stderr.strip() == (
        f"error: --out {root / 'notes.txt'}: that is a file, not a folder: "
        "give a folder to write into"
    )
    assert (root / "notes.txt").read_text() == "mine"
    # A database kept where `index.html` would be written (an odd setting, but an --out the
    # operator chose must never cost the data).
    env = {**os.environ, "DRIPMAIL_DATABASE_URL": "sqlite:///site/index.html"}
    (root / "site").mkdir()
    run_cli(root, "subscribers", "add", "ana@example.org", env=env)
    clash = run_cli(root, "render", "--out", "site", env=env)
    assert clash.returncode == 1
    assert "index.html: that is the SQLite database (index.html)" in clash.stderr
    # Still the database (its bytes may differ: a WAL checkpoint of the earlier command's
    # connection can land at any time), with its reader below.
    assert (root / "site" / "index.html").read_bytes().startswith(b"SQLite format 3\x00")
    assert not list((root / "site").glob("day-*"))  # refused before the first file
    assert "ana@example.org" in run_cli(root, "subscribers", "list", env=env).stdout


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


def _send(root: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "send.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_render_is_byte_identical_across_processes(root: Path, tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        result = _send(root, "render", "--out", str(tmp_path / run))
        assert result.returncode == 0, result.stderr
        outputs.append(
            {p.name: _undated(p.read_bytes()) for p in sorted((tmp_path / run).iterdir())}
        )
    assert len(outputs[0]) == 8 * 3 + 1  # 7 lessons + confirm, 3 parts each, index.html
    assert outputs[0] == outputs[1]


def _undated(data: bytes) -> bytes:
    """The bytes without the Date header: by RFC 5322 it is when the message is handed over
    (issue 12), so two renders seconds apart differ there and nowhere else."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return data
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Date: ")]
    return b"\r\n".join(lines) + sep + body


def test_check_passes_on_the_real_course() -> None:
    result = _invoke(REPO, "check")
    assert result.exit_code == 0, result.output
    assert "ok: " in result.output and " emails checked" in result.output


def test_check_warns_near_gmails_clipping_limit_and_fails_above(root: Path) -> None:
    path = root / "course" / "day-4-stretch-4.md"
    paragraph = "Breathe in, lengthen the spine; breathe out and soften the hip. " * 12
    path.write_text(lesson_text(4) + f"\n{paragraph}\n" * 90)  # about 70 KB more HTML
    warned = _invoke(root, "check")
    assert warned.exit_code == 0, warned.output
    assert "warning: course/day-4-stretch-4.md: HTML is" in warned.output
    assert "close to Gmail's ~102 KB clipping" in warned.output
    path.write_text(lesson_text(4) + f"\n{paragraph}\n" * 130)
    failed = _invoke(root, "check")
    assert failed.exit_code == 1
    assert "error: course/day-4-stretch-4.md: HTML is" in failed.output


def test_broken_mjml_fails_check_at_template_line_without_traceback(root: Path) -> None:
    button = root / "emails" / "partials" / "button.mjml.j2"
    button.write_text(button.read_text().replace("</mj-column>", "</mj-colum>"))
    result = run_cli(root, "check")
    assert result.returncode == 1
    assert "error: emails/partials/button.mjml.j2:5: MJML: </mj-colum>" in result.stderr
    assert "Traceback" not in result.stderr


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


def test_init_from_the_built_wheel_gives_a_project_that_passes_check(tmp_path: Path) -> None:
    # The sample must ship inside the wheel (dripmail/sample/), not only in a checkout.
    import zipfile

    built = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path / "dist")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("dripmail-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-c", "from dripmail.cli import main; main()"]

    def run(*args: str) -> subprocess.CompletedProcess:
        # cwd is tmp_path, so the checkout's dripmail/ is not on the path: only the wheel's.
        return subprocess.run(
            [*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    where = subprocess.run(
        [sys.executable, "-c", "import dripmail.scaffold as s; print(s.sample_root())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "dripmail" / "sample")
    made = run("init", "studio")
    assert made.returncode == 0, made.stderr
    studio = tmp_path / "studio"
    assert sorted(p.name for p in studio.iterdir()) == [
        ".env.example",
        ".github",
        ".gitignore",
        ".pre-commit-config.yaml",
        "course",
        "emails",
        "newsletters",
    ]
    checked = run("--root", str(studio), "check")
    assert checked.returncode == 0, checked.stderr
    assert "ok: 10 emails checked" in checked.stdout  # 7 lessons, welcome, confirm, newsletter


def test_preview_serves_every_email_and_follows_edits(root: Path) -> None:
    pytest.importorskip("dripmail.web.app", reason="the web edge (dripmail/web) is not built yet")
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "send.py"),
            "--root",
            str(root),
            "preview",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it as from a terminal, even when the suite runs in the background
        # (which starts children with SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def page_until(text: str) -> str:
        deadline = time.monotonic() + 300  # generous: a loaded machine is slow, never wrong
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/preview", timeout=60).text
                if text in body:
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared in the preview")

    try:
        page_until("Day 3: a stretch for your hips")
        lesson = root / "course" / "day-3-stretch-3.md"
        lesson.write_text(lesson_text(3, subject="Day 3: rotate, do not force"))
        page_until("Day 3: rotate, do not force")
        # Ctrl-C with a page open: its long poll (which would wait for the next save) is
        # answered "stopping" at once instead of holding the shutdown, and the server ends.
        shown = httpx.get(f"http://127.0.0.1:{port}/preview/version", timeout=60).json()
        answers: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                httpx.get(
                    f"http://127.0.0.1:{port}/preview/version",
                    params={"seen": shown["version"]},
                    timeout=300,
                )
            )
        )
        poll.start()
        while (
            httpx.get(f"http://127.0.0.1:{port}/preview/version", timeout=60).json()["waiting"] < 1
        ):
            assert poll.is_alive(), answers
            time.sleep(0.05)
        server.send_signal(signal.SIGINT)
        poll.join(timeout=300)
        assert answers and answers[0].status_code == 503, answers
        assert answers[0].json() == {"version": shown["version"], "stopping": True}
        # 130: stopped by Ctrl-C (the README's exit codes), cleanly, with no traceback.
        assert server.wait(timeout=300) == 130
        assert "Traceback" not in (server.stderr.read() if server.stderr else "")
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=300)
        server.stdout.close()
        server.stderr.close()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    try:
        taken = _invoke(root, "preview", "--port", str(busy.getsockname()[1]))
        assert taken.exit_code == 1 and "is in use" in str(taken.exception)
    finally:
        busy.close()
