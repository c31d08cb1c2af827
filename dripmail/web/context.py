"""What every request handler shares: settings, the runner, the clock, pages and the limiter.

One `WebContext` per app (stored as ``app.state.ctx``). Database work is synchronous
(SQLAlchemy Core), so handlers call it through `ctx.db(...)` (Starlette's thread pool);
provider calls go through `ctx.provider_call(...)`, which runs them on the core's one event
loop (`Dripmail.call_provider`), where the provider's pooled client lives: concurrent requests
share its connections, no lock between them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.web.ratelimit import TokenBucket

log = logging.getLogger("dripmail.web")

TEMPLATES = Path(__file__).parent / "templates"
T = TypeVar("T")

# Colours for pages when the course cannot be loaded (the preview of a broken course).
DEFAULT_BRAND = {
    "primary": "#2f5d50",
    "background": "#faf7f2",
    "text": "#1f2a2e",
    "muted": "#5a6570",
    "wordmark": "dripmail",
    "logo_url": None,
    "logo_alt": "",
}


def page_environment() -> Environment:
    """The Jinja environment for the app's own pages: autoescaped, undefined names fail loudly."""
    from jinja2 import StrictUndefined

    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass
class WebContext:
    """Shared state of one app instance."""

    project: Project
    settings: Settings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    preview: bool = False
    # Sign-ups per client address: a burst of 10, then one a minute (see ratelimit.py).
    limiter: TokenBucket = field(
        default_factory=lambda: TokenBucket(capacity=10, per_second=1 / 60)
    )
    pages: Environment = field(default_factory=page_environment)

    def __post_init__(self) -> None:
        # The application core; `runner` is its older name, kept for the routes that use it.
        self.app = Dripmail(self.project, self.settings, clock=self.clock)
        self.runner = self.app

    def now(self) -> datetime:
        """The app's clock (aware UTC)."""
        return self.clock()

    @property
    def engine(self):  # -> sqlalchemy.Engine
        return self.runner.engine

    def course(self):  # -> dripmail.content.Course
        """The course as loaded (again after its files change; ContentError when they are
        wrong)."""
        return self.runner.course

    def rules(self) -> Any:
        """Title, zone, send time and weekends (`Dripmail.rules`): kept while a lesson is
        broken, so pages that need no lesson text keep working."""
        return self.runner.rules

    def brand(self) -> dict[str, Any]:
        """The course's brand colours for page styling, or neutral ones if it cannot load."""
        try:
            brand = self.runner.course.brand
        except Exception:  # a broken course must not break the error page itself
            return {**DEFAULT_BRAND, "title": "dripmail"}
        return {
            "primary": brand.primary,
            "background": brand.background,
            "text": brand.text,
            "muted": brand.muted,
            "wordmark": brand.wordmark,
            "logo_url": brand.logo_url or None,
            "logo_alt": brand.logo_alt,
            "title": self.runner.course.title,
        }

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking database work in the thread pool."""
        return await run_in_threadpool(partial(fn, *args, **kwargs))

    def provider_call_sync(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one provider coroutine to completion on the core's event loop.

        Called from a worker thread (never the server's loop); calls from several threads run
        concurrently there, sharing the provider's one pooled client.
        """
        return self.app.call_provider(make)

    async def provider_call(self, make: Callable[[], Awaitable[T]]) -> T:
        """`provider_call_sync` from async code (through the thread pool)."""
        return await run_in_threadpool(self.provider_call_sync, make)

    def render(
        self,
        request: Request,
        template: str,
        code: int = 200,
        headers: dict[str, str] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        """One of the app's pages with the course brand."""
        html = self.pages.get_template(template).render(
            brand=self.brand(), request_path=request.url.path, **values
        )
        return HTMLResponse(html, status_code=code, headers=headers)

    def message(
        self,
        request: Request,
        status: int,
        title: str,
        text: str,
        *,
        hint: str = "",
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        """A short page with a heading and a sentence or two (errors and confirmations)."""
        return self.render(
            request, "message.html", status, headers=headers, title=title, text=text, hint=hint
        )


def ctx(request: Request) -> WebContext:
    """The context of the app serving `request`."""
    return request.app.state.ctx
