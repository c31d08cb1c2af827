"""Files dripmail writes where an operator points it (`subscribers export --out`, `render
--out`): checked first, then written whole or not at all.

- A target that is one of the files dripmail itself keeps (the SQLite database and its
  `-wal`, `-shm`, `-journal` and `.lock` companions) or reads in the same command (the CSV
  being imported) is refused before anything is opened: `export --out dripmail.db` used to
  truncate the live database before reading it.
- A missing folder, a folder given where a file is meant, a folder that cannot be written
  are one line naming the path and what to do.
- The content goes to a temporary file in the target's folder and is renamed over the target
  only once complete (`os.replace`, atomic on one file system): a failure, Ctrl-C or a crash
  mid-way leaves the old file as it was and no half-written one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from dripmail.errors import InputError

# SQLite keeps these beside the database file (WAL mode, a rollback journal, and dripmail's
# own upgrade lock, `store.db._sqlite_upgrade_lock`): overwriting any of them corrupts it.
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal", ".lock")
# Files a command must not overwrite -> what each is, for the one-line refusal.
Kept = Mapping[Path, str]


def store_files(database_url: str, root: Path) -> dict[Path, str]:
    """The files of a SQLite database at `database_url` (relative to `root`, as the store
    opens it), companions included, each with what it is (for the refusal); empty for
    PostgreSQL or an in-memory database."""
    from dripmail.store.db import resolve_url

    url = make_url(resolve_url(database_url, root))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return {}
    base = str(url.database)
    files = {Path(base): f"the SQLite database ({Path(base).name})"}
    for suffix in SQLITE_COMPANIONS[1:]:
        files[Path(base + suffix)] = f"part of the SQLite database ({Path(base).name}{suffix})"
    return files


def kept_files(database_url: str, root: Path, outbox_dir: str = "outbox") -> dict[Path, str]:
    """Everything an `--out` must never overwrite in a project at `root`: the database's
    files (`store_files`), the `.env` with its secrets, and any file inside the course's
    content folders or the outbox (an export over `outbox/index.jsonl` kept a forgotten
    reader's address there, which `forget` erases)."""
    kept = store_files(database_url, root)
    kept[root / ".env"] = "the project's settings file (.env)"
    for folder in ("course", "emails", "newsletters"):
        kept[root / folder] = f"the course's own files ({folder}/)"
    outbox = Path(outbox_dir)
    kept[outbox if outbox.is_absolute() else root / outbox] = "the outbox's files"
    return kept


def _inside(target: Path, folder: Path) -> bool:
    """True when `target` would be written inside the existing folder `folder`."""
    try:
        return folder.is_dir() and target.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _same(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file (also through a symlink or a hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_target(target: Path, keep: Kept | None = None, option: str = "--out") -> None:
    """Refuse (InputError, one line) a file target dripmail must not or cannot write.

    `keep`: files that must never be overwritten (`store_files`, the input being read). The
    folder must exist (it is not created: a typo in it would scatter files) and be writable.
    """
    for kept, what in (keep or {}).items():
        if _same(target, kept) or _inside(target, kept):
            raise InputError(
                f"{option} {target}: that is {what}, which this command must not overwrite; "
                "give another file name"
            )
    try:
        _check_place(target, option)
    except OSError as exc:  # a name too long, a loop of symlinks...: the system's reason
        raise InputError(f"{option} {target}: {exc.strerror or exc}; choose another path") from None


def _check_place(target: Path, option: str) -> None:
    if target.is_dir():
        raise InputError(
            f"{option} {target} is a folder: give a file name in it, e.g. "
            f"{target / 'subscribers.csv'}"
        )
    folder = target.parent
    if not folder.is_dir():
        missing = (
            "is a file, not a folder; choose another path"
            if folder.exists()
            else "does not exist; create it or choose another path"
        )
        raise InputError(f"{option} {target}: the folder {folder} {missing}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"{option} {target}: the folder {folder} is not writable by this user; choose "
            "another path"
        )


def _mode_for(target: Path) -> int:
    """The permissions the file would have got from a plain open: the old file's, else the
    umask's (mkstemp makes it 0600)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def replaced_atomically(
    target: Path, keep: Kept | None = None, *, text: bool = True, option: str = "--out"
) -> Iterator[IO]:
    """Write `target` through a temporary file in its folder, renamed over it on success.

    `check_target` runs first. Yields a text handle (UTF-8, no newline translation, as the
    csv module wants) or, with ``text=False``, a binary one. Any exception, KeyboardInterrupt
    included, removes the temporary file and leaves `target` untouched; an OSError while
    writing (a full disk) is an InputError saying so.
    """
    check_target(target, keep, option)
    if target.exists() and not target.is_file():
        # A device, a FIFO or a socket (`--out /dev/stdout`, a named pipe): written to as a
        # shell redirect would; renaming over it would replace the device with a plain file.
        try:
            stream: IO = (
                open(target, "w", encoding="utf-8", newline="") if text else open(target, "wb")  # noqa: SIM115
            )
            with stream:
                yield stream
        except OSError as exc:
            raise InputError(
                f"{option} {target}: cannot write it ({exc.strerror or exc})"
            ) from None
        return
    if target.is_symlink():
        # The link stays a link: the file it points to is the one replaced.
        target = target.resolve()
    try:
        fd, name = tempfile.mkstemp(prefix=".dripmail-", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(f"{option} {target}: cannot write there ({exc.strerror})") from None
    temporary = Path(name)
    try:
        with (
            os.fdopen(fd, "w", encoding="utf-8", newline="")
            if text
            else os.fdopen(fd, "wb") as handle
        ):
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _mode_for(target))
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise InputError(
            f"{option} {target}: cannot write it ({exc.strerror or exc}); the old file, if any, "
            "is unchanged"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_atomically(target: Path, content: str | bytes, keep: Kept | None = None) -> None:
    """`replaced_atomically` for content already in memory (a rendered email)."""
    with replaced_atomically(target, keep, text=isinstance(content, str)) as handle:
        handle.write(content)


def make_folder(folder: Path, named: str, instead: str) -> None:
    """Create `folder` (and its parents) unless it is there: InputError, one line starting
    with `named` (e.g. "--out PATH", "init PATH"), when it is a file (then `instead` says
    what to give) or cannot be created (the system's reason)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{named}: that is a file, not a folder: {instead}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{named}: cannot create the folder ({exc.strerror}); choose another path"
        ) from None
