"""`demo` never touches a real project's data; its counts are exact (real SQLite, through the
entry point in process)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from dripmail.cli import app
from dripmail.store.schema import deliveries, events, subscribers
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python REPO/send.py --root ROOT ARGS` in process, without the environment's DRIPMAIL_
    settings (as a studio's shell would have none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    return run_cli(root, *args, env=env, program=str(REPO / "send.py"))


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a digest of its bytes."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _snapshot(db: Path) -> dict[str, list]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return {
                t.name: [tuple(r) for r in conn.execute(select(t).order_by(t.c.id))]
                for t in (subscribers, deliveries, events)
            }
    finally:
        engine.dispose()


def _emails(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "outbox").glob("*.eml"))


def _real_project(tmp_path: Path) -> Path:
    """A studio's project: one real subscriber, lesson 1 already sent into outbox/."""
    root = make_project(tmp_path / "studio")
    start = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    add = _cli(
        root,
        "subscribers",
        "add",
        "reader@studio.example.com",
        "--name",
        "Real",
        "--timezone",
        "Europe/Berlin",
        "--start",
        start,
    )
    assert add.returncode == 0, add.stderr
    run = _cli(root, "run", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "1 sent" in run.stdout
    return root


def test_demo_in_a_real_project_leaves_its_data_alone_and_counts_exactly(tmp_path: Path) -> None:
    root = _real_project(tmp_path)
    db_before = _snapshot(root / "dripmail.db")
    outbox_before = _files(root / "outbox")
    assert len(db_before["subscribers"]) == 1 and len(db_before["deliveries"]) == 7
    assert sum(1 for r in db_before["deliveries"] if r[5] == "planned") == 6
    assert len([n for n in outbox_before if n.endswith(".eml")]) == 1

    out = _cli(root, "demo")
    assert out.returncode == 0, out.stderr
    # The real subscriber's lessons, every other row and the real outbox: byte for byte.
    assert _snapshot(root / "dripmail.db") == db_before
    assert _files(root / "outbox") == outbox_before
    demo = root / "demo"
    written = _emails(demo)
    assert len(written) == 21
    assert f"{len(written)} emails written to demo/outbox" in out.stdout
    assert "reader@studio.example.com" not in out.stdout
    # The hint names the command this install has (a checkout: python .../send.py).
    assert f"`python {REPO / 'send.py'} preview`" in out.stdout

    # Again: the demo's own folder starts afresh, so the count is the same and exact.
    again = _cli(root, "demo")
    assert again.returncode == 0, again.stderr
    assert "21 emails written to demo/outbox" in again.stdout and len(_emails(demo)) == 21
    assert _snapshot(root / "dripmail.db") == db_before


def test_demo_ignores_configured_database_and_provider(tmp_path: Path) -> None:
    root = make_project(tmp_path / "studio")
    # A production .env: another database file and a real provider without its credential.
    (root / ".env").write_text(
        "DRIPMAIL_DATABASE_URL=sqlite:///studio.db\nDRIPMAIL_PROVIDER=postmark\n"
        "DRIPMAIL_OUTBOX_DIR=sent\n"
    )
    out = _cli(root, "demo")
    assert out.returncode == 0, out.stderr
    assert not (root / "studio.db").exists() and not (root / "sent").exists()
    assert not (root / "dripmail.db").exists() and not (root / "outbox").exists()
    assert len(_emails(root / "demo")) == 21


def test_demo_in_an_empty_folder_uses_the_sample_and_writes_only_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--root", str(tmp_path), "demo"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert len(_emails(tmp_path / "demo")) == 21
    assert "21 emails written to demo/outbox" in result.output
    assert "Asia/Kolkata" in result.output and "07:00" in result.output
    assert "the demo used the sample course" in result.output
    # Every line reads whole at 80 columns; the simulated events follow the week they describe.
    out = result.output
    week = out[out.index("A simulated week") - 20 : out.index(" emails written")]
    assert all(len(line) <= 80 for line in week.splitlines()), week
    assert "…" not in week  # nothing cut off (the UTC times end with their minutes)
    assert out.index("A simulated week") < out.index("Simulated provider events")
    # Run as the console script (not send.py): the hint names `dripmail`.
    assert f"`dripmail init {tmp_path}`, then `dripmail --root {tmp_path} preview`" in result.output


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_demo_refuses_a_demo_path_it_did_not_make(tmp_path: Path, kind: str) -> None:
    root = make_project(tmp_path / "studio")
    mine = root / "demo"
    if kind == "folder":
        mine.mkdir()
        (mine / "notes.txt").write_text("the studio's own notes")
    else:
        mine.write_text("not a folder")
    out = _cli(root, "demo")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "was not made by `demo`" in lines[0], out.stderr
    if kind == "folder":
        assert (mine / "notes.txt").read_text() == "the studio's own notes"
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    else:
        assert mine.read_text() == "not a folder"
    assert not (root / "dripmail.db").exists()
