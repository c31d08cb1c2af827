"""Fixtures for the web edge: a real course project on disk, real SQLite, the outbox provider,
and the app called in process through httpx's ASGI transport."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from course_fixture import make_project  # noqa: E402
from fakes.webhook_signing import WebhookKeys  # noqa: E402
from store_fixture import new_store  # noqa: E402

from dripmail.config import Project, Settings  # noqa: E402
from dripmail.store import schema  # noqa: E402
from dripmail.tokens import Signer  # noqa: E402

SECRET = "test-secret-key-for-links-0123456789"
PUBLIC = "http://testserver"
# A Monday 12:00 in New York: after the 07:00 send time, so lesson 1 is tomorrow morning.
NOW = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)


@dataclass
class Clock:
    """A settable clock (aware UTC) shared by the app and the test."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Web:
    """One app under test and the handles a test needs."""

    root: Path
    settings: Settings
    app: Any
    clock: Clock
    keys: WebhookKeys
    client_ip: str = "203.0.113.7"
    _clients: list = field(default_factory=list)

    @property
    def project(self) -> Project:
        return Project(self.root)

    @property
    def engine(self):
        return self.app.state.ctx.engine

    @property
    def signer(self) -> Signer:
        return Signer(SECRET)

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def client(self, ip: str | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip or self.client_ip, 50000))
        client = httpx.AsyncClient(transport=transport, base_url=PUBLIC)
        self._clients.append(client)
        return client

    def token(self, subscriber_id: int, purpose: str) -> str:
        return self.signer.make(subscriber_id, purpose)  # type: ignore[arg-type]

    def rows(self, table) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table)).mappings()]

    def snapshot(self) -> dict[str, list[dict]]:
        """Every stored row, to show a bad request changed nothing."""
        return {t.name: self.rows(t) for t in schema.metadata.sorted_tables}

    def subscriber(self, email: str) -> dict:
        (row,) = [r for r in self.rows(schema.subscribers) if r["email"] == email]
        return row

    def emails(self) -> list[Path]:
        return sorted(self.outbox.glob("*.eml")) if self.outbox.is_dir() else []


def make_settings(root: Path, keys: WebhookKeys, **extra: str) -> Settings:
    values = {
        "DRIPMAIL_DATABASE_URL": f"sqlite:///{root / 'web.db'}",
        "DRIPMAIL_OUTBOX_DIR": str(root / "outbox"),
        "DRIPMAIL_PUBLIC_URL": PUBLIC,
        "DRIPMAIL_SECRET_KEY": SECRET,
        **extra,
    }
    return keys.settings(**values)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_web(tmp_path: Path) -> Callable[..., Web]:
    """Build an app for a fresh project; keyword arguments become settings (env aliases)."""
    from dripmail.web.app import create_app

    def build(*, preview: bool = False, clock: Clock | None = None, **extra: str) -> Web:
        root = tmp_path / "project"
        if not root.exists():
            make_project(root)
        keys = WebhookKeys.generate()
        settings = make_settings(root, keys, **extra)
        if not (root / "web.db").exists() and "DRIPMAIL_DATABASE_URL" not in extra:
            new_store(settings.database_url, root).dispose()  # the app opens it, current
        clock = clock or Clock()
        app = create_app(Project(root), settings, preview=preview, clock=clock)
        return Web(root, settings, app, clock, keys)

    return build


@pytest.fixture
async def web(make_web) -> AsyncIterator[Web]:
    w = make_web()
    yield w
    for client in w._clients:
        await client.aclose()


def assert_clean(response: httpx.Response) -> None:
    """No traceback or exception name ever reaches a visitor."""
    body = response.text
    for leak in ("Traceback", 'File "', "sqlalchemy", "Error:", "Exception"):
        assert leak not in body, f"{leak!r} leaked into the answer: {body[:400]}"
