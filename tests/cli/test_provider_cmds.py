"""`send.py providers check|list` (in process) against the loopback fake provider."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("DRIPMAIL_", "POSTMARK_", "SENDGRID_", "MAILGUN_", "RESEND_")


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command in process (its settings come from `env` alone, as in a clean shell)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    return run_cli(tmp_path, *args, env={**clean, **env})


def test_check_makes_an_authenticated_call(tmp_path: Path, fake_providers) -> None:
    env = {
        "DRIPMAIL_PROVIDER": "postmark",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "DRIPMAIL_SECRET_KEY": "x" * 32,
        "POSTMARK_SERVER_TOKEN": fake_providers.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
    }
    out = _run(tmp_path, env, "providers", "check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().count("\n") == 0 and "dripmail test server" in out.stdout
    assert ("postmark", "GET", "/server") in fake_providers.requests
    assert fake_providers.accepted("postmark") == []  # harmless: nothing sent


def test_check_with_a_refused_credential_names_the_variable(tmp_path: Path, fake_providers) -> None:
    env = {
        "DRIPMAIL_PROVIDER": "resend",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "DRIPMAIL_SECRET_KEY": "x" * 32,
        "RESEND_API_KEY": "re_wrong",
        "DRIPMAIL_RESEND_BASE_URL": fake_providers.base("resend"),
    }
    out = _run(tmp_path, env, "providers", "check")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: resend rejected the credential in RESEND_API_KEY: check and set it, then re-run "
        "(HTTP 403)"
    ]


def test_missing_credential_is_one_line_before_any_request(tmp_path: Path, fake_providers) -> None:
    env = {
        "DRIPMAIL_PROVIDER": "postmark",
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
    }
    out = _run(tmp_path, env, "providers", "check")
    assert out.returncode == 1
    assert "POSTMARK_SERVER_TOKEN is not set" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert fake_providers.requests == []


def test_list_shows_capabilities(tmp_path: Path) -> None:
    out = _run(tmp_path, {}, "providers", "list")
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if "│" in line}
    assert "500" in rows["postmark"] and "none" in rows["postmark"]
    assert "100" in rows["resend"] and "30 days" in rows["resend"]
    assert "configured" in rows["outbox"]


@pytest.mark.parametrize(
    ("public_url", "key", "named"),
    [
        ("http://localhost:8000", "x" * 32, "is not https"),
        ("http://localhost:8000", "x" * 32, "localhost"),
        ("https://localhost:8000", "x" * 32, "localhost"),
        ("https://127.0.0.1/d", "x" * 32, "loopback"),
        ("https://192.168.1.20/d", "x" * 32, "private address"),
        ("https://join.studio.example.com", "a", "DRIPMAIL_SECRET_KEY is 1 bytes"),
    ],
)
def test_a_real_provider_refuses_settings_that_cannot_work(
    tmp_path: Path, fake_providers, public_url: str, key: str, named: str
) -> None:
    """`run` refuses with one line naming the variable; `providers check` reports it too."""
    make_project(tmp_path)
    env = {
        "DRIPMAIL_PROVIDER": "postmark",
        "DRIPMAIL_PUBLIC_URL": public_url,
        "DRIPMAIL_SECRET_KEY": key,
        "POSTMARK_SERVER_TOKEN": fake_providers.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
    }
    variable = "DRIPMAIL_SECRET_KEY" if key == "a" else "DRIPMAIL_PUBLIC_URL"
    run = _run(tmp_path, env, "run")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and named in lines[0], run.stderr
    if variable == "DRIPMAIL_PUBLIC_URL":  # http://localhost has two faults, one fix said once
        assert lines[0].count("reaches `serve`") == 1, run.stderr
    assert fake_providers.accepted("postmark") == []
    check = _run(tmp_path, env, "providers", "check")
    assert check.returncode == 1
    assert any(named in line and variable in line for line in check.stderr.splitlines())


def test_check_names_bad_settings_even_when_the_provider_refuses_the_token(
    tmp_path: Path, fake_providers
) -> None:
    """A refused credential (or no network) must not hide what else is wrong with the setup."""
    env = {
        "DRIPMAIL_PROVIDER": "postmark",
        "DRIPMAIL_PUBLIC_URL": "http://localhost:8000",
        "DRIPMAIL_SECRET_KEY": "a",
        "POSTMARK_SERVER_TOKEN": "not-the-token",
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
    }
    out = _run(tmp_path, env, "providers", "check")
    assert out.returncode == 1
    assert "DRIPMAIL_PUBLIC_URL" in out.stderr and "DRIPMAIL_SECRET_KEY" in out.stderr
    assert "POSTMARK_SERVER_TOKEN" in out.stderr, out.stderr


CREDENTIALS = {
    "postmark": {"POSTMARK_SERVER_TOKEN": "pm-token"},
    "sendgrid": {"SENDGRID_API_KEY": "SG.key"},
    "mailgun": {"MAILGUN_API_KEY": "key-1", "MAILGUN_DOMAIN": "mg.studio.example.com"},
    "resend": {"RESEND_API_KEY": "re_key"},
}


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_check_of_a_provider_it_cannot_reach_names_the_base_url_setting(
    tmp_path: Path, provider: str
) -> None:
    # A loopback port nobody listens on: connection refused at once, nothing leaves the host.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    variable = f"DRIPMAIL_{provider.upper()}_BASE_URL"
    env = {
        "DRIPMAIL_PROVIDER": provider,
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "DRIPMAIL_SECRET_KEY": "x" * 32,
        variable: f"http://127.0.0.1:{port}",
        **CREDENTIALS[provider],
    }
    out = _run(tmp_path, env, "providers", "check")
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert f"the provider at http://127.0.0.1:{port} could not be reached" in line
    assert variable in line and "not sent" not in line and "Traceback" not in line
