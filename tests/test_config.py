"""Settings from the environment and the project's `.env` (`dripmail.config`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dripmail.config import load_settings
from dripmail.errors import ConfigError
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

SECRET = "postmark-token-that-must-never-be-printed"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DRIPMAIL_", "POSTMARK_"))}


def test_a_line_dotenv_cannot_read_stops_every_command_naming_the_line(tmp_path: Path) -> None:
    """`DRIPMAIL_PROVIDER: postmark` (a colon for =) was skipped with a vague warning, so
    `run` sent through the local outbox and said "1 sent"."""
    root = make_project(tmp_path)
    (root / ".env").write_text(
        f"DRIPMAIL_PROVIDER: postmark\nPOSTMARK_SERVER_TOKEN={SECRET}\n", encoding="utf-8"
    )
    for args in (("run",), ("providers", "check"), ("status",)):
        out = run_cli(root, *args, env=_env())
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr == (
            f"error: {root / '.env'}:1: cannot read this line (it starts with "
            "DRIPMAIL_PROVIDER): write NAME=value, one setting per line, quoting a value "
            "that has spaces or # in it\n"
        )
    assert not (root / "outbox").exists()


@pytest.mark.parametrize(
    ("text", "line", "name"),
    [
        (
            f"DRIPMAIL_PROVIDER=postmark\n\n\nPOSTMARK_SERVER_TOKEN {SECRET}\n",
            4,
            "POSTMARK_SERVER_TOKEN",
        ),
        (f"A=1\nPOSTMARK_SERVER_TOKEN='{SECRET}\nB=2\n", 2, "POSTMARK_SERVER_TOKEN"),
    ],
)
def test_the_line_is_named_and_its_value_never_shown(
    tmp_path: Path, text: str, line: int, name: str
) -> None:
    (tmp_path / ".env").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    said = str(caught.value)
    assert f".env:{line}: cannot read this line (it starts with {name})" in said
    assert SECRET not in said


def test_a_well_formed_env_file_loads_as_before(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        '\ufeff# settings\nexport DRIPMAIL_PROVIDER=outbox\nDRIPMAIL_PUBLIC_URL="https://a.example.com"\n',
        encoding="utf-8",
    )
    settings = load_settings(tmp_path)
    assert settings.provider == "outbox" and settings.public_url == "https://a.example.com"


def test_providers_check_warns_of_a_credential_for_another_provider(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    env = {**_env(), "POSTMARK_SERVER_TOKEN": SECRET}
    out = run_cli(root, "providers", "check", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == (
        "warning: DRIPMAIL_PROVIDER is outbox, yet POSTMARK_SERVER_TOKEN (postmark) is set: "
        "set DRIPMAIL_PROVIDER to the provider you mean to send with\n"
    )
    assert out.stdout.startswith("outbox: ")


def test_a_token_pasted_at_the_start_of_a_line_is_never_shown(tmp_path: Path) -> None:
    token = "c0ffee5e-cret-4b1d-t0ken-123456789abc"
    (tmp_path / ".env").write_text(f"DRIPMAIL_PROVIDER=postmark\n{token} postmark\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / '.env'}:2: cannot read this line: write NAME=value, one setting per "
        "line, quoting a value that has spaces or # in it"
    )
