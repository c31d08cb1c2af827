"""Worker processes for the concurrency tests: `python tests/engine_worker.py ROOT URL NOW N W`.

Imports once, then forks W worker processes (each its own pid, connections and claims) that
run passes at once; exits 0 when every worker did. Forked rather than started one by one: the
imports cost 2 s of CPU per process, the work they race for less.
"""

import os
import sys
import traceback
from datetime import datetime, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dripmail.engine import pending_keys, run_once
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from tests.lesson_message import plain_lesson

root, url, now, passes, workers = (
    Path(sys.argv[1]),
    sys.argv[2],
    sys.argv[3],
    int(sys.argv[4]),
    int(sys.argv[5]),
)
when = datetime.fromisoformat(now)


def work() -> None:
    engine = open_store(url, root)
    box = OutboxProvider(root / "outbox", clock=lambda: when)
    # Keep going while anything is left (other workers may hold rows), bounded by `passes`.
    for _ in range(passes):
        run_once(engine, box, plain_lesson, when, default_send_time=time(7), limit=50)
        if not pending_keys(engine, ("planned", "claimed", "sending")):
            break


pids = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
sys.exit(0 if codes == [0] * workers else f"worker exit codes: {codes}")
