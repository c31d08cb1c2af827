"""Shared fixtures: real objects only."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

if sys.dont_write_bytecode and sys.pycache_prefix is None:
    # PYTHONDONTWRITEBYTECODE (set on some shared machines) would make every xdist worker
    # re-run pytest's assertion rewriting of every test module and recompile dripmail on
    # every run: over half of each worker's collection CPU. Cached in one folder beside the
    # test cache instead, never next to the sources (which is what the setting guards).
    sys.pycache_prefix = str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "pycache")
    sys.dont_write_bytecode = False
    # The same for every Python process the suite starts (the xdist workers, when this runs in
    # the controller, and each `send.py`, server and worker a test starts, about a hundred):
    # without it each one compiled dripmail's modules again, 0.27 s of a 1.9 s start.
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Property tests never race the clock: a loaded machine can stall any draw or example for
# seconds, which says nothing about the code (Hypothesis' default is a 200 ms deadline and a
# health check on slow generation).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


def _worker_schema(url: str, worker: str) -> str:
    """`url` narrowed to a schema of its own for one xdist worker, created empty.

    Workers run PostgreSQL tests at the same time; each gets the schema ``dripmail_<worker>``
    in the one database CI creates (the role owns it, so it may create schemas but perhaps
    not databases), chosen through ``search_path`` so the code under test and the worker
    processes it starts need nothing else.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"dripmail_{worker}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:
        return url  # unreachable: the PostgreSQL tests say so themselves
    finally:
        engine.dispose()
    parsed = make_url(url)
    narrowed = parsed.update_query_dict({"options": f"-csearch_path={schema}"})
    return narrowed.render_as_string(hide_password=False)


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if worker and url:
        os.environ["DRIPMAIL_TEST_DATABASE_URL"] = _worker_schema(url, worker)


@pytest.fixture
def fake_providers() -> Iterator:
    """The loopback fake of Postmark, SendGrid, Mailgun and Resend (tests/fakes/provider_server).

    A fresh server per test on 127.0.0.1:<free port>; it fails the test if any request the
    code under test made did not match the provider's published API definition.
    """
    from fakes.provider_server import FakeProviders

    with FakeProviders() as fake:
        yield fake
        assert fake.validation_errors == [], "requests broke the providers' API contracts"


# Modules whose module-scoped fixture starts a browser: each test worker that takes any of
# their tests pays that start (chromium, Playwright's driver, the rendered emails: ~8 s of
# CPU). xdist's worksteal hands each worker a contiguous share and an idle worker steals
# from the end of another's share, so these run first, where nothing is stolen: one worker
# starts the browser once instead of two or three workers each starting it for a few tests.
FIRST = ("tests/web/test_email_design.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [item for item in items if item.nodeid.startswith(FIRST)]
    if first:
        rest = [item for item in items if not item.nodeid.startswith(FIRST)]
        items[:] = first + rest
