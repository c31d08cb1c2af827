"""The base of the HTTP providers: constructor, `check`, `aclose` and grouping, written once.

A provider module subclasses `HttpProvider` and fills in hooks, as django-anymail's
`AnymailRequestsBackend` does: build the payload, parse the answer, map errors (its `_send`),
`is_auth_error` (which answers mean "credential refused"), `CHECK_PATH` + `describe_account`
(the harmless call behind `providers check`) and, where it differs, `check_special`; and
`prepare_request`, the CPU work of a batch's request that `prepare_batch` does ahead (see
`providers.prepared`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import httpx

from dripmail.message import Message
from dripmail.providers.base import BaseProvider
from dripmail.providers.batching import Group, group_messages
from dripmail.providers.common import Clock, check_failed, retry_policy, utc_now
from dripmail.providers.http import Answer, HttpClient, Limits, RetryPolicy, Sent
from dripmail.providers.prepared import Prepared


class HttpProvider(BaseProvider):
    """One provider's HTTP API behind the shared client (pooling, pacing, retries)."""

    # The environment variable holding the credential, named in every auth error.
    VARIABLE: ClassVar[str]
    DEFAULT_LIMITS: ClassVar[Limits]
    # A GET that proves the credential without sending anything.
    CHECK_PATH: ClassVar[str]

    def __init__(
        self,
        base: str,
        *,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.http = HttpClient(
            self.name,
            self.VARIABLE,
            base,
            headers=headers,
            auth=auth,
            limits=limits or self.DEFAULT_LIMITS,
            retry=retry or retry_policy(),
            is_auth_error=self.is_auth_error,
        )
        self.clock = clock
        self._prepared: Prepared[Any] = Prepared()

    def stop_on(self, stop: threading.Event) -> None:
        """See `BaseProvider.stop_on`: the shared client checks `stop` before each request."""
        self.http.stop = stop

    def prepare_batch(self, messages: Sequence[Message], batch_key: str) -> None:
        """Build the batch's request now (`prepare_request`), so that `send_batch` with the
        same messages and key only sends it (`take_prepared` in the module's `_send`)."""
        work = self.prepare_request(messages)
        if work is not None:
            self._prepared.put(batch_key, messages, work)

    def prepare_request(self, messages: Sequence[Message]) -> Any | None:
        """The hook: the request work for a batch sent now as it is (payloads, grouping,
        encoded body), or None when it can only be done at send time (a message scheduled:
        whether it is due then depends on the clock). Pure: no I/O, any thread."""
        return None

    def take_prepared(self, messages: Sequence[Message], batch_key: str | None) -> Any | None:
        """What `prepare_request` made for exactly these messages under this key, or None."""
        return self._prepared.take(messages, batch_key)

    @staticmethod
    def is_auth_error(response: httpx.Response) -> bool:
        """Whether an answer means the credential was refused (default: 401 and 403)."""
        return response.status_code in (401, 403)

    def check_path(self) -> str:
        """The path of the check call (a hook for paths that hold a setting)."""
        return self.CHECK_PATH

    def check_special(self, answer: Answer) -> str | None:
        """A hook for answers to the check call that mean something besides failure."""
        return None

    def describe_account(self, body: dict[str, Any]) -> str:
        """One line about the account, from the check call's JSON body."""
        raise NotImplementedError

    async def check(self) -> str:
        """``GET CHECK_PATH``: proves the credential; `ProviderError` when no usable answer."""
        answer = await self.http.call("GET", self.check_path(), idempotent=True)
        special = self.check_special(answer)
        if special is not None:
            return special
        body = answer.json()
        if answer.sent is not Sent.ANSWERED or answer.status != 200 or not isinstance(body, dict):
            raise check_failed(self.name, answer)
        return self.describe_account(body)

    async def aclose(self) -> None:
        """Release pooled connections."""
        await self.http.aclose()

    @staticmethod
    def grouped(
        messages: Sequence[Message],
        indexes: Sequence[int],
        parts_of: Callable[[Message], dict[str, str]],
        shared_of: Callable[[Message], tuple[Any, ...]],
        placeholder: Callable[[str], str],
        max_size: int,
    ) -> list[Group]:
        """`group_messages` over ``messages[i] for i in indexes``, members numbered by their
        position in `messages` (the batch), so answers go back to the right message."""
        groups = group_messages(
            [messages[i] for i in indexes], parts_of, shared_of, placeholder, max_size
        )
        for group in groups:
            for member in group.members:
                member.index = indexes[member.index]
        return groups
