"""Email providers behind one protocol: see `base.py`. `get_provider` picks the configured one.

Each provider module exposes ``from_settings(settings)``, which checks its credentials first:
a missing one is a one-line `ConfigError` naming the variable, before anything is sent.
"""

from __future__ import annotations

from importlib import import_module

from dripmail.config import Project, Settings
from dripmail.errors import ConfigError
from dripmail.providers.base import Provider

# DRIPMAIL_PROVIDER value -> module in this package (imported only when chosen).
REGISTRY: dict[str, str] = {
    "postmark": "postmark",
    "sendgrid": "sendgrid",
    "mailgun": "mailgun",
    "resend": "resend",
    "smtp": "smtp",
}


def get_provider(settings: Settings, project: Project) -> Provider:
    """The provider named by ``DRIPMAIL_PROVIDER``, built from its settings."""
    name = settings.provider
    if name == "outbox":
        from dripmail.providers.outbox import OutboxProvider

        return OutboxProvider(project.resolve(settings.outbox_dir))
    if name not in REGISTRY:
        choices = ", ".join(["outbox", *REGISTRY])
        raise ConfigError(f"DRIPMAIL_PROVIDER={name!r} is not one of {choices}")
    module = import_module(f"dripmail.providers.{REGISTRY[name]}")
    return module.from_settings(settings)
