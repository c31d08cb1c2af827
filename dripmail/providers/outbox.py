"""The default provider: writes each message as ``outbox/<key>.eml``, no account needed.

Each message is written to a temporary file, flushed to disk (fsync) and linked into place,
so a process killed (or a machine losing power) at any instant leaves either no file or a
whole one; a key already present is never written again, which makes re-runs after a crash
safe. ``index.jsonl`` gets one line per new file.

A batch's files are written and flushed by a few threads at once, then linked in order and
the folder flushed once: one fsync after another capped the outbox at 150-250 messages/s on
an ordinary disk, several at once let the file system commit them together (issue 13).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

from dripmail.message import Message
from dripmail.providers.base import BaseProvider, Capabilities, Lookup, Outcome, SendResult

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
# Files written and flushed at once: enough for the file system to commit several fsyncs
# together, few enough not to matter on a small machine (the threads wait on the disk).
WRITERS = 4


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
        self._writers: ThreadPoolExecutor | None = None
        self._swept = False

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

    def _append_index(self, messages: Sequence[Message], send_at: datetime | None) -> None:
        if not messages:
            return
        path = self.folder / "index.jsonl"
        keys = self._index_keys()
        with open(path, "a+", encoding="utf-8") as index:
            lines = "".join(self._index_line(message, send_at) for message in messages)
            if not self._tail_checked:
                # A process killed mid-line leaves a torn last line; start on a fresh line so
                # the torn one does not swallow this one.
                index.seek(0, os.SEEK_END)
                if index.tell() > 0:
                    index.seek(index.tell() - 1)
                    if index.read(1) != "\n":
                        lines = "\n" + lines
                self._tail_checked = True
            index.write(lines)
        keys.update(message.key for message in messages)

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
        return self.write_many([message], send_at)[0]

    def write_many(
        self, messages: Sequence[Message], send_at: datetime | None = None
    ) -> list[bool]:
        """Write messages, each atomically; per message, False when its key was already there.

        Every file is on disk (fsync) before its name appears, and the names are on disk
        before this returns: what it reports written survives a power cut. Raises what
        building a message or the disk raises (OSError): files not yet in place are removed.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            _sweep_temporaries(self.folder)
        written = [False] * len(messages)
        pending: list[tuple[int, Path, Path, Future[None]]] = []
        names: set[str] = set()
        try:
            for i, message in enumerate(messages):
                target = self.folder / outbox_filename(message.key)
                if target.name in names:
                    continue  # the same key twice in a batch: written once
                if target.exists():
                    self._repair(message, send_at)
                    continue
                names.add(target.name)
                utf8 = message.to.needs_smtputf8 or message.sender.needs_smtputf8
                data = message.to_bytes(self._clock(), self.installation_id, utf8=utf8)
                tmp = self.folder / f".{target.name}.{os.getpid()}.tmp"
                pending.append((i, tmp, target, self._pool().submit(_write_file, tmp, data)))
            wait([job for *_, job in pending])
            for *_, job in pending:
                job.result()  # a disk error stops the batch before any file is linked
            for i, tmp, target, _ in pending:
                try:
                    # link() fails if the target appeared meanwhile (another process): never
                    # overwrite.
                    os.link(tmp, target)
                    written[i] = True
                except FileExistsError:
                    pass
                tmp.unlink(missing_ok=True)
            if pending:
                _fsync_folder(self.folder)
        finally:
            wait([job for *_, job in pending])
            for _, tmp, _, _ in pending:
                tmp.unlink(missing_ok=True)
            # Also after an error: a file linked has its line (else the next run mends it).
            self._append_index(
                [m for m, done in zip(messages, written, strict=True) if done], send_at
            )
        return written

    def _pool(self) -> ThreadPoolExecutor:
        if self._writers is None:
            self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="dripmail-outbox")
        return self._writers

    async def aclose(self) -> None:
        """Stop the writer threads (started again if the outbox is used afterwards)."""
        writers, self._writers = self._writers, None
        if writers is not None:
            writers.shutdown()

    def _repair(self, message: Message, send_at: datetime | None) -> None:
        # A process killed between writing the file and its index line leaves the file alone;
        # the next run that meets the file adds the missing line.
        if message.key not in self._index_keys():
            self._append_index([message], send_at)

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
        _sweep_temporaries(self.folder)  # a killed writer's half-written messages go too
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
        self.write_many(messages, send_at)
        return [SendResult(m.key, Outcome.ACCEPTED, provider_id=m.key) for m in messages]

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


def _sweep_temporaries(folder: Path) -> None:
    """Remove the temporary files (``.<name>.<pid>.tmp``) of writers no longer running.

    A process killed mid-batch leaves up to a batch of them: whole or partial messages,
    with readers' addresses in them, that no key will ever link into place. A running
    process's (another worker's, or a pid reused since) are left alone.
    """
    for path in folder.glob(".*.tmp"):
        try:
            pid = int(path.name.rsplit(".", 2)[-2])
        except (IndexError, ValueError):
            continue  # not one of ours
        if pid != os.getpid() and not _running(pid):
            path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether a process with this id exists (on this machine: the outbox is local)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: keep its files
    return True


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file and flush it to disk (a writer thread)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's entries (the names just linked) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; NTFS journals names itself
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the files themselves are on disk
    finally:
        os.close(fd)


def _addressed_to(path: Path) -> set[str]:
    """The casefolded addresses in a message file's `To` header (headers only are read)."""
    from email.parser import BytesHeaderParser
    from email.policy import default
    from email.utils import getaddresses

    with open(path, "rb") as fh:
        headers = BytesHeaderParser(policy=default).parse(fh)
    return {addr.casefold() for _, addr in getaddresses([str(headers.get("To", ""))])}
