"""Newsletter broadcasts against the loopback fake Postmark.

- messages/s of a broadcast (streamed planning, compile once, claims per chunk, batches of
  500, concurrent requests) against the naive way a user would write it: load the list, then
  one request per message, in sequence;
- peak memory of the sending process at two list sizes (10x apart), to show it stays flat:
  max RSS of the whole process, and how much the send raised it above the process's size
  just before sending (imports and an open database).

Each measured run is its own process, the subscribers are written by another process
beforehand (so building the test list does not count), and the fake provider runs in a third
(its bookkeeping does not count against ours either).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time as clock
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

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
    from dripmail.cli.broadcast_cmds import send_broadcast
    from dripmail.config import Project, load_settings
    from dripmail.content import load_newsletter
    from dripmail.render import recipient_for
    from dripmail.runner import Runner
    from dripmail.store.schema import broadcast_deliveries, subscribers

    project = Project(root)
    runner = Runner(project, load_settings(root))
    newsletter = load_newsletter(project, root / "newsletters" / "hips.md")
    runner.provider  # noqa: B018 - built before the baseline, like the renderer below
    runner.renderer  # noqa: B018
    now = datetime.now(UTC)
    baseline = _rss_mb()
    started = clock.perf_counter()
    if mode == "ours":
        row = bc.open_broadcast(runner.engine, newsletter, "all", now)
        send_broadcast(runner, newsletter, row, now, quiet=True)
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
    seconds = clock.perf_counter() - started
    peak = _rss_mb()
    print(json.dumps({"seconds": seconds, "count": count, "peak_mb": peak, "base_mb": baseline}))


def _call(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout


def _measure(base: str, root: Path, mode: str, sample: int = 0) -> dict:
    out = _call("--child", base, str(root), mode, str(sample))
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """The figures described in the module docstring."""
    big, small = (20_000, 2_000) if quick else (100_000, 10_000)
    sample = 500 if quick else 2_000
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = server.stdout.readline().strip()  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory() as tmp:
            roots = {n: Path(tmp) / f"p{n}" for n in (small, big)}
            for size, root in roots.items():
                _call("--prepare", str(root), str(size))
            naive = _measure(base, roots[big], "naive", sample)
            ours = _measure(base, roots[big], "ours")
            small_run = _measure(base, roots[small], "ours")
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=30)
    ours_rate = ours["count"] / ours["seconds"]
    naive_rate = naive["count"] / naive["seconds"]
    grew = {r: max(0.0, m["peak_mb"] - m["base_mb"]) for r, m in (("s", small_run), ("b", ours))}
    return [
        {
            "name": f"broadcast to {big:,} subscribers via fake Postmark ({ours['count']:,} "
            f"eligible; chunks + batches of 500 + 8 connections vs one request each, "
            f"{naive['count']:,} sent the naive way)",
            "unit": "messages/s",
            "ours": ours_rate,
            "naive": naive_rate,
            "ratio": ours_rate / naive_rate,
        },
        {"name": f"broadcast to {big:,}: total time", "value": ours["seconds"], "unit": "s"},
        {
            "name": f"broadcast peak memory (max RSS), {small:,} subscribers",
            "value": small_run["peak_mb"],
            "unit": "MB",
        },
        {
            "name": f"broadcast peak memory (max RSS), {big:,} subscribers",
            "value": ours["peak_mb"],
            "unit": "MB",
        },
        {
            "name": f"memory the send added above the process's start size, {small:,} / "
            f"{big:,} subscribers ({big // small}x the list): {grew['s']:.1f} / {grew['b']:.1f}",
            "value": grew["b"],
            "unit": "MB",
        },
        {
            "name": f"peak memory, {big:,} vs {small:,} subscribers (flat = 1.0)",
            "value": ours["peak_mb"] / small_run["peak_mb"],
            "unit": "x",
        },
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve()
    elif len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        _prepare(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        for figure in run("--quick" in sys.argv):
            print(figure)
