"""Wiring the course into the engine: store, provider, renderer and hand-over window.

The CLI, the demo and the web app build a `Runner` from settings so they all send the same way:
lessons rendered through the compile-once path, signed links, the configured provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from dripmail.config import Project, Settings, deployment_problems
from dripmail.errors import ConfigError
from dripmail.live_content import LiveContent
from dripmail.message import Message
from dripmail.providers.base import BaseProvider, Provider
from dripmail.welcome import WELCOME_DAY, first_lesson_phrase

if TYPE_CHECKING:
    from dripmail.content import Course
    from dripmail.render import Renderer
    from dripmail.store.delivery_queries import DueRow

DEV_SECRET = "dev-only-insecure-key"


def make_provider(
    settings: Settings, project: Project, clock: Callable[[], datetime] | None = None
) -> Provider:
    """The configured provider. `clock` feeds the outbox's `written_at` under a simulated clock."""
    if settings.provider == "outbox":
        from dripmail.providers.outbox import OutboxProvider

        return OutboxProvider(project.resolve(settings.outbox_dir), clock=clock)
    if settings.secret_key.get_secret_value() == DEV_SECRET:
        # Links signed with a public key could be forged to unsubscribe anyone.
        raise ConfigError(
            "DRIPMAIL_SECRET_KEY is the development default: set a long random value "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) before "
            f"sending through {settings.provider}"
        )
    problems = deployment_problems(settings)
    if problems:
        # A real provider would deliver links nobody can open or anyone can forge.
        raise ConfigError(f"DRIPMAIL_PROVIDER={settings.provider} refused: " + "; ".join(problems))
    from dripmail.providers import get_provider

    return get_provider(settings, project)


def handover_window(provider: Provider, settings: Settings) -> timedelta:
    """How far ahead of its due time a lesson may be handed to this provider.

    A provider that can cancel gets its whole scheduling window (an unsubscribe cancels what
    was handed over); one that cannot gets at most the configured short window, so a change
    of mind reaches at most the next hour's mail.
    """
    ahead = provider.capabilities.schedule_ahead
    if not ahead:
        return timedelta(0)
    if provider.capabilities.can_cancel:
        return ahead
    return min(ahead, timedelta(minutes=settings.handover_window_minutes))


@dataclass
class Runner:
    """Everything `run` needs, built lazily from the project and settings."""

    project: Project
    settings: Settings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @cached_property
    def engine(self) -> Engine:
        from dripmail.store.db import open_store

        return open_store(self.settings.database_url, self.project.root)

    def upgrade_database(self) -> str:
        """Create or upgrade the database schema to this version (opening the store runs the
        migrations); returns the database URL with its password hidden, for the operator."""
        from sqlalchemy.engine import make_url

        from dripmail.store.db import resolve_url

        self.engine  # noqa: B018 - opening it is the upgrade
        url = make_url(resolve_url(self.settings.database_url, self.project.root))
        return url.render_as_string(hide_password=True)

    def forget_stored_report(self) -> int:
        """Drop the report's stored days (`report --rebuild` counts every day again from the
        history); returns how many were dropped (`store.report_queries.forget_stored`)."""
        from dripmail.store.report_queries import forget_stored

        return forget_stored(self.engine)

    @cached_property
    def content(self) -> LiveContent:
        """The course files as loaded, dropped when they change (`refresh_content`)."""
        return LiveContent(self.project)

    def refresh_content(self) -> bool:
        """Forget the loaded course and compiled emails if their files changed since they
        were loaded (a stat per file); True when they did. Long-running processes call it at
        the start of each loop pass and each web request, so they use the files as they are."""
        return self.content.refresh()

    @property
    def course(self) -> Course:
        """The course as loaded (ContentError listing every problem when it does not load)."""
        return self.content.course()

    @property
    def renderer(self) -> Renderer:
        """The renderer of the loaded course (each email compiled once per version)."""
        return self.content.renderer()

    @property
    def rules(self) -> Any:
        """Schedule rules and title for re-planning and pages, kept while a lesson is broken
        (`LiveContent.rules`); never lesson text, never a new reader's week."""
        return self.content.rules()

    def content_problems(self) -> list[str]:
        """The content's errors as `check` prints them (``file:line: message``), or []."""
        return self.content.problems()

    @cached_property
    def provider(self) -> Provider:
        from dripmail.store.installation import installation_id

        provider = make_provider(self.settings, self.project, self.clock)
        # Every Message-ID carries this database's random id (see dripmail.message).
        provider.installation_id = installation_id(self.engine)
        # The core's stop request (`Dripmail.interrupted`, set on Ctrl-C or SIGTERM): the
        # provider sends no request not yet on the wire once it is set.
        stop = getattr(self, "interrupted", None)
        if stop is not None and isinstance(provider, BaseProvider):
            provider.stop_on(stop)
        return provider

    @cached_property
    def signer(self):  # -> dripmail.tokens.Signer
        from dripmail.tokens import Signer

        return Signer.from_settings(self.settings)

    def render_lesson(self, row: DueRow) -> Message:
        """A due delivery row (joined with its subscriber) as a personalised Message."""
        from dripmail.render import recipient_for

        send_at = row.get("effective_due") or row["due_at"]
        welcome = row["lesson_day"] == WELCOME_DAY
        compiled = self.renderer.welcome() if welcome else self.renderer.lesson(row["lesson_day"])
        recipient = recipient_for(
            {"id": row["subscriber_id"], "email": row["email"], "first_name": row["first_name"]},
            self.settings.public_url,
            self.signer,
            issued_at=send_at,  # the same delivery always renders to the same bytes
            links=compiled.links,
        )
        if welcome:
            recipient = replace(recipient, first_lesson=self._first_lesson(row, send_at))
        return compiled.personalise(
            recipient,
            key=row["key"],
            kind="lesson",
            ref="welcome" if welcome else str(row["lesson_day"]),
            send_at=send_at,
        )

    def _first_lesson(self, row: DueRow, send_at: datetime) -> str:
        """When this reader's first lesson still to come arrives, in their words and zone."""
        from dripmail.store.subscriber_queries import next_open_lesson

        with self.engine.connect() as conn:
            found = next_open_lesson(conn, row["subscriber_id"])
        if found is None:
            return ""  # nothing planned: the template's fallback wording is used
        return first_lesson_phrase(found[1], row["timezone"], send_at)

    async def cancel_handed(self, provider_ids: list[str]) -> list[str]:
        """Cancel scheduled sends at the provider; returns those it really cancelled."""
        if not provider_ids or not self.provider.capabilities.can_cancel:
            return []
        return await self.provider.cancel(provider_ids)
