"""Shared fixtures: real objects only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def fake_providers() -> Iterator:
    """The loopback fake of Postmark, SendGrid, Mailgun and Resend (tests/fakes/provider_server).

    A fresh server per test on 127.0.0.1:<free port>; it fails the test if any request the
    code under test made did not match the provider's published API definition.
    """
    from fakes.provider_server import FakeProviders

    with FakeProviders(slow_seconds=0.8) as fake:
        yield fake
        assert fake.validation_errors == [], "requests broke the providers' API contracts"
