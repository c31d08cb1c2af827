"""The error hierarchy. The CLI and the web app turn these into one-line messages.

Every error names *where* the problem is (file and line, field, address, variable)
and, where it helps, what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class DripmailError(Exception):
    """Root of every error dripmail raises on purpose; the CLI exits 1 with its message."""

    exit_code = 1


class ContentError(DripmailError):
    """A course, lesson, newsletter or template file is wrong.

    `problems` holds one line per problem, already formatted as ``path:line: field: message``.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    @classmethod
    def at(cls, path: Path | str, line: int | None, message: str) -> ContentError:
        """Build an error for one place: ``path:line: message``."""
        where = f"{path}:{line}" if line else f"{path}"
        return cls(f"{where}: {message}")


class ConfigError(DripmailError):
    """A setting (environment variable, .env, course.toml) is missing or invalid."""


class InputError(DripmailError):
    """Bad input given on the command line or over the web (address, time zone, CSV row...)."""


class NotFoundError(DripmailError):
    """A subscriber, lesson, broadcast or file that was asked for does not exist."""


class StoreError(DripmailError):
    """The database cannot be reached or is not in a usable state."""


class ProviderError(DripmailError):
    """The email provider refused us as a whole (not one message)."""


class ProviderAuthError(ProviderError):
    """The provider rejected the credential (401/403): stop at once, release claims."""

    def __init__(self, provider: str, variable: str, detail: str = "") -> None:
        self.provider = provider
        self.variable = variable
        msg = f"{provider} rejected the credential in {variable}: check and set it, then re-run"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class TokenError(DripmailError):
    """A signed link token is malformed, tampered with, expired or for another purpose."""


class WebhookAuthError(TokenError):
    """A provider webhook is unsigned, mis-signed, stale or replayed: answer 401, store nothing.

    The message names the provider and what was wrong, never a secret or the signature.
    """

    def __init__(self, provider: str, reason: str) -> None:
        self.provider = provider
        self.reason = reason
        super().__init__(f"{provider} webhook refused: {reason}")
