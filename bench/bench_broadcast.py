"""Newsletter broadcasts against the loopback fake Postmark.

- messages/s of `broadcast` (streamed planning, compile once, batches of 500, concurrent
  requests) against the naive way: one request per message, in sequence;
- peak memory (max RSS of the sending process) at two list sizes, to show it stays flat.

The fake provider runs in its own process so its bookkeeping does not count against ours.
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


def _serve() -> None:
    """Run the fake provider until stdin closes; print its base URL first."""
    from fakes.provider_server import FakeProviders

    fake = FakeProviders(validate=False).start()
    print(fake.base("postmark"), flush=True)
    sys.stdin.read()
    fake.stop()


def _child(base: str, size: int, mode: str, sample: int) -> None:
    import asyncio
    import resource

    from fakes.provider_server import FakeProviders
    from sqlalchemy import func, select

    from tests.broadcast_fixture import seed
    from tests.course_fixture import make_project

    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp))
        (root / "newsletters").mkdir()
        body = "\n\n".join(
            "Sitting for hours keeps the hip flexed; stand, step back and breathe."
            for _ in range(8)
        )
        (root / "newsletters" / "hips.md").write_text(ISSUE + body + "\n")
        os.environ.update(
            DRIPMAIL_PROVIDER="postmark",
            POSTMARK_SERVER_TOKEN=FakeProviders.POSTMARK_TOKEN,
            DRIPMAIL_POSTMARK_BASE_URL=base,
            DRIPMAIL_SECRET_KEY="bench-only-secret-key-0123456789",
            DRIPMAIL_RATE_PER_SECOND="1000000",
            DRIPMAIL_MAX_CONCURRENCY="8",
        )
        from dripmail import broadcast as bc
        from dripmail.cli.broadcast_cmds import send_broadcast
        from dripmail.config import Project, load_settings
        from dripmail.content import load_newsletter
        from dripmail.render import recipient_for
        from dripmail.runner import Runner
        from dripmail.store.schema import broadcast_deliveries, subscribers

        project = Project(root)
        runner = Runner(project, load_settings(root))
        seed(runner.engine, size)
        newsletter = load_newsletter(project, root / "newsletters" / "hips.md")
        from datetime import UTC, datetime

        now = datetime.now(UTC)
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
            compiled = runner.renderer.newsletter(newsletter)
            with runner.engine.connect() as conn:
                people = list(
                    conn.execute(
                        select(subscribers).where(bc.eligible("all")).limit(sample)
                    ).mappings()
                )

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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "count": count, "peak_mb": peak}))


def _measure(base: str, subscribers: int, mode: str, sample: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", base, str(subscribers), mode, str(sample)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """The figures described in the module docstring."""
    big, small = (10_000, 2_000) if quick else (100_000, 10_000)
    sample = 300 if quick else 2_000
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = server.stdout.readline().strip()  # type: ignore[union-attr]
        ours = _measure(base, big, "ours")
        naive = _measure(base, big, "naive", sample)
        small_run = _measure(base, small, "ours")
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=30)
    ours_rate = ours["count"] / ours["seconds"]
    naive_rate = naive["count"] / naive["seconds"]
    return [
        {
            "name": f"broadcast to {big:,} subscribers via fake Postmark "
            f"({ours['count']:,} eligible; batched+concurrent vs one request each)",
            "unit": "messages/s",
            "ours": ours_rate,
            "naive": naive_rate,
            "ratio": ours_rate / naive_rate,
        },
        {"name": f"broadcast to {big:,}: total time", "value": ours["seconds"], "unit": "s"},
        {
            "name": f"broadcast peak memory, {small:,} subscribers",
            "value": small_run["peak_mb"],
            "unit": "MB",
        },
        {
            "name": f"broadcast peak memory, {big:,} subscribers",
            "value": ours["peak_mb"],
            "unit": "MB",
        },
        {
            "name": f"memory growth for a {big // small}x longer list (flat = 1.0)",
            "value": ours["peak_mb"] / small_run["peak_mb"],
            "unit": "x",
        },
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve()
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        for figure in run("--quick" in sys.argv):
            print(figure)
