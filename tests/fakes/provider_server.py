"""A real loopback HTTP server that speaks Postmark, SendGrid, Mailgun and Resend.

    with FakeProviders() as fake:
        provider = PostmarkProvider(fake.POSTMARK_TOKEN, base=fake.base("postmark"))
        ...
        fake.accepted("postmark")     # what it accepted, one record per recipient message

Each provider lives under its own prefix (``<url>/postmark``, ``<url>/sendgrid``...), so the
base-URL overrides are all a client needs. Every request is checked against the provider's
published API definition (`contracts.validate`); a mismatch is answered 400 and kept in
`validation_errors` (tests assert it stays empty). Auth is checked like the provider does,
answers use each provider's documented success and error shapes, and accepted messages are
recorded after applying the provider's per-recipient substitutions (SendGrid substitutions,
Mailgun ``%recipient.x%``), so a test can compare what a recipient would get with what was
rendered.

Faults, for the next matching send requests (`script`) or at random (`chaos`): ``429``
(with ``Retry-After``), ``500``, ``503``, ``slow`` (no answer until the client gives up
or ``slow_seconds`` pass, then the connection closes),
``drop`` (close the connection without an answer); each of the last four also ``*_after``
(the provider accepted the messages first: the dangerous case). `reject(address)` makes the
provider refuse one recipient the way it does (Postmark ErrorCode 406 inside a 200, Resend
``errors[]`` in permissive mode, SendGrid/Mailgun 400 for the whole request).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes import contracts

SEND_PATHS = {
    "postmark": ("/email/batch",),
    "sendgrid": ("/v3/mail/send",),
    "mailgun": ("/messages",),
    "resend": ("/emails/batch", "/emails"),
}
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "slow",
    "drop",
    "500_after",
    "503_after",
    "slow_after",
    "drop_after",
)


@dataclass
class Accepted:
    """One message as the provider would deliver it to one recipient."""

    provider: str
    provider_id: str
    key: str | None
    to: str
    sender: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    reply_to: str | None
    tags: list[str]
    send_at: datetime | None = None
    stream: str | None = None
    batch_id: str | None = None
    status: str = "sent"  # or "scheduled", "cancelled"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """What to do to one request."""

    kind: str
    retry_after: int = 0

    @property
    def after(self) -> bool:
        return self.kind.endswith("_after")

    @property
    def base(self) -> str:
        return self.kind.removesuffix("_after")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class FakeProviders:
    """The server, its recorded state and its fault switches (thread-safe)."""

    POSTMARK_TOKEN = "pm-test-server-token"
    SENDGRID_KEY = "SG.test-key"
    MAILGUN_KEY = "mg-test-key"
    MAILGUN_DOMAIN = "mg.studio.example.com"
    RESEND_KEY = "re_test_key"

    def __init__(self, *, validate: bool = True, slow_seconds: float = 0.5) -> None:
        self.validate = validate
        self.slow_seconds = slow_seconds
        self.lock = threading.RLock()
        self.records: dict[str, list[Accepted]] = {p: [] for p in SEND_PATHS}
        # Postmark's messages search by one metadata value: (key, value) -> records in order.
        # A resumed broadcast looks up each copy it had in flight (a thousand searches), and
        # scanning every record for each made the fake the test's main cost.
        self._postmark_metadata: dict[tuple[str, str], list[Accepted]] = {}
        self.validation_errors: list[str] = []
        self.requests: list[tuple[str, str, str]] = []  # (provider, method, path)
        self.send_requests: dict[str, int] = {p: 0 for p in SEND_PATHS}
        self.faults_done: list[tuple[str, str]] = []
        self._script: dict[str, list[Fault | None]] = {p: [] for p in SEND_PATHS}
        self._chaos: dict[str, tuple[float, tuple[str, ...], random.Random]] = {}
        self._rejected: dict[str, str] = {}
        self._refuse_all: dict[str, str] = {}
        self._idempotency: dict[str, tuple[str, Reply | None]] = {}
        self._sendgrid_batches: dict[str, str] = {}  # batch_id -> status ("", "cancel")
        self.now = lambda: datetime.now(UTC)
        self.rate_limit_remaining: int | None = None  # set to 0 to announce an empty budget
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # (method, path with query, headers, body) of every request, when a benchmark asks
        # (set to a list): it replays them on a bare client to measure the fake's ceiling.
        self.raw_requests: list[tuple[str, str, dict[str, str], bytes]] | None = None
        # `on_request`: [provider, path or None, requests still to come, action].
        self._triggers: list[list[Any]] = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeProviders:
        """Listen on 127.0.0.1:<free port> in a daemon thread."""
        if self.validate:
            contracts.preload()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base(self, provider: str) -> str:
        """The base URL a client uses for `provider`."""
        return f"{self.url}/{provider}"

    # -- switches ---------------------------------------------------------------------------
    def script(self, provider: str, faults: Iterable[str | Fault | None]) -> None:
        """The next send requests to `provider` get these faults in order (None = normal)."""
        with self.lock:
            self._script[provider].extend(Fault(f) if isinstance(f, str) else f for f in faults)

    def chaos(
        self, provider: str, rate: float, kinds: Iterable[str] = FAULT_KINDS, seed: int = 1
    ) -> None:
        """Each send request to `provider` fails with probability `rate`, kind at random."""
        with self.lock:
            self._chaos[provider] = (rate, tuple(kinds), random.Random(seed))

    def calm(self) -> None:
        """No more faults."""
        with self.lock:
            self._chaos.clear()
            for queue in self._script.values():
                queue.clear()

    def refuse_all(self, provider: str, reason: str | None) -> None:
        """Refuse every message sent to `provider` with the same permanent `reason` (None: stop).

        Postmark answers each message of a batch with ErrorCode 300 (invalid email request),
        as it does for a From address whose sender signature is not confirmed.
        """
        with self.lock:
            if reason is None:
                self._refuse_all.pop(provider, None)
            else:
                self._refuse_all[provider] = reason

    def on_request(
        self, provider: str, count: int, action: Callable[[], None], path: str | None = None
    ) -> None:
        """Call `action` once, when the `count`-th request to `provider` (to `path` only, if
        given) from now on arrives, before it is answered: a test's Ctrl-C while a hand-over
        is under way. That request is on the wire, so the client gets its answer as usual;
        the client can see what `action` did before it sends any later request."""
        with self.lock:
            self._triggers.append([provider, path, count, action])

    def reject(self, address: str, reason: str = "inactive") -> None:
        """Make every provider refuse this recipient."""
        with self.lock:
            self._rejected[address.lower()] = reason

    # -- what happened ----------------------------------------------------------------------
    def accepted(self, provider: str, status: str | None = None) -> list[Accepted]:
        """Recorded messages (optionally only those in one status)."""
        with self.lock:
            return [r for r in self.records[provider] if status is None or r.status == status]

    def count(self, provider: str) -> int:
        """How many messages are recorded: `len(accepted(provider))` without copying them (a
        test polling for progress would otherwise spend its CPU on the copies)."""
        with self.lock:
            return len(self.records[provider])

    def keys(self, provider: str) -> list[str | None]:
        """Delivery keys of every accepted message (duplicates show up twice)."""
        return [r.key for r in self.accepted(provider)]

    # -- plumbing ---------------------------------------------------------------------------
    def _fault_for(self, provider: str) -> Fault | None:
        with self.lock:
            self.send_requests[provider] += 1
            if self._script[provider]:
                fault = self._script[provider].pop(0)
            elif provider in self._chaos:
                rate, kinds, rng = self._chaos[provider]
                fault = Fault(rng.choice(kinds)) if rng.random() < rate else None
            else:
                fault = None
            if fault is not None:
                self.faults_done.append((provider, fault.kind))
            return fault

    def _record(self, items: list[Accepted]) -> None:
        with self.lock:
            if not items:
                return
            self.records[items[0].provider].extend(items)
            if items[0].provider == "postmark":
                for item in items:
                    for key, value in item.extra["metadata"].items():
                        if isinstance(value, str):
                            self._postmark_metadata.setdefault((key, value), []).append(item)

    def _rate_headers(self, provider: str) -> dict[str, str]:
        remaining = self.rate_limit_remaining
        if provider == "sendgrid":
            reset = int(time.time()) + 1
            return {
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": str(599 if remaining is None else remaining),
                "X-RateLimit-Reset": str(reset),
            }
        if provider == "resend":
            return {
                "ratelimit-limit": "2",
                "ratelimit-remaining": str(1 if remaining is None else remaining),
                "ratelimit-reset": "1",
            }
        return {}

    def handle(self, h: _Handler) -> None:
        """Serve one request (called on the server's thread for the connection)."""
        parts = urlsplit(h.path)
        segments = parts.path.split("/", 2)
        provider = segments[1] if len(segments) > 1 else ""
        path = "/" + (segments[2] if len(segments) > 2 else "")
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k: v for k, v in h.headers.items()}
        query = parse_qs(parts.query, keep_blank_values=True)
        due: list[Callable[[], None]] = []
        with self.lock:
            self.requests.append((provider, h.command, path))
            if self.raw_requests is not None:
                self.raw_requests.append((h.command, h.path, headers, body))
            for trigger in self._triggers:
                if trigger[0] == provider and trigger[1] in (None, path) and trigger[2] > 0:
                    trigger[2] -= 1
                    if trigger[2] == 0:
                        due.append(trigger[3])
        for action in due:
            action()
        if provider not in SEND_PATHS:
            return h.reply(Reply(404, b"no such provider"))
        auth = getattr(self, f"_auth_{provider}")(headers)
        if auth is not None:
            return h.reply(auth)
        form = _multipart(headers, body) if provider == "mailgun" else None
        if self.validate:
            problem = contracts.validate(provider, h.command, path, query, headers, body, form)
            if problem:
                with self.lock:
                    self.validation_errors.append(f"{provider} {h.command} {path}: {problem}")
                return h.reply(_json(400, {"message": f"contract: {problem}"}))
        is_send = h.command == "POST" and (
            path.endswith(SEND_PATHS[provider])
            if provider != "resend"
            else path in ("/emails", "/emails/batch")
        )
        fault = self._fault_for(provider) if is_send else None
        if fault is not None and not fault.after:
            return self._act(h, fault, provider)
        handler = getattr(self, f"_{provider}")
        reply = handler(h.command, path, query, headers, body, form)
        reply.headers.update(self._rate_headers(provider))
        if fault is not None:
            return self._act(h, fault, provider, reply)
        return h.reply(reply)

    def _act(self, h: _Handler, fault: Fault, provider: str, reply: Reply | None = None) -> None:
        kind = fault.base
        if kind == "429":
            shape = {
                "postmark": {"ErrorCode": 429, "Message": "Rate limit exceeded"},
                "sendgrid": {"errors": [{"field": None, "message": "too many requests"}]},
                "mailgun": {"message": "Too many requests, try again in 0 seconds"},
                "resend": {
                    "statusCode": 429,
                    "message": "Too many requests. You can only make 2 requests per second.",
                    "name": "rate_limit_exceeded",
                },
            }[provider]
            return h.reply(_json(429, shape, {"Retry-After": str(fault.retry_after)}))
        if kind in ("500", "503"):
            return h.reply(_json(int(kind), {"message": "internal error"}))
        if kind == "slow":
            # No answer ever: the request is held until the client gives up (its timeout fires
            # and it hangs up) or `slow_seconds` pass, then the connection closes unanswered.
            # Either way the client is left not knowing, whatever the machine's speed: fault
            # tests give the client a generous timeout and never race its clock (the timeout
            # itself is tested against a hold longer than it, in test_http.py).
            h.wait_for_hang_up(self.slow_seconds)
            h.drop()
            return None
        if kind == "drop":
            h.drop()
            return None
        raise ValueError(f"unknown fault {fault.kind}")

    # -- auth -------------------------------------------------------------------------------
    def _auth_postmark(self, headers: dict[str, str]) -> Reply | None:
        if _header(headers, "X-Postmark-Server-Token") != self.POSTMARK_TOKEN:
            return _json(
                401,
                {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."},
            )
        return None

    def _auth_sendgrid(self, headers: dict[str, str]) -> Reply | None:
        if _header(headers, "Authorization") != f"Bearer {self.SENDGRID_KEY}":
            return _json(
                401,
                {
                    "errors": [
                        {
                            "field": None,
                            "message": "The provided authorization grant is invalid, "
                            "expired, or revoked",
                        }
                    ]
                },
            )
        return None

    def _auth_mailgun(self, headers: dict[str, str]) -> Reply | None:
        expected = "Basic " + base64.b64encode(f"api:{self.MAILGUN_KEY}".encode()).decode()
        if _header(headers, "Authorization") != expected:
            return Reply(401, b"Forbidden", {"Content-Type": "text/plain"})
        return None

    def _auth_resend(self, headers: dict[str, str]) -> Reply | None:
        value = _header(headers, "Authorization")
        if not value:
            return _json(
                401,
                {
                    "statusCode": 401,
                    "message": "Missing API key in the authorization header.",
                    "name": "missing_api_key",
                },
            )
        if value != f"Bearer {self.RESEND_KEY}":
            return _json(
                403, {"statusCode": 403, "message": "API key is invalid", "name": "invalid_api_key"}
            )
        return None

    # -- Postmark ---------------------------------------------------------------------------
    def _postmark(self, method, path, query, headers, body, form) -> Reply:
        if method == "GET" and path == "/server":
            return _json(200, {"ID": 1, "Name": "dripmail test server", "Color": "blue"})
        if method == "GET" and path == "/messages/outbound":
            return self._postmark_search(query)
        if method == "POST" and path == "/email/batch":
            items = json.loads(body)
            if len(items) > 500:
                return _json(422, {"ErrorCode": 410, "Message": "Too many batch messages."})
            answers, accepted = [], []
            refusal = self._refuse_all.get("postmark")
            for item in items:
                to = _address(item.get("To", ""))
                if refusal is not None:
                    answers.append({"ErrorCode": 300, "Message": refusal, "To": item.get("To")})
                    continue
                if to.lower() in self._rejected:
                    answers.append(
                        {
                            "ErrorCode": 406,
                            "Message": "You tried to send to recipient(s) that have been "
                            "marked as inactive.",
                            "To": item.get("To"),
                        }
                    )
                    continue
                message_id = str(uuid.uuid4())
                accepted.append(
                    Accepted(
                        "postmark",
                        message_id,
                        (item.get("Metadata") or {}).get("dripmail_key"),
                        to,
                        item.get("From", ""),
                        item.get("Subject", ""),
                        item.get("HtmlBody", ""),
                        item.get("TextBody", ""),
                        {h["Name"]: h["Value"] for h in item.get("Headers") or []},
                        item.get("ReplyTo"),
                        [item["Tag"]] if item.get("Tag") else [],
                        stream=item.get("MessageStream", "outbound"),
                        extra={"metadata": item.get("Metadata") or {}},
                    )
                )
                answers.append(
                    {
                        "ErrorCode": 0,
                        "Message": "OK",
                        "MessageID": message_id,
                        "SubmittedAt": _rfc3339(self.now()),
                        "To": item.get("To"),
                    }
                )
            self._record(accepted)
            return _json(200, answers)
        return _json(404, {"ErrorCode": 404, "Message": "not found"})

    def _postmark_search(self, query: dict[str, list[str]]) -> Reply:
        count = int(query.get("count", ["0"])[0])
        offset = int(query.get("offset", ["0"])[0])
        if count > 500 or count + offset > 10000:
            return _json(422, {"ErrorCode": 300, "Message": "count too large"})
        filters = {
            k[len("metadata_") :]: v[0] for k, v in query.items() if k.startswith("metadata_")
        }
        if len(filters) > 1:
            return _json(422, {"ErrorCode": 300, "Message": "one metadata filter per search"})
        recipient = query.get("recipient", [None])[0]
        with self.lock:
            if filters:
                ((key, value),) = filters.items()
                candidates = list(self._postmark_metadata.get((key, value), ()))
            else:
                candidates = list(self.records["postmark"])
        found = [r for r in candidates if recipient is None or r.to.lower() == recipient.lower()]
        page = found[offset : offset + count]
        return _json(
            200,
            {
                "TotalCount": len(found),
                "Messages": [
                    {
                        "MessageID": r.provider_id,
                        "To": [{"Email": r.to, "Name": None}],
                        "Subject": r.subject,
                        "Tag": r.tags[0] if r.tags else "",
                        "Metadata": r.extra["metadata"],
                        "MessageStream": r.stream,
                        "Status": "Sent",
                    }
                    for r in page
                ],
            },
        )

    # -- Resend -----------------------------------------------------------------------------
    def _resend(self, method, path, query, headers, body, form) -> Reply:
        if method == "GET" and path == "/domains":
            return _json(
                200,
                {
                    "object": "list",
                    "data": [{"id": "d1", "name": "studio.example.com", "status": "verified"}],
                },
            )
        match = re.fullmatch(r"/emails/([^/]+)/cancel", path)
        if method == "POST" and match:
            return self._resend_cancel(match.group(1))
        if method == "POST" and path in ("/emails", "/emails/batch"):
            key = _header(headers, "Idempotency-Key")
            digest = hashlib.sha256(path.encode() + b"\0" + body).hexdigest()
            if key:
                with self.lock:
                    seen = self._idempotency.get(key)
                    if seen is not None:
                        if seen[0] != digest:
                            return _json(
                                409,
                                {
                                    "statusCode": 409,
                                    "message": "This idempotency key has already been used on a "
                                    "request that had a different payload.",
                                    "name": "invalid_idempotent_request",
                                },
                            )
                        if seen[1] is None:
                            return _json(
                                409,
                                {
                                    "statusCode": 409,
                                    "message": "Same idempotency key request is in progress.",
                                    "name": "concurrent_idempotent_requests",
                                },
                            )
                        return seen[1]
                    self._idempotency[key] = (digest, None)
            try:
                reply = self._resend_send(path, headers, json.loads(body))
            except Exception:
                with self.lock:
                    self._idempotency.pop(key, None)
                raise
            with self.lock:
                if key:
                    if reply.status == 200:
                        self._idempotency[key] = (digest, reply)
                    else:
                        self._idempotency.pop(key, None)
            return reply
        return _json(404, {"statusCode": 404, "message": "Not found", "name": "not_found"})

    def _resend_one(self, item: dict) -> tuple[Accepted | None, str | None]:
        to = item.get("to")
        targets = to if isinstance(to, list) else [to]
        if len(targets) != 1:
            return None, "dripmail sends one recipient per email"
        address = _address(targets[0])
        if address.lower() in self._rejected:
            return None, f"Invalid `to` field: {address} is suppressed"
        when = None
        if item.get("scheduled_at"):
            try:
                when = datetime.fromisoformat(item["scheduled_at"].replace("Z", "+00:00"))
            except ValueError:
                return None, "scheduled_at is not an ISO 8601 date"
            if when > self.now() + timedelta(days=30):
                return None, "scheduled_at must be within 30 days"
        tags = {t["name"]: t["value"] for t in item.get("tags") or []}
        for name, value in tags.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", name + value if value else name):
                return None, f"tag {name!r} has characters Resend does not allow"
        reply_to = item.get("reply_to")
        record = Accepted(
            "resend",
            str(uuid.uuid4()),
            tags.get("dripmail_key"),
            address,
            item.get("from", ""),
            item.get("subject", ""),
            item.get("html", ""),
            item.get("text", ""),
            dict(item.get("headers") or {}),
            reply_to[0] if isinstance(reply_to, list) and reply_to else reply_to,
            [f"{k}:{v}" for k, v in tags.items()],
            send_at=when,
            status="scheduled" if when else "sent",
        )
        return record, None

    def _resend_send(self, path: str, headers: dict[str, str], payload: Any) -> Reply:
        if path == "/emails":
            record, problem = self._resend_one(payload)
            if problem:
                return _json(
                    422, {"statusCode": 422, "message": problem, "name": "validation_error"}
                )
            assert record is not None
            self._record([record])
            return _json(200, {"id": record.provider_id})
        if len(payload) > 100:
            return _json(
                422,
                {
                    "statusCode": 422,
                    "message": "Too many emails in batch (max 100)",
                    "name": "validation_error",
                },
            )
        permissive = _header(headers, "x-batch-validation") == "permissive"
        records, errors = [], []
        for index, item in enumerate(payload):
            if item.get("scheduled_at"):
                problem = "scheduled_at is not supported in batch emails"
            else:
                record, problem = self._resend_one(item)
            if problem:
                if not permissive:
                    return _json(
                        422, {"statusCode": 422, "message": problem, "name": "validation_error"}
                    )
                errors.append({"index": index, "message": problem})
            else:
                records.append(record)
        self._record(records)
        answer: dict[str, Any] = {"data": [{"id": r.provider_id} for r in records]}
        if permissive:
            answer["errors"] = errors
        return _json(200, answer)

    def _resend_cancel(self, email_id: str) -> Reply:
        with self.lock:
            for record in self.records["resend"]:
                if record.provider_id == email_id:
                    if record.status != "scheduled" or (
                        record.send_at and record.send_at <= self.now()
                    ):
                        return _json(
                            422,
                            {
                                "statusCode": 422,
                                "message": "Email cannot be canceled",
                                "name": "validation_error",
                            },
                        )
                    record.status = "cancelled"
                    return _json(200, {"object": "email", "id": email_id})
        return _json(404, {"statusCode": 404, "message": "Email not found", "name": "not_found"})

    # -- SendGrid ---------------------------------------------------------------------------
    def _sendgrid(self, method, path, query, headers, body, form) -> Reply:
        if method == "GET" and path == "/v3/scopes":
            return _json(
                200, {"scopes": ["mail.send", "mail.batch.create", "user.scheduled_sends.create"]}
            )
        if method == "POST" and path == "/v3/mail/batch":
            batch_id = uuid.uuid4().hex
            with self.lock:
                self._sendgrid_batches[batch_id] = ""
            return _json(201, {"batch_id": batch_id})
        if method == "POST" and path == "/v3/user/scheduled_sends":
            payload = json.loads(body)
            batch_id = payload.get("batch_id")
            with self.lock:
                if batch_id not in self._sendgrid_batches:
                    return _json(
                        400, {"errors": [{"field": "batch_id", "message": "invalid batch id"}]}
                    )
                self._sendgrid_batches[batch_id] = payload.get("status", "")
                if payload.get("status") == "cancel":
                    for record in self.records["sendgrid"]:
                        if record.batch_id == batch_id and record.status == "scheduled":
                            record.status = "cancelled"
            return _json(201, {"batch_id": batch_id, "status": payload.get("status")})
        if method == "POST" and path == "/v3/mail/send":
            return self._sendgrid_send(json.loads(body))
        return _json(404, {"errors": [{"field": None, "message": "not found"}]})

    def _sendgrid_send(self, payload: dict) -> Reply:
        def error(message: str, field_name: str | None = None) -> Reply:
            return _json(400, {"errors": [{"message": message, "field": field_name, "help": None}]})

        personalizations = payload.get("personalizations") or []
        if len(personalizations) > 1000:
            return error("too many personalizations", "personalizations")
        if sum(len(p.get("to") or []) for p in personalizations) > 1000:
            return error("too many recipients", "personalizations")
        batch_id = payload.get("batch_id")
        if batch_id and batch_id not in self._sendgrid_batches:
            return error("invalid batch id", "batch_id")
        contents = {c["type"]: c["value"] for c in payload.get("content") or []}
        if set(contents) != {"text/plain", "text/html"}:
            return error("dripmail always sends text/plain and text/html", "content")
        records = []
        now = self.now()
        for i, p in enumerate(personalizations):
            to = p["to"]
            if len(to) != 1:
                return error(
                    "one recipient per personalization expected", f"personalizations.{i}.to"
                )
            address = to[0]["email"]
            if address.lower() in self._rejected:
                return error(
                    "Does not contain a valid address.", f"personalizations.{i}.to.0.email"
                )
            send_at = p.get("send_at", payload.get("send_at"))
            when = datetime.fromtimestamp(send_at, UTC) if send_at else None
            if when is not None and when > now + timedelta(hours=72):
                return error(
                    "send_at can not be more than 72 hours in the future",
                    f"personalizations.{i}.send_at",
                )
            subs = p.get("substitutions") or {}
            if len(json.dumps(subs).encode()) > 10000:
                return error(
                    "substitutions are limited to 10000 bytes",
                    f"personalizations.{i}.substitutions",
                )
            custom_args = p.get("custom_args") or {}
            if not all(isinstance(v, str) for v in custom_args.values()):
                return error(
                    "custom_args values must be strings", f"personalizations.{i}.custom_args"
                )

            def apply(text: str, subs: dict = subs) -> str:
                for tag, value in subs.items():
                    text = text.replace(tag, value)
                return text

            reply_to = payload.get("reply_to")
            records.append(
                Accepted(
                    "sendgrid",
                    "",
                    custom_args.get("dripmail_key"),
                    address,
                    _format(payload["from"]),
                    apply(p.get("subject", payload.get("subject", ""))),
                    apply(contents["text/html"]),
                    apply(contents["text/plain"]),
                    {**(payload.get("headers") or {}), **(p.get("headers") or {})},
                    _format(reply_to) if reply_to else None,
                    list(payload.get("categories") or []),
                    send_at=when,
                    batch_id=batch_id,
                    status="scheduled" if when and when > now else "sent",
                    extra={"custom_args": custom_args},
                )
            )
        message_id = uuid.uuid4().hex[:22]
        for n, record in enumerate(records):
            record.provider_id = f"{message_id}.{n}"
        self._record(records)
        return Reply(202, b"", {"X-Message-Id": message_id})

    # -- Mailgun ----------------------------------------------------------------------------
    def _mailgun(self, method, path, query, headers, body, form) -> Reply:
        parts = path.strip("/").split("/")
        if method == "GET" and parts[:2] == ["v3", "domains"] and len(parts) == 3:
            if parts[2] != self.MAILGUN_DOMAIN:
                return _json(404, {"message": "Domain not found"})
            return _json(200, {"domain": {"name": self.MAILGUN_DOMAIN, "state": "active"}})
        if method == "POST" and len(parts) == 3 and parts[2] == "messages":
            if parts[1] != self.MAILGUN_DOMAIN:
                return _json(404, {"message": f"Domain not found: {parts[1]}"})
            return self._mailgun_send(form or {})
        return _json(404, {"message": "not found"})

    def _mailgun_send(self, form: dict[str, list[str]]) -> Reply:
        def bad(message: str) -> Reply:
            return _json(400, {"message": message})

        recipients = form.get("to", [])
        if len(recipients) > 1000:
            return bad("Too many recipients")
        variables = json.loads(form.get("recipient-variables", ["{}"])[0])
        if len(recipients) > 1 and not variables:
            return bad("batch sending without recipient-variables shows every address")
        when = None
        if "o:deliverytime" in form:
            try:
                when = parsedate_to_datetime(form["o:deliverytime"][0])
            except (TypeError, ValueError):
                return bad("o:deliverytime is not an RFC 2822 date")
            if when > self.now() + timedelta(days=3):
                return bad("o:deliverytime can be at most 3 days in the future")
        records = []
        message_id = f"<{uuid.uuid4().hex}@{self.MAILGUN_DOMAIN}>"
        for recipient in recipients:
            address = _address(recipient)
            if address.lower() in self._rejected:
                return bad("'to' parameter is not a valid address. please check documentation")
            own = variables.get(address, {})

            def apply(text: str, own: dict = own) -> str:
                return re.sub(
                    r"%recipient\.([A-Za-z0-9_-]+)%",
                    lambda m: str(own.get(m.group(1), m.group(0))),
                    text,
                )

            user_vars = {k[2:]: apply(v[-1]) for k, v in form.items() if k.startswith("v:")}
            records.append(
                Accepted(
                    "mailgun",
                    message_id,
                    user_vars.get("dripmail_key"),
                    address,
                    form["from"][-1],
                    apply(form.get("subject", [""])[-1]),
                    apply(form.get("html", [""])[-1]),
                    apply(form.get("text", [""])[-1]),
                    {k[2:]: apply(v[-1]) for k, v in form.items() if k.startswith("h:")},
                    None,
                    list(form.get("o:tag", [])),
                    send_at=when,
                    status="scheduled" if when and when > self.now() else "sent",
                    extra={"variables": user_vars},
                )
            )
        for record in records:
            record.reply_to = record.headers.get("Reply-To")
        self._record(records)
        return _json(200, {"id": message_id, "message": "Queued. Thank you."})


def _header(headers: dict[str, str], name: str) -> str:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return ""


def _address(value: str) -> str:
    match = re.search(r"<([^>]+)>\s*$", value or "")
    return (match.group(1) if match else (value or "")).strip()


def _format(mailbox: dict) -> str:
    if mailbox.get("name"):
        return f'"{mailbox["name"]}" <{mailbox["email"]}>'
    return mailbox["email"]


def _multipart(headers: dict[str, str], body: bytes) -> dict[str, list[str]]:
    """Parse multipart/form-data (what Mailgun receives) into name -> values."""
    from email.parser import BytesParser
    from email.policy import HTTP

    ctype = _header(headers, "Content-Type")
    if not ctype.startswith("multipart/form-data"):
        return {}
    parsed = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, list[str]] = {}
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        out.setdefault(str(name), []).append(payload.decode(part.get_content_charset() or "utf-8"))
    return out


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: eight pooled connections opened at once
    # overflowed it, the kernel dropped the extra SYNs and the client resent them a second
    # later (a bimodal 1 s stall in benchmarks and tests). A real provider's backlog is large.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
    # Headers and body go out as separate writes; without this, Nagle + delayed ACK add
    # ~40 ms to every answer on loopback and any one-request-per-message loop looks slow.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        # Headers and body in one write: two small writes meet the client's delayed ACK
        # (40 ms per answer), which would measure the fake, not the client.
        self._headers_buffer.append(b"\r\n" + reply.body)  # type: ignore[attr-defined]
        self.flush_headers()

    def wait_for_hang_up(self, at_most: float) -> None:
        """Block until the client closes the connection (or `at_most` seconds pass)."""
        self.connection.settimeout(at_most)
        with contextlib.suppress(OSError):  # a timeout or a reset: either way, done waiting
            while self.connection.recv(65536):
                pass
        self.close_connection = True

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        try:
            self.server.fake.handle(self)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve
