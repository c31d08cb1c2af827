import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from dripmail import broadcast as bc
from dripmail.config import Project
from dripmail.content import load_course, load_newsletter
from dripmail.errors import InputError
from dripmail.providers.outbox import OutboxProvider
from dripmail.render import Recipient, Renderer
from dripmail.store.db import open_store
from dripmail.store.schema import broadcast_deliveries
from tests.broadcast_fixture import NOW, eligible_emails, seed
from tests.course_fixture import make_project

ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\nHello.\n"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    return Project(root)


@pytest.fixture
def engine(project: Project) -> Engine:
    return open_store("sqlite:///dripmail.db", project.root)


def _render_fn(project: Project, newsletter, broadcast_id: int):
    compiled = Renderer(project, load_course(project)).newsletter(newsletter)

    def render(row: dict):
        who = Recipient(email=row["email"], first_name=row["first_name"])
        return compiled.personalise(who, key=row["key"], kind="broadcast", ref=str(broadcast_id))

    return render


def _send(project: Project, engine: Engine, outbox: OutboxProvider, segment: str = "all"):
    newsletter = load_newsletter(project, project.newsletters_dir / "hips.md")
    row = bc.open_broadcast(engine, newsletter, segment, NOW)
    bc.plan(engine, row["id"], segment, NOW)
    render = _render_fn(project, newsletter, row["id"])
    return row, bc.send(engine, outbox, row, render, NOW, worker="t")


def _index(project: Project) -> list[dict]:
    lines = (project.root / "outbox" / "index.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_ten_thousand_each_eligible_once_ineligible_never(project: Project, engine: Engine):
    seed(engine, 10_000)
    outbox = OutboxProvider(project.root / "outbox")
    row, report = _send(project, engine, outbox)
    assert report.sent == len(eligible_emails(10_000))
    sent = Counter(x["to"] for x in _index(project))
    assert set(sent) == eligible_emails(10_000) and set(sent.values()) == {1}
    # Running it again is a no-op, and the row is marked sent.
    _, again = _send(project, engine, outbox)
    assert again.sent == 0 and bc.find(engine, row["id"])["status"] == "sent"
    assert len(_index(project)) == len(eligible_emails(10_000))
    stats = bc.stats(engine, row["id"])
    assert stats.accepted == stats.recipients == len(eligible_emails(10_000))


def test_segments_pick_the_right_people(project: Project, engine: Engine) -> None:
    seed(engine, 100)
    assert bc.count_eligible(engine, "in-course") == 30  # odd ids, minus %10 in (1, 3)
    assert bc.count_eligible(engine, "graduates") == 50
    assert bc.count_eligible(engine, "tag:desk") == len(
        [i for i in range(100) if i % 3 == 0 and i % 10 not in (1, 3)]
    )
    with pytest.raises(InputError, match="segment 'everyone'"):
        bc.count_eligible(engine, "everyone")


def test_someone_who_leaves_after_planning_is_skipped(project: Project, engine: Engine):
    from dripmail import subscribers as subs

    seed(engine, 20)
    newsletter = load_newsletter(project, project.newsletters_dir / "hips.md")
    row = bc.open_broadcast(engine, newsletter, "all", NOW)
    bc.plan(engine, row["id"], "all", NOW)
    subs.unsubscribe(engine, subs.get_subscriber(engine, "p0@example.org")["id"], NOW)
    outbox = OutboxProvider(project.root / "outbox")
    bc.send(engine, outbox, row, _render_fn(project, newsletter, row["id"]), NOW, worker="t")
    assert "p0@example.org" not in {x["to"] for x in _index(project)}


def test_edited_file_after_start_is_refused_and_cancel_only_before(
    project: Project, engine: Engine
) -> None:
    seed(engine, 5)
    outbox = OutboxProvider(project.root / "outbox")
    row, _ = _send(project, engine, outbox)
    (project.newsletters_dir / "hips.md").write_text(ISSUE.replace("Hello.", "Hello again."))
    edited = load_newsletter(project, project.newsletters_dir / "hips.md")
    with pytest.raises(InputError, match="edited after it started"):
        bc.open_broadcast(engine, edited, "all", NOW)
    with pytest.raises(InputError, match="too late to cancel"):
        bc.cancel(engine, row["id"], NOW)


def test_scheduled_broadcast_can_be_cancelled_before_it_starts(
    project: Project, engine: Engine
) -> None:
    seed(engine, 5)
    newsletter = load_newsletter(project, project.newsletters_dir / "hips.md")
    row = bc.open_broadcast(engine, newsletter, "all", NOW, NOW + timedelta(days=1))
    assert row["status"] == "scheduled"
    assert bc.cancel(engine, row["id"], NOW)["status"] == "cancelled"
    with pytest.raises(InputError, match="was cancelled"):
        bc.open_broadcast(engine, newsletter, "all", NOW)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(broadcast_deliveries)).scalar() == 0
