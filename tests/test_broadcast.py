"""Broadcasts through the library: eligibility, segments, planning, sending once, cancelling."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fakes.mail import FAST_LIMITS, FAST_RETRY
from sqlalchemy import Engine, event, func, select, text, update

from dripmail import broadcast as bc
from dripmail import subscribers as subs
from dripmail.config import Project
from dripmail.content import load_course, load_newsletter
from dripmail.errors import InputError
from dripmail.handover import expire_dead_claims
from dripmail.providers.outbox import OutboxProvider
from dripmail.providers.postmark import PostmarkProvider
from dripmail.render import Renderer
from dripmail.store.db import open_store
from dripmail.store.schema import broadcast_deliveries, events, subscribers
from dripmail.tokens import Signer
from tests.broadcast_fixture import NOW, eligible_emails, insert_sent_to_nobody, seed
from tests.course_fixture import make_project
from tests.store_fixture import new_store

ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\nHello.\n"
PUBLIC = "https://studio.example.com"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    return Project(root)


@pytest.fixture
def engine(project: Project, request: pytest.FixtureRequest) -> Engine:
    """SQLite; or, for tests parametrized with `ON_BOTH_STORES`, PostgreSQL too (its own
    path: outcomes and sending marks written with one ``UPDATE ... FROM unnest`` per chunk)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return new_store("sqlite:///dripmail.db", project.root)
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    store = open_store(url, project.root)
    with store.begin() as conn:
        conn.execute(text("TRUNCATE subscribers, broadcasts, events RESTART IDENTITY CASCADE"))
    return store


ON_BOTH_STORES = pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def _postmark(fake) -> PostmarkProvider:
    # Short back-off, but a patient read timeout: the fake checks each 500-message batch
    # against Postmark's API file, which takes a while on a busy machine.
    return PostmarkProvider(
        fake.POSTMARK_TOKEN,
        base=fake.base("postmark"),
        retry=replace(FAST_RETRY, timeout=30.0),
        limits=FAST_LIMITS,
        settle_seconds=0,
    )


def _newsletter(project: Project):
    return load_newsletter(project, project.newsletters_dir / "hips.md")


def _start(project: Project, engine: Engine, segment: str = "all", when=None):
    row = bc.open_broadcast(engine, _newsletter(project), segment, NOW, when)
    bc.plan(engine, row["id"], segment, NOW)
    return row


def _render(project: Project, broadcast_id: int):
    compiled = Renderer(project, load_course(project)).newsletter(_newsletter(project))
    return bc.render_fn(compiled, PUBLIC, Signer("test-secret-key"), broadcast_id)


def _send(project: Project, engine: Engine, provider, row, **kwargs):
    return bc.send(engine, provider, row, _render(project, row["id"]), NOW, **kwargs)


def _outbox_index(project: Project) -> list[dict]:
    lines = (project.root / "outbox" / "index.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@ON_BOTH_STORES
def test_thousands_each_eligible_accepted_once_ineligible_never(
    project: Project, engine: Engine, fake_providers
) -> None:
    # 3,000 subscribers, 2,400 eligible: three chunks of planning and sending (CHUNK, 1,000)
    # and five batches, the last one short. How a broadcast scales is the benchmarks' job
    # (bench/, 100,000); 10,000 here only made each step three times longer.
    seed(engine, 3_000)
    wanted = eligible_emails(3_000)
    assert len(wanted) > 2 * bc.CHUNK and len(wanted) % 500
    provider = _postmark(fake_providers)
    row = _start(project, engine)
    report = _send(project, engine, provider, row)
    accepted = fake_providers.accepted("postmark")
    assert report.sent == len(wanted) == len(accepted)
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(wanted, 1))
    assert len({a.key for a in accepted}) == len(wanted)
    # Batches of the provider's size (500), not one request per reader.
    assert fake_providers.send_requests["postmark"] == math.ceil(len(wanted) / 500)
    # Personalised per reader: own name, own signed unsubscribe link, on the broadcast stream.
    one = next(a for a in accepted if a.to == "p2@example.org")
    assert "P2" in one.html and one.stream == "broadcast"
    assert one.headers["List-Unsubscribe"].startswith(f"<{PUBLIC}/unsubscribe/")
    assert one.key == f"nl-{row['id']}-s3"  # subscriber p2 has id 3
    # Running it again sends nothing and the broadcast is done.
    again = _send(project, engine, provider, row)
    assert again.sent == 0 and len(fake_providers.accepted("postmark")) == len(wanted)
    assert bc.find(engine, row["id"])["status"] == "sent"
    stats = bc.stats(engine, row["id"])
    assert stats.accepted == stats.recipients == len(wanted) and stats.failed == 0
    with engine.connect() as conn:
        attempts = conn.execute(select(func.sum(broadcast_deliveries.c.attempts))).scalar()
    assert attempts == len(wanted)


def test_segments_pick_the_right_people(project: Project, engine: Engine) -> None:
    seed(engine, 100)
    assert bc.count_eligible(engine, "all") == len(eligible_emails(100))
    assert bc.count_eligible(engine, "in-course") == 30  # odd ids, minus %10 in (1, 3)
    assert bc.count_eligible(engine, "graduates") == 50
    assert bc.count_eligible(engine, "tag:desk") == len(
        [i for i in range(100) if i % 3 == 0 and i % 10 not in (1, 3)]
    )
    assert bc.count_eligible(engine, "tag:des") == 0  # whole tags only
    with pytest.raises(InputError, match="segment 'everyone'"):
        bc.count_eligible(engine, "everyone")


def test_planning_twice_plans_each_subscriber_once(project: Project, engine: Engine) -> None:
    seed(engine, 2500)
    row = _start(project, engine)
    assert bc.plan(engine, row["id"], "all", NOW, chunk=300) == 0
    seed(engine, 10, start=2500)  # new sign-ups before the re-run are added, only they
    assert bc.plan(engine, row["id"], "all", NOW, chunk=300) == len(eligible_emails(10, 2500))
    with engine.connect() as conn:
        keys = list(conn.execute(select(broadcast_deliveries.c.key)).scalars())
    assert len(keys) == len(set(keys)) == len(eligible_emails(2510))


@ON_BOTH_STORES
def test_planned_copies_carry_the_key_of_their_reader(project: Project, engine: Engine) -> None:
    """Planning writes each page with one INSERT ... SELECT, the key made by SQL: the same
    text as `key_for`, which everything else (events, stats, recovery) reads."""
    seed(engine, 30)
    row = _start(project, engine, "tag:desk")
    bd = broadcast_deliveries
    with engine.connect() as conn:
        planned = conn.execute(select(bd.c.subscriber_id, bd.c.key, bd.c.state)).all()
        tagged = conn.execute(select(subscribers.c.id).where(bc.eligible("tag:desk"))).scalars()
        assert sorted(tagged) == sorted(sid for sid, _, _ in planned)
    assert planned and {state for _, _, state in planned} == {"planned"}
    assert all(key == bc.key_for(row["id"], sid) for sid, key, _ in planned)


@ON_BOTH_STORES
def test_a_pass_that_stops_gives_back_the_page_it_planned_claimed(
    project: Project, engine: Engine
) -> None:
    """`send` planning as it goes writes each page already claimed by itself (one write a
    copy, not an insert and a claim): stopped after its first chunk, the page planned ahead
    goes back to the queue, unclaimed, and the next run sends each reader once."""
    seed(engine, 100)
    wanted = eligible_emails(100)
    row = bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    outbox = OutboxProvider(project.root / "outbox")
    report = _send(project, engine, outbox, row, chunk=10, plan_segment="all", stop=lambda: True)
    assert report.sent == 10
    bd = broadcast_deliveries
    with engine.connect() as conn:
        left = conn.execute(select(bd.c.state, bd.c.claimed_by).where(bd.c.state != "sent"))
        assert Counter(left.all()) == Counter({("planned", None): 10})  # the page ahead
    _send(project, engine, outbox, row, chunk=10, plan_segment="all")
    assert Counter(x["to"] for x in _outbox_index(project)) == Counter(dict.fromkeys(wanted, 1))
    assert bc.find(engine, row["id"])["status"] == "sent"


def test_who_leaves_after_a_page_was_planned_claimed_is_skipped(
    project: Project, engine: Engine
) -> None:
    """A page `send` planned claimed (a page ahead of the chunk at the provider) is checked
    again when its chunk is read: a reader who left meanwhile is skipped, not sent."""
    seed(engine, 30)
    row = bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    pages = bc.plan_pages(engine, row["id"], "all", NOW, chunk=10, claim_for="w")
    next(pages)
    leaver = subs.get_subscriber(engine, "p2@example.org")["id"]
    subs.unsubscribe(engine, leaver, NOW)
    held, skipped, read = bc._claim_chunk(engine, row["id"], "w", NOW, 10)
    assert skipped == 1 and len(read) == len(held) + 1
    assert leaver not in {r["subscriber_id"] for r in held}
    assert {r["state"] for r in held} == {"claimed"}
    # Another worker does not take copies planned claimed by "w" while its lease runs.
    assert bc._claim_chunk(engine, row["id"], "other", NOW, 10) == ([], 0, [])


def test_who_leaves_or_stops_newsletters_after_planning_is_skipped(
    project: Project, engine: Engine
) -> None:
    seed(engine, 20)
    row = _start(project, engine)
    subs.unsubscribe(engine, subs.get_subscriber(engine, "p0@example.org")["id"], NOW)
    quitter = subs.get_subscriber(engine, "p2@example.org")["id"]
    with engine.begin() as conn:
        conn.execute(
            update(subscribers).where(subscribers.c.id == quitter).values(newsletters=False)
        )
    report = _send(project, engine, OutboxProvider(project.root / "outbox"), row)
    sent = {x["to"] for x in _outbox_index(project)}
    assert sent == eligible_emails(20) - {"p0@example.org", "p2@example.org"}
    assert report.skipped == 2 and bc.stats(engine, row["id"]).skipped == 2


def test_edited_file_after_start_is_refused(project: Project, engine: Engine) -> None:
    seed(engine, 5)
    row = _start(project, engine)
    _send(project, engine, OutboxProvider(project.root / "outbox"), row)
    (project.newsletters_dir / "hips.md").write_text(ISSUE.replace("Hello.", "Hello again."))
    with pytest.raises(InputError, match="edited after it started"):
        bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    with pytest.raises(InputError, match="nothing left to cancel"):
        bc.cancel(engine, row["id"], NOW)


def test_edits_before_the_start_are_followed(project: Project, engine: Engine) -> None:
    seed(engine, 5)
    first = bc.open_broadcast(engine, _newsletter(project), "all", NOW, NOW + timedelta(days=1))
    (project.newsletters_dir / "hips.md").write_text(ISSUE.replace("Hello.", "Hello again."))
    second = bc.open_broadcast(engine, _newsletter(project), "graduates", NOW)
    assert second["id"] == first["id"] and second["segment"] == "graduates"
    assert second["content_hash"] == bc.content_hash(_newsletter(project))
    assert second["scheduled_at"] is None


def test_scheduled_broadcast_is_due_at_its_time_and_cancel_stops_it(
    project: Project, engine: Engine
) -> None:
    seed(engine, 5)
    row = bc.open_broadcast(engine, _newsletter(project), "all", NOW, NOW + timedelta(days=1))
    assert row["status"] == "scheduled"
    assert bc.due(engine, NOW) == []
    assert [r["id"] for r in bc.due(engine, NOW + timedelta(days=1))] == [row["id"]]
    done = bc.cancel(engine, row["id"], NOW)
    assert done.broadcast["status"] == "cancelled" and done.accepted == 0
    assert bc.due(engine, NOW + timedelta(days=2)) == []
    with pytest.raises(InputError, match="was cancelled"):
        bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(broadcast_deliveries)).scalar() == 0


def test_cancel_mid_way_stops_the_rest(project: Project, engine: Engine, fake_providers) -> None:
    seed(engine, 3000)
    row = _start(project, engine)
    provider = _postmark(fake_providers)
    stop = {"after": 1}

    def progress(n: int) -> None:
        stop["after"] -= 1
        if stop["after"] < 0:
            raise KeyboardInterrupt  # the operator presses Ctrl-C after the first chunk

    with pytest.raises(KeyboardInterrupt):
        _send(project, engine, provider, row, progress=progress)
    sent = len(fake_providers.accepted("postmark"))
    assert 0 < sent < len(eligible_emails(3000))
    done = bc.cancel(engine, row["id"], NOW)
    assert done.accepted == sent and done.stopped == len(eligible_emails(3000)) - sent
    assert _send(project, engine, provider, row).sent == 0
    assert len(fake_providers.accepted("postmark")) == sent


def test_claims_of_a_dead_local_worker_are_taken_over_at_once(
    project: Project, engine: Engine, fake_providers
) -> None:
    seed(engine, 30)
    row = _start(project, engine)
    host = socket.gethostname()
    bd = broadcast_deliveries
    with engine.begin() as conn:
        ids = list(conn.execute(select(bd.c.id).order_by(bd.c.id)).scalars())
        lease = NOW + timedelta(minutes=10)
        # A dead process on this host, and a live worker on another host.
        conn.execute(
            update(bd)
            .where(bd.c.id.in_(ids[:10]))
            .values(state="claimed", claimed_by=f"{host}:999999999", lease_expires_at=lease)
        )
        conn.execute(
            update(bd)
            .where(bd.c.id.in_(ids[10:15]))
            .values(state="claimed", claimed_by="elsewhere:1", lease_expires_at=lease)
        )
    assert expire_dead_claims(engine, bd, NOW, host) == 10
    report = _send(project, engine, _postmark(fake_providers), row)
    assert report.sent == len(ids) - 5  # the other host's claims wait for their lease
    assert bc.stats(engine, row["id"]).pending == 5


@ON_BOTH_STORES
def test_in_flight_batch_is_reconciled_not_resent(
    project: Project, engine: Engine, fake_providers
) -> None:
    seed(engine, 10)
    row = _start(project, engine)
    provider = _postmark(fake_providers)
    render = _render(project, row["id"])
    bd = broadcast_deliveries
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(bd).order_by(bd.c.id)).mappings()]
    # A previous run handed the first three over and died before recording the answer.
    with engine.connect() as conn:
        people = {r.id: r for r in conn.execute(select(subscribers))}
    first = [
        render({**r, "email": people[r["subscriber_id"]].email, "first_name": ""}) for r in rows[:3]
    ]
    asyncio.run(provider.send_batch(first))
    with engine.begin() as conn:
        conn.execute(
            update(bd)
            .where(bd.c.id.in_([r["id"] for r in rows[:3]]))
            .values(
                state="sending",
                attempts=1,
                claimed_by="gone:1",
                lease_expires_at=NOW - timedelta(seconds=1),
            )
        )
    report = _send(project, engine, provider, row)
    assert report.recovered == 3
    assert Counter(fake_providers.keys("postmark")) == Counter(
        dict.fromkeys((r["key"] for r in rows), 1)
    )


def test_stats_count_readers_from_events(project: Project, engine: Engine) -> None:
    seed(engine, 10)
    row = _start(project, engine)
    _send(project, engine, OutboxProvider(project.root / "outbox"), row)
    key = bc.key_for(row["id"], 3)
    with engine.begin() as conn:
        for n, kind in enumerate(("opened", "opened", "clicked", "bounced")):
            conn.execute(
                events.insert().values(
                    subscriber_id=3,
                    delivery_key=key,
                    provider="outbox",
                    dedupe_key=f"e{n}",
                    type=kind,
                    detail="",
                    occurred_at=NOW,
                    received_at=NOW,
                )
            )
    s = bc.stats(engine, row["id"])
    assert (s.opened, s.clicked, s.bounced) == (1, 1, 1)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no handler records anything."""


class DiesAfterTheCall:
    """The provider, but the process 'dies' right after its first call returns."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def send_batch(self, messages, send_at=None, batch_key=None):
        await self.inner.send_batch(messages, send_at, batch_key)
        raise Killed


@ON_BOTH_STORES
def test_resend_gets_an_interrupted_batch_again_as_it_was(
    project: Project, engine: Engine, fake_providers
) -> None:
    from dripmail.providers.resend import ResendProvider

    seed(engine, 150)
    wanted = eligible_emails(150)
    row = _start(project, engine)
    started = bc.start(engine, row["id"], NOW)
    compiled = Renderer(project, load_course(project)).newsletter(_newsletter(project))
    signer = Signer("test-secret-key")
    provider = ResendProvider(
        fake_providers.RESEND_KEY,
        base=fake_providers.base("resend"),
        retry=replace(FAST_RETRY, timeout=30.0),
        limits=FAST_LIMITS,
    )

    def send(at, via):
        # A fresh render function each time, as a new process would build it.
        render = bc.render_fn(compiled, PUBLIC, signer, row["id"], started)
        return bc.send(engine, via, row, render, at, worker="w")

    with pytest.raises(Killed):
        send(NOW, DiesAfterTheCall(provider))
    # Resend took both batches (100 + 20, sent concurrently); we never heard back.
    assert len(fake_providers.accepted("resend")) == len(wanted)
    with engine.connect() as conn:
        states = set(conn.execute(select(broadcast_deliveries.c.state)).scalars())
    assert states == {"sending"}
    report = send(NOW + timedelta(minutes=11), provider)  # after the lease
    assert report.recovered == len(wanted) and report.review == 0
    accepted = fake_providers.accepted("resend")
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(wanted, 1))
    assert bc.stats(engine, row["id"]).accepted == len(wanted)


class _DiesWhileStoring:
    """The database of a process killed while it stores the answers about its first chunk:
    that statement and every one after it fail with `Killed`, as if nothing ran any more."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.dead = engine, False

    def __enter__(self) -> _DiesWhileStoring:
        event.listen(self.engine, "before_cursor_execute", self.check)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self.check)

    def check(self, conn, cursor, statement: str, *args: object) -> None:
        if not self.dead and "provider_message_id" in statement:
            self.dead = True  # the first outcomes written: the chunk the provider answered
        if self.dead:
            raise Killed


@ON_BOTH_STORES
def test_killed_while_a_chunk_is_stored_and_the_next_is_out_each_reader_gets_one_copy(
    project: Project, engine: Engine, fake_providers
) -> None:
    """The next chunk goes to the provider as soon as its `sending` mark is committed, while
    the answers about the one before are stored: a kill then leaves two chunks `sending`,
    one answered and one at the provider. The next run looks both up, sends nothing twice."""
    seed(engine, 50)
    wanted = eligible_emails(50)
    row = _start(project, engine)
    provider = _postmark(fake_providers)
    with _DiesWhileStoring(engine), pytest.raises(Killed):
        _send(project, engine, provider, row, chunk=10, worker="w")
    bd = broadcast_deliveries
    with engine.connect() as conn:
        states = Counter(conn.execute(select(bd.c.state).order_by(bd.c.id).limit(20)).scalars())
    # The first chunk was answered but its outcomes never stored; the second was handed over
    # (its mark committed first) and the process died before it heard back.
    assert states == Counter({"sending": 20})
    assert len(fake_providers.accepted("postmark")) == 20
    later = NOW + timedelta(minutes=11)  # after the dead worker's lease
    report = bc.send(engine, provider, row, _render(project, row["id"]), later, chunk=10)
    assert report.recovered == 20 and report.review == 0
    accepted = fake_providers.accepted("postmark")
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(wanted, 1))
    assert bc.stats(engine, row["id"]).accepted == len(wanted)


@ON_BOTH_STORES
def test_planned_as_it_goes_a_kill_midway_leaves_the_rest_to_the_next_run(
    project: Project, engine: Engine, fake_providers
) -> None:
    """`send` may plan the list a page ahead of its claims (the CLI does): killed before the
    whole list was planned, the broadcast is not finished, and the next run plans the rest
    and sends each reader exactly once."""
    seed(engine, 100)
    wanted = eligible_emails(100)
    row = bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    provider = _postmark(fake_providers)
    pages: list[int] = []
    with _DiesWhileStoring(engine), pytest.raises(Killed):
        _send(
            project,
            engine,
            provider,
            row,
            chunk=10,
            worker="w",
            plan_segment="all",
            planned=pages.append,
        )
    with engine.connect() as conn:
        planned = conn.execute(select(func.count()).select_from(broadcast_deliveries)).scalar_one()
    assert 20 <= planned < len(wanted) and pages and sum(pages) == planned
    later = NOW + timedelta(minutes=11)  # after the dead worker's lease
    render = _render(project, row["id"])
    report = bc.send(engine, provider, row, render, later, chunk=10, plan_segment="all")
    assert report.recovered == 20 and report.review == 0
    accepted = fake_providers.accepted("postmark")
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(wanted, 1))
    assert bc.stats(engine, row["id"]).accepted == len(wanted)
    assert bc.find(engine, row["id"])["status"] == "sent"


class _Refusing(OutboxProvider):
    """The outbox, except that every message is refused for the same (sender) reason, or the
    credential is refused for the whole call: what the pass does next is the point."""

    def __init__(self, outbox: Path, auth: bool = False) -> None:
        super().__init__(outbox)
        self.auth = auth
        self.given: list[str] = []

    async def send_batch(self, messages, send_at=None, batch_key=None):
        from dripmail.errors import ProviderAuthError
        from dripmail.providers.base import Outcome, SendResult

        self.given += [m.key for m in messages]
        if self.auth:
            raise ProviderAuthError("outbox", "OUTBOX_TOKEN", "HTTP 401")
        return [SendResult(m.key, Outcome.PERMANENT, error="sender not verified") for m in messages]


def _states(engine: Engine) -> Counter:
    bd = broadcast_deliveries
    with engine.connect() as conn:
        rows = conn.execute(select(bd.c.state, bd.c.claimed_by)).all()
    assert all(claimed_by is None for _, claimed_by in rows), "a claim was left behind"
    return Counter(state for state, _ in rows)


def test_a_halt_hands_over_nothing_of_the_chunk_prepared_meanwhile(
    project: Project, engine: Engine
) -> None:
    """The next chunk is claimed and rendered while one is at the provider; when that one
    trips the failure streak, the next goes back to the queue untouched, never sent."""
    seed(engine, 100)
    row = _start(project, engine)
    planned = _states(engine)["planned"]
    provider = _Refusing(project.root / "outbox")
    report = _send(project, engine, provider, row, chunk=10, halt_after=10)
    assert report.halted and "sender not verified" in report.halted
    assert len(provider.given) == 10  # the first chunk only
    assert _states(engine) == Counter({"planned": planned})  # all back, none claimed


def test_a_stop_ends_the_pass_after_the_chunk_at_the_provider(
    project: Project, engine: Engine
) -> None:
    """`stop` (Ctrl-C through `Dripmail.call_provider`) is asked after each chunk: that chunk
    is recorded, the next (claimed and rendered meanwhile) goes back, nothing is finished."""
    seed(engine, 100)
    row = _start(project, engine)
    planned = _states(engine)["planned"]
    outbox = OutboxProvider(project.root / "outbox")
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return True  # Ctrl-C came while the first chunk was at the provider

    report = _send(project, engine, outbox, row, chunk=10, stop=stop)
    assert report.sent == 10 and len(asked) == 1
    assert _states(engine) == Counter({"sent": 10, "planned": planned - 10})
    assert bc.find(engine, row["id"])["status"] == "sending"


@ON_BOTH_STORES
def test_a_stop_mid_chunk_sends_no_more_requests_and_the_rest_goes_next_time(
    project: Project, engine: Engine, fake_providers
) -> None:
    """Ctrl-C while a chunk's batches are at the provider one request at a time (here
    batches of 2, one request at a time): the fake sets the stop as its third request
    arrives. Those three batches are answered and recorded; the chunk's other batches are
    not sent and go back to the queue due at once, with no error; the pass ends there. The
    next pass sends each of them once."""
    from dripmail.providers.http import Limits
    from dripmail.stopping import StopRequest

    seed(engine, 40)
    wanted = eligible_emails(40)
    row = _start(project, engine)
    provider = PostmarkProvider(
        fake_providers.POSTMARK_TOKEN,
        base=fake_providers.base("postmark"),
        retry=replace(FAST_RETRY, timeout=30.0),
        limits=Limits(max_concurrency=1),
        settle_seconds=0,
    )
    provider.capabilities = replace(provider.capabilities, max_batch=2)
    stop = StopRequest()
    provider.stop_on(stop)
    fake_providers.on_request("postmark", 3, stop.set, path="/email/batch")
    report = _send(project, engine, provider, row, stop=stop.is_set)
    assert fake_providers.send_requests["postmark"] == 3
    assert (report.sent, report.stopped, report.retry, report.review) == (6, len(wanted) - 6, 0, 0)
    assert _states(engine) == Counter({"sent": 6, "planned": len(wanted) - 6})
    bd = broadcast_deliveries
    with engine.connect() as conn:
        back = conn.execute(select(bd).where(bd.c.state == "planned")).mappings().all()
    assert len(back) == len(wanted) - 6
    assert all(r["next_attempt_at"] is None and r["last_error"] is None for r in back)
    assert all(r["batch_key"] is None and r["attempts"] == 0 for r in back)
    assert bc.find(engine, row["id"])["status"] == "sending"
    stop.clear()
    again = _send(project, engine, provider, row, stop=stop.is_set)
    assert (again.sent, again.stopped) == (len(wanted) - 6, 0)
    accepted = fake_providers.accepted("postmark")
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(wanted, 1))
    assert bc.find(engine, row["id"])["status"] == "sent"


def test_a_refused_credential_gives_back_the_chunk_prepared_meanwhile(
    project: Project, engine: Engine
) -> None:
    from dripmail.errors import ProviderAuthError

    seed(engine, 100)
    row = _start(project, engine)
    planned = _states(engine)["planned"]
    provider = _Refusing(project.root / "outbox", auth=True)
    with pytest.raises(ProviderAuthError):
        _send(project, engine, provider, row, chunk=10)
    assert len(provider.given) == 10
    assert _states(engine) == Counter({"planned": planned})


@ON_BOTH_STORES
def test_a_broadcast_nobody_can_receive_is_not_opened(project: Project, engine: Engine) -> None:
    """Started with nobody eligible, it would be `sent` for good (and a tag typo would burn
    the file for that segment): refused before anything is written. One that already
    started continues whatever the count."""
    with pytest.raises(InputError, match="segment 'all' has no subscriber"):
        bc.open_broadcast(engine, _newsletter(project), "all", NOW)
    seed(engine, 10)
    with pytest.raises(InputError, match="segment 'tag:dsk' has no subscriber"):
        bc.open_broadcast(engine, _newsletter(project), "tag:dsk", NOW, NOW + timedelta(days=1))
    assert bc.existing(engine, "hips") is None
    row = _start(project, engine, "tag:desk")
    bc.start(engine, row["id"], NOW)
    with engine.begin() as conn:
        conn.execute(update(subscribers).values(newsletters=False))
    again = bc.open_broadcast(engine, _newsletter(project), "tag:desk", NOW)
    assert again["id"] == row["id"]


@ON_BOTH_STORES
def test_a_broadcast_marked_sent_to_nobody_is_opened_again(
    project: Project, engine: Engine
) -> None:
    """An older version marked a broadcast to an empty segment `sent` for good; nobody got
    it, so opening the file again starts it afresh (one with copies stays sent)."""
    insert_sent_to_nobody(engine, NOW, "Hips", "older")
    row = bc.existing(engine, "hips")
    assert row is not None and bc.sent_to_nobody(engine, row)
    with pytest.raises(InputError, match="has no subscriber"):
        bc.open_broadcast(engine, _newsletter(project), "tag:desk", NOW)
    seed(engine, 10)
    again = bc.open_broadcast(engine, _newsletter(project), "tag:desk", NOW)
    assert again["id"] == row["id"] and again["status"] == "scheduled"
    assert again["started_at"] is None and again["segment"] == "tag:desk"
    _send(project, engine, OutboxProvider(project.root / "outbox"), again, plan_segment="tag:desk")
    done = bc.find(engine, row["id"])
    assert done["status"] == "sent" and not bc.sent_to_nobody(engine, done)
    assert bc.stats(engine, row["id"]).accepted == 3
