"""A worker process for the concurrency tests: `python tests/engine_worker.py ROOT URL NOW N`."""

import sys
from datetime import datetime, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dripmail.engine import pending_keys, run_once
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from tests.test_engine import _render

root, url, now, passes = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
engine = open_store(url, root)
when = datetime.fromisoformat(now)
box = OutboxProvider(root / "outbox", clock=lambda: when)
# Keep going while anything is left (other workers may hold rows), bounded by `passes`.
for _ in range(passes):
    run_once(engine, box, _render, when, default_send_time=time(7), limit=50)
    if not pending_keys(engine, ("planned", "claimed", "sending")):
        break
