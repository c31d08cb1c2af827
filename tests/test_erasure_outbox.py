"""`subscribers forget` also erases what the outbox provider holds for that person: their
`.eml` files and their lines of `index.jsonl` (the outbox is the default provider, kept in
the project folder), through the provider's `forget` hook."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from dripmail import subscribers as subs
from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.message import Mailbox, Message
from dripmail.providers.outbox import OutboxProvider, outbox_filename
from tests.course_fixture import make_project

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _core(root: Path, work: Path) -> Dripmail:
    return Dripmail(
        Project(root),
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            DRIPMAIL_DATABASE_URL=f"sqlite:///{work / 'app.db'}",
            DRIPMAIL_OUTBOX_DIR=str(work / "outbox"),
        ),
        clock=lambda: NOW,
    )


def _holds(outbox: Path, address: str) -> list[str]:
    return sorted(p.name for p in outbox.iterdir() if address.encode() in p.read_bytes().lower())


def test_forget_erases_the_persons_outbox_files_and_index_lines(tmp_path: Path) -> None:
    core = _core(make_project(tmp_path / "project"), tmp_path)
    ids = []
    for email in ("Quinn@Example.com", "robin@example.com"):
        sid, _ = subs.add_subscriber(
            core.engine, email, timezone="UTC", status="pending", consent_source="t", now=NOW
        )
        ids.append(sid)
    assert core.send_confirmations(ids) == 2
    outbox = tmp_path / "outbox"
    # A file a crash left without its index line is found by its To header.
    OutboxProvider(outbox / "torn").write(
        Message(
            key="lesson-x-torn",
            kind="lesson",
            ref="1",
            sender=Mailbox("hello@studio.example.com"),
            to=Mailbox("quinn@example.com"),
            subject="Day 1",
            html="<p>x</p>",
            text="x",
        )
    )
    (outbox / "torn" / "lesson-x-torn.eml").rename(outbox / outbox_filename("lesson-x-torn"))
    shutil.rmtree(outbox / "torn")
    assert "index.jsonl" in _holds(outbox, "quinn@example.com")
    assert len(_holds(outbox, "quinn@example.com")) == 3  # two files and the index

    result = core.forget("quinn@example.com")
    assert result.provider_messages == 2
    assert _holds(outbox, "quinn@example.com") == []
    # Robin's email and index line stay as they were.
    lines = [json.loads(x) for x in (outbox / "index.jsonl").read_text().splitlines()]
    assert [line["to"] for line in lines] == ["robin@example.com"]
    assert _holds(outbox, "robin@example.com") == sorted(
        ["index.jsonl", outbox_filename(lines[0]["key"])]
    )
    core.close()
