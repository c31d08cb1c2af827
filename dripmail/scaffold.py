"""`init`: a new course project from the sample course shipped with dripmail."""

from __future__ import annotations

import shutil
from pathlib import Path

from dripmail.errors import InputError

PARTS = ("course", "emails", "newsletters")
ENV_EXAMPLE = """\
# Copy to .env and fill in. Never commit .env: it holds secrets.
DRIPMAIL_DATABASE_URL=sqlite:///dripmail.db
DRIPMAIL_PROVIDER=outbox
DRIPMAIL_PUBLIC_URL=https://signup.example.com
# A long random value: python -c 'import secrets; print(secrets.token_urlsafe(32))'
DRIPMAIL_SECRET_KEY=
# Provider credentials (only the one you use):
# POSTMARK_SERVER_TOKEN=
# SENDGRID_API_KEY=
# MAILGUN_API_KEY=
# MAILGUN_DOMAIN=
# RESEND_API_KEY=
"""


def sample_root() -> Path:
    """Where the sample course lives: inside the installed package, or the source checkout."""
    packaged = Path(__file__).resolve().parent / "sample"
    if (packaged / "course" / "course.toml").is_file():
        return packaged
    return Path(__file__).resolve().parents[1]


def init_project(dest: Path) -> list[Path]:
    """Copy course/, emails/ and newsletters/ and write .env.example; never overwrites."""
    source = sample_root()
    dest.mkdir(parents=True, exist_ok=True)
    taken = [dest / part for part in PARTS if (dest / part).exists()]
    if taken:
        names = ", ".join(str(p) for p in taken)
        raise InputError(f"{names} already exists: init only fills an empty folder")
    created = []
    for part in PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part)
            created.append(dest / part)
    env = dest / ".env.example"
    if not env.exists():
        env.write_text(ENV_EXAMPLE)
        created.append(env)
    return created
