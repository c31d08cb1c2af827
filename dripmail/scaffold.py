"""`init`: a new course project from the sample course shipped with dripmail."""

from __future__ import annotations

import shutil
from pathlib import Path

from dripmail.errors import InputError
from dripmail.output_files import make_folder

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


# What a course repo must never commit: secrets, the database (subscribers' personal data),
# mail written locally, build output, the virtualenv, and the demo's own folder.
GITIGNORE = """\
# Written by `dripmail init`.
.env
*.db
*.db-journal
*.db-wal
*.db-shm
*.db.lock
outbox/
build/
.venv/
demo/
"""

# `dripmail check` on every change to the course, with the pre-commit framework
# (https://pre-commit.com): `pip install pre-commit && pre-commit install` in the repo.
# `language: system` runs the dripmail already installed where git runs.
PRE_COMMIT_CONFIG = """\
# Written by `dripmail init`: run `dripmail check` before every commit that touches the course.
# Enable once per clone: pip install pre-commit && pre-commit install
repos:
  - repo: local
    hooks:
      - id: dripmail-check
        name: dripmail check (course, lessons, templates, newsletters)
        entry: dripmail check
        language: system
        pass_filenames: false
        files: ^(course|emails|newsletters)/
"""

CI_WORKFLOW = """\
# Written by `dripmail init`: every pull request and push that touches the course runs
# `dripmail check`; a red check means a lesson, template or newsletter has a problem, named
# as file:line in the log.
name: course check
on:
  pull_request:
    paths: ["course/**", "emails/**", "newsletters/**"]
  push:
    branches: [main]
    paths: ["course/**", "emails/**", "newsletters/**"]
env:
  # Where the studio installs dripmail from: the version this project was made with, or e.g.
  # git+https://example.com/you/dripmail@v{version} for a private copy.
  DRIPMAIL: "dripmail=={version}"
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - run: python -m pip install "$DRIPMAIL"
      - run: dripmail check
"""


def repo_files() -> dict[str, str]:
    """The repo files `init` writes besides the course: path (relative) -> text."""
    from dripmail import __version__

    return {
        ".gitignore": GITIGNORE,
        ".env.example": ENV_EXAMPLE,
        ".pre-commit-config.yaml": PRE_COMMIT_CONFIG,
        ".github/workflows/course-check.yml": CI_WORKFLOW.replace("{version}", __version__),
    }


def sample_root() -> Path:
    """Where the sample course lives: inside the installed package, or the source checkout."""
    packaged = Path(__file__).resolve().parent / "sample"
    if (packaged / "course" / "course.toml").is_file():
        return packaged
    return Path(__file__).resolve().parents[1]


def init_project(dest: Path) -> list[Path]:
    """Copy course/, emails/ and newsletters/, write the repo files; never overwrites.

    Repo files (`repo_files`: .gitignore, .env.example, a pre-commit config and a CI workflow
    running `dripmail check`) already present are left as they are. Returns what it created.
    """
    source = sample_root()
    make_folder(dest, f"init {dest}", "give a new folder's name")
    taken = [dest / part for part in PARTS if (dest / part).exists()]
    if taken:
        names = ", ".join(str(p) for p in taken)
        raise InputError(f"{names} already exists: init only fills an empty folder")
    created = []
    for part in PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part)
            created.append(dest / part)
    for name, text in repo_files().items():
        path = dest / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            created.append(path)
    return created
