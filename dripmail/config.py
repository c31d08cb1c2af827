"""Settings from the environment (or a ``.env`` file in the project folder), validated once.

Course settings (sender, send time, colours...) live in ``course/course.toml`` and are loaded by
`dripmail.content`; this module holds only deployment settings and secrets.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dripmail.errors import ConfigError

ProviderName = Literal["outbox", "smtp", "postmark", "sendgrid", "mailgun", "resend"]


class Settings(BaseSettings):
    """Deployment settings. Every field maps to an environment variable shown in the README."""

    model_config = SettingsConfigDict(extra="ignore", env_file_encoding="utf-8")

    database_url: str = Field("sqlite:///dripmail.db", alias="DRIPMAIL_DATABASE_URL")
    provider: ProviderName = Field("outbox", alias="DRIPMAIL_PROVIDER")
    outbox_dir: str = Field("outbox", alias="DRIPMAIL_OUTBOX_DIR")
    public_url: str = Field("http://localhost:8000", alias="DRIPMAIL_PUBLIC_URL")
    secret_key: SecretStr = Field(SecretStr("dev-only-insecure-key"), alias="DRIPMAIL_SECRET_KEY")
    # Comma-separated older keys still accepted for links already sent (key rotation).
    old_secret_keys: SecretStr = Field(SecretStr(""), alias="DRIPMAIL_OLD_SECRET_KEYS")
    # How long before its due time a lesson may be handed to a provider that cannot cancel.
    handover_window_minutes: int = Field(60, alias="DRIPMAIL_HANDOVER_WINDOW_MINUTES", ge=0)
    rate_per_second: float | None = Field(None, alias="DRIPMAIL_RATE_PER_SECOND", gt=0)
    max_concurrency: int | None = Field(None, alias="DRIPMAIL_MAX_CONCURRENCY", ge=1)
    confirm_threshold: int = Field(100, alias="DRIPMAIL_CONFIRM_THRESHOLD", ge=0)
    # After this many permanent failures in a row with one reason (an unverified sender, a
    # template the provider rejects), `run` and `broadcast` stop and give the rows back.
    halt_after_failures: int = Field(20, alias="DRIPMAIL_HALT_AFTER_FAILURES", ge=0)

    postmark_server_token: SecretStr | None = Field(None, alias="POSTMARK_SERVER_TOKEN")
    postmark_base_url: str = Field(
        "https://api.postmarkapp.com", alias="DRIPMAIL_POSTMARK_BASE_URL"
    )
    postmark_stream: str = Field("outbound", alias="DRIPMAIL_POSTMARK_STREAM")
    postmark_broadcast_stream: str = Field("broadcast", alias="DRIPMAIL_POSTMARK_BROADCAST_STREAM")
    postmark_webhook_user: str | None = Field(None, alias="POSTMARK_WEBHOOK_USER")
    postmark_webhook_password: SecretStr | None = Field(None, alias="POSTMARK_WEBHOOK_PASSWORD")
    sendgrid_api_key: SecretStr | None = Field(None, alias="SENDGRID_API_KEY")
    sendgrid_base_url: str = Field("https://api.sendgrid.com", alias="DRIPMAIL_SENDGRID_BASE_URL")
    sendgrid_webhook_public_key: str | None = Field(None, alias="SENDGRID_WEBHOOK_PUBLIC_KEY")
    mailgun_api_key: SecretStr | None = Field(None, alias="MAILGUN_API_KEY")
    mailgun_domain: str | None = Field(None, alias="MAILGUN_DOMAIN")
    mailgun_base_url: str = Field("https://api.mailgun.net", alias="DRIPMAIL_MAILGUN_BASE_URL")
    mailgun_webhook_signing_key: SecretStr | None = Field(None, alias="MAILGUN_WEBHOOK_SIGNING_KEY")
    resend_api_key: SecretStr | None = Field(None, alias="RESEND_API_KEY")
    resend_base_url: str = Field("https://api.resend.com", alias="DRIPMAIL_RESEND_BASE_URL")
    resend_webhook_secret: SecretStr | None = Field(None, alias="RESEND_WEBHOOK_SECRET")
    # How far a signed webhook timestamp may be from our clock (SendGrid, Mailgun, Resend).
    webhook_tolerance_seconds: int = Field(
        300, alias="DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS", ge=30, le=86400
    )
    smtp_host: str = Field("localhost", alias="DRIPMAIL_SMTP_HOST")
    smtp_port: int = Field(25, alias="DRIPMAIL_SMTP_PORT")
    smtp_user: str | None = Field(None, alias="DRIPMAIL_SMTP_USER")
    smtp_password: SecretStr | None = Field(None, alias="DRIPMAIL_SMTP_PASSWORD")
    smtp_tls: Literal["none", "starttls", "ssl"] = Field("none", alias="DRIPMAIL_SMTP_TLS")


def load_settings(root: Path | None = None) -> Settings:
    """Read settings from the environment, then ``<root>/.env``; the environment wins.

    ConfigError naming ``.env:LINE`` for a line python-dotenv cannot read: it would skip
    it (with a warning naming neither file nor variable), and a skipped
    ``DRIPMAIL_PROVIDER`` line turns a real provider into the local outbox without a word.
    """
    env_file = (root or Path.cwd()) / ".env"
    if env_file.is_file():
        check_env_file(env_file)
    try:
        return Settings(_env_file=env_file if env_file.is_file() else None)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None


# What a setting's name looks like (DRIPMAIL_PROVIDER, POSTMARK_SERVER_TOKEN): upper case.
_SETTING_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def check_env_file(path: Path) -> None:
    """ConfigError for the first line of a ``.env`` file that python-dotenv cannot read (its
    own parser, so what passes here is what it loads). The message names the file, the line
    and the variable the line starts with, never the rest: it may hold a secret."""
    import io

    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            # The blank lines dotenv keeps in front of the bad one: name the line itself.
            raw = binding.original.string
            line += len(raw) - len(raw.lstrip("\n"))
            start = raw.strip().split("\n", 1)[0]
            name = re.split(r"[\s:=]", start, maxsplit=1)[0] if start else ""
            # Only a setting's name is said: a token pasted at the start of a line is not.
            starts = f" (it starts with {name})" if _SETTING_NAME.fullmatch(name) else ""
            raise ConfigError(
                f"{path}:{line}: cannot read this line{starts}: write NAME=value, one setting "
                "per line, quoting a value that has spaces or # in it"
            )


# HMAC keys shorter than the hash output (32 bytes for SHA-256) make links forgeable sooner.
MIN_SECRET_BYTES = 32
_KEY_HINT = "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def _host_problem(host: str) -> str | None:
    """Why readers cannot reach `host` from their inbox, or None."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "is this machine (localhost)"
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_reserved:
        return "is a private address"
    return None


# The API credential of each HTTP provider: (provider, settings field, variable).
_CREDENTIALS = (
    ("postmark", "postmark_server_token", "POSTMARK_SERVER_TOKEN"),
    ("sendgrid", "sendgrid_api_key", "SENDGRID_API_KEY"),
    ("mailgun", "mailgun_api_key", "MAILGUN_API_KEY"),
    ("resend", "resend_api_key", "RESEND_API_KEY"),
)


def unused_credentials(settings: Settings) -> list[str]:
    """The API credentials set for a provider other than `settings.provider`, as
    ``"POSTMARK_SERVER_TOKEN (postmark)"``: a sign that DRIPMAIL_PROVIDER is not what the
    operator meant (mail would go to the local outbox or another account)."""
    return [
        f"{variable} ({name})"
        for name, field, variable in _CREDENTIALS
        if name != settings.provider and getattr(settings, field, None) is not None
    ]


def deployment_problems(settings: Settings) -> list[str]:
    """What makes these settings unfit for a real provider, one line each naming the variable.

    Every link in every email (unsubscribe, one-click RFC 8058, preferences, confirm) is built
    on DRIPMAIL_PUBLIC_URL, so it must be https on a public host; the secret key signs those
    links, so it must be long enough not to be guessed. The outbox provider needs neither.
    """
    problems: list[str] = []
    url = settings.public_url.strip()
    parts = urlsplit(url)
    # One line for the address, however many things are wrong with it, so the fix is said once.
    url_reasons: list[str] = []
    if parts.scheme != "https":
        url_reasons.append("is not https (one-click unsubscribe, RFC 8058, needs https)")
    host_problem = _host_problem(parts.hostname or "") if parts.hostname else "has no host"
    if host_problem:
        url_reasons.append(f"{host_problem} (readers could not open their unsubscribe links)")
    if url_reasons:
        problems.append(
            f"DRIPMAIL_PUBLIC_URL={url!r} "
            + " and ".join(url_reasons)
            + ": set the public https address that reaches `serve`"
        )
    size = len(settings.secret_key.get_secret_value().encode())
    if size < MIN_SECRET_BYTES:
        problems.append(
            f"DRIPMAIL_SECRET_KEY is {size} bytes, fewer than {MIN_SECRET_BYTES}: links signed "
            f"with it could be forged; set a long random value ({_KEY_HINT})"
        )
    return problems


@dataclass(frozen=True, slots=True)
class Project:
    """Where a course project's files are: ``course/``, ``emails/``, ``newsletters/``."""

    root: Path

    @property
    def course_dir(self) -> Path:
        return self.root / "course"

    @property
    def emails_dir(self) -> Path:
        return self.root / "emails"

    @property
    def newsletters_dir(self) -> Path:
        return self.root / "newsletters"

    def resolve(self, path: str) -> Path:
        """A setting's path, relative to the project root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def display(self, path: Path) -> str:
        """A path as shown in messages: relative to the project root where possible."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)
