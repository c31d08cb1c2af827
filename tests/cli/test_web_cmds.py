"""`form` through the entry point in process; `serve` as a real subprocess (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path / "studio")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    env.update({"DRIPMAIL_SECRET_KEY": "cli-test-secret-0123456789", **extra})
    return env


def _send(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "send.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=600,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_form_prints_an_embeddable_form_posting_to_the_public_url(root: Path) -> None:
    # The entry point in process: printing a form is not about the process.
    out = run_cli(root, "form", env=_env(DRIPMAIL_PUBLIC_URL="https://join.studio.example.com/"))
    assert out.returncode == 0, out.stderr
    html = out.stdout
    assert 'action="https://join.studio.example.com/subscribe"' in html
    assert 'name="email" type="email"' in html and "required" in html
    assert 'name="timezone" value="America/New_York"' in html  # the course zone until JS runs
    assert "Intl.DateTimeFormat().resolvedOptions().timeZone" in html
    assert 'name="website"' in html and 'aria-hidden="true"' in html  # the honeypot
    assert 'name="source"' in html and "window.location.href" in html
    assert "#1f5f52" in html  # the course's brand colour


def _server(
    root: Path, command: str, port: int, sigint: signal.Handlers = signal.SIG_DFL
) -> subprocess.Popen[str]:
    """`serve`, `preview` or `report --serve` (`command`, split on spaces) on `port` as a real
    process, returned once /healthz answers. `sigint`: SIGINT's disposition the child starts
    with (SIG_DFL as from a terminal, SIG_IGN as a script's background job)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "send.py"),
            "--root",
            str(root),
            *command.split(),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # Ctrl-C as a terminal delivers it, even when the suite runs in the background
        # (which starts children with SIGINT ignored), unless `sigint` says otherwise.
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    deadline = time.monotonic() + 300  # generous: a loaded machine starts slowly
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).text == "ok":
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{command} did not come up: {proc.communicate()[1]}")
        time.sleep(0.2)


def test_serve_answers_sign_ups_until_stopped(root: Path) -> None:
    port = _free_port()
    proc = _server(root, "serve", port)
    base = f"http://127.0.0.1:{port}"
    try:
        answer = httpx.post(f"{base}/subscribe", data={"email": "cli@example.com"}, timeout=60)
        assert answer.status_code == 200
        deadline = time.monotonic() + 300  # the confirmation goes out after the answer
        while not list((root / "outbox").glob("confirm-*.eml")):
            assert time.monotonic() < deadline, "no confirmation email"
            time.sleep(0.1)
        assert httpx.get(f"{base}/preview", timeout=60).status_code == 404  # not without --preview
        assert httpx.get(f"{base}/confirm/secret-token-123", timeout=60).status_code == 400
    finally:
        proc.terminate()  # SIGTERM, as systemd stops it
        _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "POST /subscribe 200" in err  # one access line per request
    assert "GET /confirm/… 400" in err and "secret-token-123" not in err  # tokens redacted


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", ["serve", "preview", "report --serve"])
def test_the_servers_stop_cleanly_on_ctrl_c_and_on_sigterm(
    root: Path, command: str, stop: signal.Signals
) -> None:
    """Issue: on SIGTERM (systemd, `docker stop`, `kill`) `serve`, `preview` and then
    `report --serve` died with -15 and said nothing (and `report --serve` left Ctrl-C
    unsaid). Like `run` and `broadcast`: "stopped", exit 130, no traceback."""
    proc = _server(root, command, _free_port())
    try:
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert out.splitlines()[-1] == "stopped" and "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "preview", "report --serve"])
def test_kill_int_stops_a_server_started_as_a_scripts_background_job(
    root: Path, command: str
) -> None:
    """Issue: `bash -c 'dripmail preview & ...; kill -INT $!'` shut the server down through
    uvicorn's handler, then exited 0 with no "stopped": a background job starts with SIGINT
    ignored, and uvicorn restored that before raising the signal again. A SIGINT sent on
    purpose stops it as SIGTERM and Ctrl-C do: "stopped", exit 130."""
    proc = _server(root, command, _free_port(), sigint=signal.SIG_IGN)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert out.splitlines()[-1] == "stopped" and "Traceback" not in err


@pytest.mark.parametrize("command", ["serve", "preview", "report --serve"])
def test_a_server_starts_again_at_once_on_the_port_it_just_served_pages_on(
    root: Path, command: str
) -> None:
    """Issue: `preview` refused to start again for a minute after it served a page ("port
    8025 is in use") while only a TIME-WAIT connection was left; uvicorn itself could bind."""
    port = _free_port()
    first = _server(root, command, port)
    # As a browser does: the connection is kept open after the page, so the server closes
    # it when it stops, and its side waits in TIME-WAIT.
    with httpx.Client(timeout=60) as browser:
        try:
            page = {"serve": "/healthz", "preview": "/preview"}.get(command, "/report")
            assert browser.get(f"http://127.0.0.1:{port}{page}").status_code == 200
        finally:
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=300)
    assert first.returncode == 130
    again = _server(root, command, port)  # fails with its stderr if it refuses the port
    again.send_signal(signal.SIGINT)
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 130, err


@pytest.mark.parametrize("command", ["serve", "preview", "report --serve"])
def test_port_0_serves_on_a_free_port_and_prints_it(root: Path, command: str) -> None:
    """Issue: `serve --port 0` printed http://127.0.0.1:0/. The address printed is the one
    that answers."""
    import re

    args = [sys.executable, str(REPO / "send.py"), "--root", str(root), *command.split()]
    proc = subprocess.Popen(
        [*args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)/", line))
        assert len(ports) == 1 and ports != {"0"}, line
        base = f"http://127.0.0.1:{ports.pop()}"
        deadline = time.monotonic() + 300  # generous: a loaded machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=60).text == "ok":
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.2)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err


def test_a_port_in_use_is_refused_in_one_line(root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in ("serve", "report --serve"):
            out = _send(root, *command.split(), "--port", str(port))
            assert out.returncode == 1, out.stderr
            assert out.stderr.strip().splitlines() == [
                f"error: port {port} is in use on 127.0.0.1: stop what listens there, or pick "
                "another port with --port"
            ]


def test_serve_starts_with_a_broken_lesson_and_says_so_as_a_warning(root: Path) -> None:
    """Issue: `serve` refused to start while a lesson had an error, so a deploy with a typo
    took one-click unsubscribe and the webhooks down. It starts, says the problem (file:line,
    as `check` does) on stderr as a warning, and serves what needs no lesson text."""
    (lesson,) = (root / "course").glob("day-2-*.md")
    lines = lesson.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("stretch:"))
    lines[number - 1] = "stretch: [oops"
    lesson.write_text("\n".join(lines) + "\n")
    port = _free_port()
    proc = _server(root, "serve", port)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=60)
        assert page.status_code == 200  # the sign-up form needs no lesson text
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.startswith("warning: the course has errors; serving anyway"), err
    assert f"  course/{lesson.name}:{number}: front matter is not valid YAML" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.1", False),
     ("studio.example.com", False)],
)  # fmt: skip
def test_which_hosts_only_this_machine_reaches(host: str, loopback: bool) -> None:
    from dripmail.cli.web_cmds import is_loopback

    assert is_loopback(host) is loopback


def test_serve_preview_on_a_reachable_host_warns_in_one_line(root: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes before the
    # server tries to listen, the listen fails, nothing leaves loopback.
    out = _send(root, "serve", "--preview", "--host", "192.0.2.1", "--port", str(_free_port()))
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --preview on 192.0.2.1 lets anyone who reaches this address read /preview "
        "and /report (no login); use --host 127.0.0.1 unless that is meant"
    ], out.stderr
