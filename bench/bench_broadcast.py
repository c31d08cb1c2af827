"""Newsletter broadcasts against the loopback fake Postmark.

- messages/s of a broadcast (streamed planning, compile once, claims per chunk, batches of
  500, concurrent requests) against the peer a user would write (load the list, then one
  request per message, in sequence: the loop every provider's quick-start shows) and against
  the limit: the fake's own ceiling, reached by a minimal client posting pre-built
  500-message batches (the same newsletter's JSON bodies, built before the clock starts) over
  8 connections, measured against the same fake in the same run;
- peak memory of the sending process at two list sizes (10x apart), to show it stays flat:
  max RSS of the whole process, and how much the send raised it above the process's size
  just before sending (imports and an open database).

Each measured run is its own process, the subscribers are written by another process
beforehand (so building the test list does not count), and the fake provider runs in a third
(its bookkeeping does not count against ours either). The peer, the ceiling and ours each
run twice, alternately, and the faster run of each is kept (`_best_of_two`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time as clock
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(HERE)]

from figure import compare, value  # noqa: E402

ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\n"
SEED_CHUNK = 5000


def _serve() -> None:
    """Run the fake provider until stdin closes; print its base URL first."""
    from fakes.provider_server import FakeProviders

    fake = FakeProviders(validate=False).start()
    print(fake.base("postmark"), flush=True)
    sys.stdin.read()
    fake.stop()


def _prepare(root: Path, size: int) -> None:
    """A course project with a newsletter and `size` subscribers (written in chunks)."""
    from broadcast_fixture import seed
    from course_fixture import make_project

    from dripmail.store.db import open_store

    make_project(root)
    (root / "newsletters").mkdir()
    body = "\n\n".join(
        "Sitting for hours keeps the hip flexed; stand, step back and breathe." for _ in range(8)
    )
    (root / "newsletters" / "hips.md").write_text(ISSUE + body + "\n")
    engine = open_store("sqlite:///dripmail.db", root)
    for start in range(0, size, SEED_CHUNK):
        seed(engine, min(SEED_CHUNK, size - start), start=start)
    engine.dispose()


def _env(base: str) -> dict[str, str]:
    from fakes.provider_server import FakeProviders

    return {
        "DRIPMAIL_PROVIDER": "postmark",
        "POSTMARK_SERVER_TOKEN": FakeProviders.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": base,
        "DRIPMAIL_SECRET_KEY": "bench-only-secret-key-0123456789",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        # The fake has no rate limit: measure our own speed, not a configured pace.
        "DRIPMAIL_RATE_PER_SECOND": "1000000",
        "DRIPMAIL_MAX_CONCURRENCY": "8",
    }


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(base: str, root: Path, mode: str, sample: int) -> None:
    import asyncio
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    os.environ.update(_env(base))
    from dripmail import broadcast as bc
    from dripmail.app import Dripmail
    from dripmail.cli.broadcast_cmds import send_broadcast
    from dripmail.config import Project, load_settings
    from dripmail.content import load_newsletter
    from dripmail.render import recipient_for
    from dripmail.store.schema import broadcast_deliveries, subscribers

    project = Project(root)
    runner = Dripmail(project, load_settings(root))
    newsletter = load_newsletter(project, root / "newsletters" / "hips.md")
    runner.provider  # noqa: B018 - built before the baseline, like the renderer below
    runner.renderer  # noqa: B018
    now = datetime.now(UTC)
    baseline = _rss_mb()
    started = clock.perf_counter()
    if mode == "ours":
        row = bc.open_broadcast(runner.engine, newsletter, "all", now)
        send_broadcast(runner, newsletter, row, now, quiet=True)
        # Timed and weighed before the count below: that check is the benchmark's, not the
        # broadcast's (a full scan of the copies, which SQLite's page cache would keep).
        seconds, peak = clock.perf_counter() - started, _rss_mb()
        with runner.engine.connect() as conn:
            count = conn.execute(
                select(func.count())
                .select_from(broadcast_deliveries)
                .where(broadcast_deliveries.c.state == "sent")
            ).scalar_one()
    else:
        # The naive way: the whole list in memory, then one request per reader, in sequence.
        compiled = runner.renderer.newsletter(newsletter)
        with runner.engine.connect() as conn:
            query = select(subscribers).where(bc.eligible("all")).order_by(subscribers.c.id)
            people = list(conn.execute(query.limit(sample)).mappings())

        async def one_by_one() -> int:
            sent = 0
            for person in people:
                who = recipient_for(person, runner.settings.public_url, runner.signer)
                message = compiled.personalise(
                    who, key=f"naive-{person['id']}", kind="broadcast", ref="0"
                )
                result = await runner.provider.send_batch([message])
                sent += result[0].accepted
            await runner.provider.aclose()
            return sent

        count = asyncio.run(one_by_one())
        seconds, peak = clock.perf_counter() - started, _rss_mb()
    print(json.dumps({"seconds": seconds, "count": count, "peak_mb": peak, "base_mb": baseline}))


def _ceiling(base: str, root: Path, total: int) -> None:
    """The minimal client: pre-built 500-message Postmark batches over 8 connections.

    Eight distinct batches of the real newsletter (rendered and encoded before the clock
    starts) are posted `total // 500` times in all, eight requests in flight at once.
    """
    import asyncio
    from datetime import UTC, datetime

    import httpx

    os.environ.update(_env(base))
    from dripmail.app import Dripmail
    from dripmail.config import Project, load_settings
    from dripmail.content import load_newsletter
    from dripmail.providers.http import json_body
    from dripmail.providers.postmark import PostmarkProvider
    from dripmail.render import recipient_for

    project = Project(root)
    runner = Dripmail(project, load_settings(root))
    compiled = runner.renderer.newsletter(
        load_newsletter(project, root / "newsletters" / "hips.md")
    )
    shape = PostmarkProvider("unused")
    now = datetime.now(UTC)
    bodies = []
    for b in range(8):
        batch = []
        for i in range(500):
            sid = b * 500 + i + 1
            person = {"id": sid, "email": f"reader{sid}@example.org", "first_name": f"R{sid}"}
            who = recipient_for(person, runner.settings.public_url, runner.signer, now)
            message = compiled.personalise(who, key=f"ceiling-{sid}", kind="broadcast", ref="0")
            batch.append(shape.payload(message))
        bodies.append(json_body(batch))  # the very bytes dripmail's client sends
    requests = total // 500
    headers = {
        "X-Postmark-Server-Token": _env(base)["POSTMARK_SERVER_TOKEN"],
        "Accept": "application/json",
        "Content-Type": "application/json",
    }

    async def post_all() -> int:
        queue = list(range(requests))
        accepted = 0
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

            async def connection() -> None:
                nonlocal accepted
                while queue:
                    n = queue.pop()
                    answer = await client.post(
                        "/email/batch", content=bodies[n % 8], headers=headers
                    )
                    answer.raise_for_status()
                    accepted += sum(1 for item in answer.json() if item["ErrorCode"] == 0)

            await asyncio.gather(*(connection() for _ in range(8)))
        return accepted

    started, cpu = clock.perf_counter(), clock.process_time()
    count = asyncio.run(post_all())
    seconds = clock.perf_counter() - started
    print(json.dumps({"seconds": seconds, "count": count, "cpu": clock.process_time() - cpu}))


def _call(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout


def _measure(base: str, root: Path, mode: str, sample: int = 0) -> dict:
    flag = "--ceiling" if mode == "ceiling" else "--child"
    out = _call(flag, base, str(root), mode, str(sample))
    return json.loads(out.strip().splitlines()[-1])


def _measure_fresh(root: Path, mode: str, sample: int = 0) -> dict:
    """`_measure` against a fake provider started for this measurement alone."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = server.stdout.readline().strip()  # type: ignore[union-attr]
        return _measure(base, root, mode, sample)
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=60)


def _best_of_two(root: Path, tmp: Path, sample: int, ceiling_messages: int) -> list[dict]:
    """The peer, the ceiling and ours, alternately and twice each: the faster run of each.

    On a shared machine one run of the same broadcast took 9.6 s and the next 12.3 s (its
    own CPU time varied as much: the neighbours slow the core, not only take turns on it);
    the better of two, for all three alike, is the steadier ratio (as `bench_engine` does).
    Each of our runs sends from its own copy of the prepared list, and each run gets a
    fresh fake: what it keeps of earlier sends must not slow later ones.
    """
    runs: dict[str, list[dict]] = {"naive": [], "ceiling": [], "ours": []}
    for attempt in range(2):
        for mode in runs:
            if mode == "ours":
                copy = tmp / f"ours{attempt}"
                shutil.copytree(root, copy)
                runs[mode].append(_measure_fresh(copy, mode))
                shutil.rmtree(copy)
            else:
                size = sample if mode == "naive" else ceiling_messages
                runs[mode].append(_measure_fresh(root, mode, size))
    return [min(runs[mode], key=lambda r: r["seconds"]) for mode in runs]


def run(quick: bool) -> list[dict]:
    """The figures described in the module docstring."""
    big, small = (20_000, 2_000) if quick else (100_000, 10_000)
    sample = 500 if quick else 2_000
    # As many messages as our broadcast hands over (80% of the list is eligible): with fewer,
    # the minimal client's start and its last half-empty round of 8 requests weigh more (10,000
    # reached ~3,500/s where 40,000 reached ~6,400/s on the same machine), which made the
    # quick run's share of the ceiling look twice the full run's.
    ceiling_messages = big * 4 // 5
    with tempfile.TemporaryDirectory() as tmp:
        roots = {n: Path(tmp) / f"p{n}" for n in (small, big)}
        for size, root in roots.items():
            _call("--prepare", str(root), str(size))
        naive, ceiling, ours = _best_of_two(roots[big], Path(tmp), sample, ceiling_messages)
        small_run = _measure_fresh(roots[small], "ours")
    ours_rate = ours["count"] / ours["seconds"]
    naive_rate = naive["count"] / naive["seconds"]
    ceiling_rate = ceiling["count"] / ceiling["seconds"]
    grew = {r: max(0.0, m["peak_mb"] - m["base_mb"]) for r, m in (("s", small_run), ("b", ours))}
    return [
        compare(
            f"broadcast to {big:,} subscribers via fake Postmark ({ours['count']:,} eligible:"
            " plan, claim, render, sign, hand over in batches of 500 on 8 connections, record)",
            "messages/s",
            ours_rate,
            peer=naive_rate,
            peer_is=f"load the list, then one request per message in sequence (the loop every"
            f" provider's quick-start shows; {naive['count']:,} sent that way)",
            limit=ceiling_rate,
            limit_is=f"the fake's ceiling: a minimal httpx client posting pre-built 500-message"
            f" batches of the same newsletter over 8 connections ({ceiling['count']:,} messages;"
            " no database, rendering or encoding inside the timer)",
        ),
        value(f"broadcast to {big:,}: total time", "s", ours["seconds"]),
        value(
            "the fake's ceiling over the peer: the most any client can be ahead of one request"
            " per message against this fake on this machine (issue 13's goal of 20x needs it"
            " above 20)",
            "x",
            ceiling_rate / naive_rate,
        ),
        value(
            "the ceiling client's own CPU per second of its run (well below 1: the fake, not"
            " the minimal client, sets the ceiling)",
            "s/s",
            ceiling["cpu"] / ceiling["seconds"],
        ),
        value(
            f"broadcast peak memory (max RSS), {small:,} subscribers", "MB", small_run["peak_mb"]
        ),
        value(f"broadcast peak memory (max RSS), {big:,} subscribers", "MB", ours["peak_mb"]),
        value(
            f"memory the send added above the process's start size, {small:,} / {big:,}"
            f" subscribers ({big // small}x the list): {grew['s']:.1f} / {grew['b']:.1f}",
            "MB",
            grew["b"],
        ),
        value(
            f"peak memory, {big:,} vs {small:,} subscribers (flat = 1.0; goal: at most 1.2)",
            "x",
            ours["peak_mb"] / small_run["peak_mb"],
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve()
    elif len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        _prepare(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--ceiling":
        _ceiling(sys.argv[2], Path(sys.argv[3]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        for figure in run("--quick" in sys.argv):
            print(figure)
