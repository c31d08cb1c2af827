"""A studio's repo from `init`: ignore rules, a pre-commit hook and a CI recipe that run `check`.

The hook is run for real by pre-commit in a fresh git repo (a `dripmail` on PATH that runs
this checkout), on a valid course and on one with a template typo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

import dripmail
from dripmail.cli import app

REPO = Path(__file__).resolve().parents[2]
IGNORED = (".env", "dripmail.db", "dripmail.db-wal", "outbox/x.eml", "build/a.html", ".venv/x")


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_init_writes_ignore_rules_hook_and_ci_and_names_the_console_script(tmp_path: Path) -> None:
    dest = tmp_path / "studio"
    out = CliRunner().invoke(app, ["init", str(dest)])
    assert out.exit_code == 0, out.output
    assert out.output.strip().splitlines()[-1] == (
        f"next: cd {dest} && dripmail check && dripmail preview"
    )
    ignore = (dest / ".gitignore").read_text().splitlines()
    for rule in (".env", "*.db", "outbox/", "build/", ".venv/", "demo/"):
        assert rule in ignore
    workflow = yaml.safe_load((dest / ".github/workflows/course-check.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    assert {"run": "dripmail check"} in steps
    assert workflow["env"]["DRIPMAIL"] == f"dripmail=={dripmail.__version__}"
    # `on:` is YAML 1.1's boolean True to PyYAML; the triggers are pull requests and pushes.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"pull_request", "push"}
    again = CliRunner().invoke(app, ["init", str(dest)])
    assert again.exit_code == 1  # never overwrites a course


def test_init_onto_a_file_says_so_and_leaves_it(tmp_path: Path) -> None:
    """`init dripmail.db` said "unexpected FileExistsError"."""
    from tests.cli_in_process import run_cli

    data = tmp_path / "dripmail.db"
    data.write_bytes(b"SQLite format 3\x00")
    out = run_cli(tmp_path, "init", str(data))
    assert out.returncode == 1 and out.stderr == (
        f"error: init {data}: that is a file, not a folder: give a new folder's name\n"
    )
    assert data.read_bytes() == b"SQLite format 3\x00"


def test_init_from_a_checkout_names_send_py(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        sys.executable,
        str(REPO / "send.py"),
        "init",
        "studio",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    cmd = f"python {REPO / 'send.py'} --root studio"
    assert out.stdout.strip().splitlines()[-1] == f"next: {cmd} check && {cmd} preview"


def test_pre_commit_runs_check_on_the_course_and_git_ignores_data(tmp_path: Path) -> None:
    dest = tmp_path / "studio"
    assert CliRunner().invoke(app, ["init", str(dest)]).exit_code == 0
    shim = tmp_path / "bin" / "dripmail"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "send.py"}" "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    assert _run(dest, "git", "init", "-q", env=env).returncode == 0
    for name in IGNORED:
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    ignored = _run(dest, "git", "check-ignore", *IGNORED, env=env)
    assert ignored.stdout.split() == list(IGNORED)
    pre_commit = (sys.executable, "-m", "pre_commit")
    valid = _run(dest, *pre_commit, "validate-config", ".pre-commit-config.yaml", env=env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert _run(dest, "git", "add", "-A", env=env).returncode == 0
    ok = _run(dest, *pre_commit, "run", "--all-files", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "dripmail check" in ok.stdout and "Passed" in ok.stdout
    template = dest / "emails" / "lesson.txt.j2"
    template.write_text(template.read_text() + "\n{{ lesson.titel }}\n")
    assert _run(dest, "git", "add", "-A", env=env).returncode == 0
    bad = _run(dest, *pre_commit, "run", "--all-files", env=env)
    assert bad.returncode == 1 and "Failed" in bad.stdout
    assert "emails/lesson.txt.j2:" in bad.stdout and "titel" in bad.stdout


def test_the_repo_offers_a_pre_commit_hook_running_the_console_script() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["dripmail-check"]
    assert hooks[0]["entry"] == "dripmail check" and hooks[0]["pass_filenames"] is False
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dripmail"] == "dripmail.cli:main"
    valid = _run(
        REPO, sys.executable, "-m", "pre_commit", "validate-manifest", ".pre-commit-hooks.yaml"
    )
    assert valid.returncode == 0, valid.stdout + valid.stderr
