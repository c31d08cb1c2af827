"""The default provider: writes each message as ``outbox/<key>.eml``, no account needed.

Each message is written to a temporary file and renamed into place, so a process killed at
any instant leaves either no file or a whole one; a key already present is never written
again, which makes re-runs after a crash safe. ``index.jsonl`` gets one line per new file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dripmail.message import Message
from dripmail.providers.base import BaseProvider, Capabilities, Lookup, Outcome, SendResult

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def outbox_filename(key: str) -> str:
    """The file name a key is stored under (keys are already mostly safe; anything else is _)."""
    return _SAFE.sub("_", key) + ".eml"


class OutboxProvider(BaseProvider):
    """Writes messages to a folder, atomically and at most once per key.

    Each file is the message as a receiving server would get it: ``Date`` is when it was
    written (the outbox's clock, so a simulated week shows its simulated days), a non-ASCII
    local part is written as RFC 6532 UTF-8 headers.
    """

    name = "outbox"
    carries_utf8_local_part = True
    # No scheduling window: it receives a message when it is due, like the inbox would.
    capabilities = Capabilities(
        max_batch=500, schedule_ahead=None, can_cancel=False, idempotency_key=True
    )

    def __init__(self, folder: Path, clock: Callable[[], datetime] | None = None) -> None:
        self.folder = Path(folder)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._indexed: set[str] | None = None
        self._tail_checked = False

    def _index_keys(self) -> set[str]:
        if self._indexed is None:
            index = self.folder / "index.jsonl"
            self._indexed = set()
            if index.exists():
                for line in index.read_text(encoding="utf-8").splitlines():
                    try:
                        self._indexed.add(json.loads(line)["key"])
                    except (ValueError, KeyError):
                        continue  # a line torn by a crash: the .eml file is the truth
        return self._indexed

    def _append_index(self, message: Message, send_at: datetime | None) -> None:
        path = self.folder / "index.jsonl"
        keys = self._index_keys()
        with open(path, "a+", encoding="utf-8") as index:
            line = self._index_line(message, send_at)
            if not self._tail_checked:
                # A process killed mid-line leaves a torn last line; start on a fresh line so
                # the torn one does not swallow this one.
                index.seek(0, os.SEEK_END)
                if index.tell() > 0:
                    index.seek(index.tell() - 1)
                    if index.read(1) != "\n":
                        line = "\n" + line
                self._tail_checked = True
            index.write(line)
        keys.add(message.key)

    def _index_line(self, message: Message, send_at: datetime | None) -> str:
        when = send_at or message.send_at or self._clock()
        record = {
            "key": message.key,
            "kind": message.kind,
            "ref": message.ref,
            "to": message.to.address,
            "subject": message.subject,
            "send_at": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "written_at": self._clock().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        return json.dumps(record, ensure_ascii=False) + "\n"

    def write(self, message: Message, send_at: datetime | None = None) -> bool:
        """Write one message; returns False when its key was already in the outbox."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / outbox_filename(message.key)
        if target.exists():
            self._repair(message, send_at)
            return False
        tmp = self.folder / f".{target.name}.{os.getpid()}.tmp"
        utf8 = message.to.needs_smtputf8 or message.sender.needs_smtputf8
        data = message.to_bytes(self._clock(), self.installation_id, utf8=utf8)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # link() fails if the target appeared meanwhile (another process): never overwrite.
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._append_index(message, send_at)
        return True

    def _repair(self, message: Message, send_at: datetime | None) -> None:
        # A process killed between writing the file and its index line leaves the file alone;
        # the next run that meets the file adds the missing line.
        if message.key not in self._index_keys():
            self._append_index(message, send_at)

    def forget(self, addresses: Sequence[str]) -> int:
        """Erase every message to `addresses` (any case): its `.eml` file and its index line.

        Messages are found by the index's `to`; a file a crash left without its index line
        is found by its `To` header. The index is rewritten to a temporary file and renamed
        into place, so a crash leaves the old index or the new one. Returns files erased.
        """
        wanted = {a.casefold() for a in addresses}
        index = self.folder / "index.jsonl"
        if not wanted or not self.folder.is_dir():
            return 0
        keep: list[str] = []
        doomed: set[str] = set()
        indexed: set[str] = set()
        dropped = False
        if index.exists():
            for line in index.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    record = json.loads(line)
                    key, to = record["key"], str(record.get("to", ""))
                except (ValueError, KeyError, TypeError):
                    keep.append(line)  # a torn line: no address to match
                    continue
                indexed.add(outbox_filename(key))
                if to.casefold() in wanted:
                    doomed.add(outbox_filename(key))
                    dropped = True
                else:
                    keep.append(line)
        for path in self.folder.glob("*.eml"):
            if path.name not in indexed and _addressed_to(path) & wanted:
                doomed.add(path.name)
        if dropped:
            tmp = self.folder / f".index.jsonl.{os.getpid()}.tmp"
            tmp.write_text("".join(keep), encoding="utf-8")
            os.replace(tmp, index)
            self._indexed = None
        erased = 0
        for name in doomed:
            target = self.folder / name
            if target.exists():
                target.unlink()
                erased += 1
        return erased

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Write every message; an already-present key counts as accepted (it was delivered)."""
        results = []
        for message in messages:
            self.write(message, send_at)
            results.append(SendResult(message.key, Outcome.ACCEPTED, provider_id=message.key))
        return results

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """A message is in the outbox exactly when its file is (its index line is mended)."""
        found = {}
        for m in messages:
            if (self.folder / outbox_filename(m.key)).exists():
                self._repair(m, None)
                found[m.key] = Lookup.FOUND
            else:
                found[m.key] = Lookup.ABSENT
        return found

    async def check(self) -> str:
        """Report where messages go."""
        return f"outbox: writing .eml files to {self.folder}"


def _addressed_to(path: Path) -> set[str]:
    """The casefolded addresses in a message file's `To` header (headers only are read)."""
    from email.parser import BytesHeaderParser
    from email.policy import default
    from email.utils import getaddresses

    with open(path, "rb") as fh:
        headers = BytesHeaderParser(policy=default).parse(fh)
    return {addr.casefold() for _, addr in getaddresses([str(headers.get("To", ""))])}
