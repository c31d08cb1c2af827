import asyncio
import json
from pathlib import Path

import pytest

from dripmail.providers.base import Lookup
from dripmail.providers.outbox import OutboxProvider
from tests.test_message import _msg


def test_outbox_writes_each_key_once(tmp_path: Path) -> None:
    box = OutboxProvider(tmp_path / "outbox")
    first = asyncio.run(box.send_batch([_msg("k1"), _msg("k2")]))
    again = asyncio.run(box.send_batch([_msg("k1")]))
    assert all(r.accepted for r in first + again)
    assert sorted(p.name for p in (tmp_path / "outbox").glob("*.eml")) == ["k1.eml", "k2.eml"]
    lines = (tmp_path / "outbox" / "index.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k2"]
    found = asyncio.run(box.reconcile([_msg("k1"), _msg("k3")]))
    assert found == {"k1": Lookup.FOUND, "k3": Lookup.ABSENT}


def test_missing_index_line_after_a_crash_is_mended(tmp_path: Path) -> None:
    box = OutboxProvider(tmp_path / "outbox")
    box.write(_msg("k1"))
    box.write(_msg("k2"))
    index = tmp_path / "outbox" / "index.jsonl"
    # As if killed after k2's file was linked but before its index line was appended.
    index.write_text(index.read_text().splitlines(keepends=True)[0])
    fresh = OutboxProvider(tmp_path / "outbox")
    assert asyncio.run(fresh.reconcile([_msg("k2")])) == {"k2": Lookup.FOUND}
    assert fresh.write(_msg("k2")) is False
    keys = [json.loads(line)["key"] for line in index.read_text().splitlines()]
    assert keys == ["k1", "k2"]


def test_torn_index_line_does_not_swallow_the_next(tmp_path: Path) -> None:
    import asyncio
    import json

    from dripmail.message import Mailbox, Message

    def msg(key: str) -> Message:
        return Message(
            key,
            "lesson",
            "1",
            Mailbox("a@example.org"),
            Mailbox("b@example.org"),
            "s",
            "<p>h</p>",
            "t",
        )

    box = OutboxProvider(tmp_path)
    asyncio.run(box.send_batch([msg("one")]))
    with open(tmp_path / "index.jsonl", "a") as index:
        index.write('{"key": "two", "ki')  # killed mid-line
    (tmp_path / "two.eml").write_bytes(msg("two").to_bytes())
    again = OutboxProvider(tmp_path)
    assert asyncio.run(again.reconcile([msg("two")])) == {"two": "found"}
    asyncio.run(again.send_batch([msg("three")]))
    keys = []
    for line in (tmp_path / "index.jsonl").read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except ValueError:
            continue
    assert keys == ["one", "two", "three"]


def test_a_batch_is_written_whole_and_a_failure_leaves_no_stray_files(tmp_path: Path) -> None:
    """A batch's files are written by several threads at once: each key once (even twice in
    one batch), in the index in the batch's order; when one message cannot be built, no
    temporary file is left behind and the files already in place keep their index lines."""
    from dataclasses import replace

    box = OutboxProvider(tmp_path)
    keys = [f"k{i}" for i in range(40)]
    written = box.write_many([_msg(k) for k in [*keys, "k3"]])
    assert written == [True] * 40 + [False]
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == keys
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{k}.eml" for k in keys] + ["index.jsonl"]
    )
    broken = replace(_msg("bad"), headers={"Subject": "a second subject"})
    with pytest.raises(ValueError, match="Subject"):
        box.write_many([_msg("n1"), _msg("n2"), broken, _msg("n3")])
    names = {p.name for p in tmp_path.iterdir()}
    assert not any(name.endswith(".tmp") for name in names)
    assert {"n1.eml", "n2.eml", "n3.eml", "bad.eml"}.isdisjoint(names)
    asyncio.run(box.aclose())
    assert box.write(_msg("n1")) is True  # usable again after aclose


def test_a_killed_writers_temporary_files_are_swept(tmp_path: Path) -> None:
    """A process killed mid-batch leaves `.<key>.eml.<pid>.tmp` files (whole or partial
    messages, addresses in them): the next writer, and an erasure, remove those of
    processes no longer running; a running writer's are left alone."""
    import os
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    gone = int(dead.stdout)
    alive = os.getppid()  # whoever started this test: running
    left = tmp_path / f".k9.eml.{gone}.tmp"
    left.write_bytes(b"To: someone@example.org\r\n\r\npartial")
    busy = tmp_path / f".k8.eml.{alive}.tmp"
    busy.write_bytes(b"being written")
    OutboxProvider(tmp_path).write(_msg("k1"))
    assert not left.exists() and busy.exists()
    left.write_bytes(b"To: someone@example.org\r\n\r\npartial")
    OutboxProvider(tmp_path).forget(["nobody@example.org"])
    assert not left.exists() and busy.exists()
