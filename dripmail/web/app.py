"""`create_app`: the Starlette app behind `send.py serve` (and `send.py preview`).

Routes, each a thin shell over the library:

    GET  /                     the sign-up form on a page of its own
    POST /subscribe            form or JSON -> pending subscriber + confirmation email
    GET  /confirm/{token}      a page with one button (a GET never confirms: mail scanners)
    POST /confirm/{token}      activate, plan the week, say when lesson 1 arrives (local time)
    GET  /unsubscribe/{token}  a page with one button (a GET never unsubscribes)
    POST /unsubscribe/{token}  RFC 8058 one-click (List-Unsubscribe=One-Click) or the button
    GET  /preferences/{token}  pause/resume, newsletter, send time, time zone
    POST /preferences/{token}  save; a new time or zone re-plans the lessons left
    POST /webhooks/{provider}  postmark, sendgrid, mailgun, resend
    GET  /healthz              "ok" when the database answers
    GET  /newsletters[/{slug}] the archive of sent newsletter issues (web/archive.py)
    GET  /preview...           only when created with preview=True (never by default)
    GET  /report[.json]        the report, charts and tables (with the preview only)

Bodies are capped (16 KB; 5 MB for webhooks): 413 beyond. Every error is a short page (or
JSON for API clients and webhooks); tracebacks go to the server log, never to a visitor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dripmail.config import Project, Settings
from dripmail.errors import DripmailError, InputError, NotFoundError, TokenError
from dripmail.web import archive, links, signup, webhook_routes
from dripmail.web.context import WebContext, ctx, log
from dripmail.web.forms import wants_json

MAX_BODY = 16 * 1024
STATIC = Path(__file__).parent / "static"

_STATUS_TEXT = {
    400: ("Bad request", "The request could not be read."),
    404: ("Not found", "There is nothing at this address."),
    405: ("Not allowed", "This address does not accept that kind of request."),
    413: ("Too large", "That was more data than this page accepts."),
}
_TOKEN_HINT = {
    "confirm": "Confirmation links work for 7 days. Sign up again to get a fresh one.",
    "unsubscribe": "Use the unsubscribe link in the latest email from us, or reply to it.",
    "preferences": "Use the preferences link in the latest email from us.",
}

# Token pages must not leak their URL (a bearer secret) to other sites through the Referer.
_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; "
    "img-src 'self' https: data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; img-src * data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'self'; "
    "base-uri 'none'"
)
# The email itself, framed by the preview: no script at all, images from anywhere.
_EMAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; font-src * data:; "
    "frame-ancestors 'self'; base-uri 'none'"
)


def _redact(path: str) -> str:
    # Link tokens are bearer secrets (an unsubscribe token never expires): keep them out of logs.
    for prefix in ("/confirm/", "/unsubscribe/", "/preferences/"):
        if path.startswith(prefix):
            return prefix + "…"
    return path


# Answers that never use the course: no need to look at its files first. Webhooks come in
# bursts from the providers and only store events and stop mail: a stat walk of the content
# folders (0.3 ms, in the event loop) on each of them would be work for nothing.
_NO_CONTENT = ("/static/", "/healthz", "/webhooks/")


class EdgeMiddleware:
    """Security headers on every answer and a one-line access log with tokens redacted.

    Each request first asks the core whether the course's files changed since they were
    loaded (`Dripmail.refresh_content`, a stat per file): a running server answers with the
    files as they are now, without a restart.
    """

    def __init__(self, app: ASGIApp, context: WebContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/preview/email/"):
            csp = _EMAIL_CSP
        elif path.startswith("/preview"):
            csp = _PREVIEW_CSP
        else:
            csp = _PAGE_CSP
        started = time.perf_counter()
        status = 0
        if not path.startswith(_NO_CONTENT):
            self.context.app.refresh_content()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [*_BASE_HEADERS, (b"content-security-policy", csp.encode())]
                headers.extend(h for h in extra if h[0] not in names)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            log.info(
                "%s %s %s %.0fms",
                scope.get("method", "?"),
                _redact(path),
                status or 500,
                (time.perf_counter() - started) * 1000,
            )


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 "ok" when the database answers (for load balancers)."""
    c = ctx(request)
    await c.db(c.app.ping)
    return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})


def _routes(preview: bool) -> list:
    routes = [
        Route("/", signup.signup_page, name="home"),
        Route("/subscribe", signup.subscribe, methods=["POST"], name="subscribe"),
        Route("/confirm/{token}", links.confirm_page, name="confirm"),
        Route("/confirm/{token}", links.confirm, methods=["POST"]),
        Route("/unsubscribe/{token}", links.unsubscribe_page, name="unsubscribe"),
        Route("/unsubscribe/{token}", links.unsubscribe, methods=["POST"]),
        Route("/preferences/{token}", links.preferences_page, name="preferences"),
        Route("/preferences/{token}", links.preferences, methods=["POST"]),
        Route(
            "/webhooks/{provider}",
            webhook_routes.webhook,
            methods=["POST"],
            name="webhooks",
            max_body_size=webhook_routes.MAX_BODY,
        ),
        Route("/healthz", healthz, name="healthz"),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *archive.routes(),  # /newsletters: the sent issues, public
    ]
    if preview:
        from dripmail.web import preview as preview_module
        from dripmail.web import report_page

        routes.extend(preview_module.routes())
        routes.extend(report_page.routes())  # the studio's figures: local use, like the preview
    return routes


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/webhooks/") or wants_json(request)


def _answer(
    request: Request,
    status: int,
    title: str,
    text: str,
    hint: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    if _is_api(request):
        return JSONResponse({"ok": False, "error": text}, status_code=status, headers=headers)
    try:
        return ctx(request).message(request, status, title, text, hint=hint, headers=headers)
    except Exception:
        log.exception("error page failed")
        return PlainTextResponse(f"{title}. {text}\n", status_code=status, headers=headers)


def _handlers() -> dict:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title, text_ = _STATUS_TEXT.get(exc.status_code, ("Error", "That did not work."))
        return _answer(request, exc.status_code, title, text_, headers=dict(exc.headers or {}))

    async def token_error(request: Request, exc: Exception) -> Response:
        purpose = request.url.path.strip("/").split("/")[0]
        text_ = f"Sorry, {exc}." if str(exc) else "Sorry, this link is not valid."
        return _answer(request, 400, "This link does not work", text_, _TOKEN_HINT.get(purpose, ""))

    async def input_error(request: Request, exc: Exception) -> Response:
        hint = "Go back, correct it and try again." if request.method == "POST" else ""
        text = str(exc)
        sentence = text if text.endswith((".", "!", "?")) else f"{text}."
        return _answer(request, 400, "Please check what you sent", sentence, hint)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _answer(
            request, 404, "Not found", "This link is no longer valid.", "Nothing was changed."
        )

    async def unavailable(request: Request, exc: Exception) -> Response:
        # The operator's log gets the one-line reason; the visitor a calm page.
        log.error("%s %s: %s", request.method, _redact(request.url.path), exc)
        return _answer(
            request,
            503,
            "Temporarily unavailable",
            "Something on our side is not working right now. Please try again later.",
            headers={"Retry-After": "120"},
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        # The traceback goes to the server log (uvicorn logs the re-raised exception).
        return _answer(
            request,
            500,
            "Something went wrong",
            "Something went wrong on our side. Please try again in a little while.",
        )

    return {
        HTTPException: http_error,
        TokenError: token_error,
        InputError: input_error,
        NotFoundError: not_found,
        DripmailError: unavailable,
        Exception: server_error,
    }


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    project: Project,
    settings: Settings,
    *,
    preview: bool = False,
    clock: Callable[[], datetime] | None = None,
) -> Starlette:
    """The web app for one course project.

    `clock` gives "now" (aware UTC) for tests and simulations; the real clock by default. The
    database is opened (and migrated) here, so a wrong URL fails at start instead of on the
    first sign-up; so does a missing provider credential, unless this is a preview. A course
    whose files have errors does not stop it: unsubscribing, preferences and webhooks do not
    need the lesson text, sign-ups are stored and their confirmation emails wait for the fix
    (`Dripmail.content_problems` says what is wrong; `serve` prints it as a warning).
    """
    context = WebContext(project, settings, clock=clock or _utc_now, preview=preview)
    context.runner.engine  # noqa: B018 - open and migrate now
    if not preview:
        context.runner.provider  # noqa: B018 - ConfigError (missing credential) now
        context.runner.signer  # noqa: B018 - TokenError (empty key) now

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        preview_state = getattr(context, "preview_state", None)
        if preview_state is not None:  # the live preview's file watcher
            preview_state.close()
        if "provider" in context.runner.__dict__:  # built: release its connections
            with contextlib.suppress(Exception):
                await context.provider_call(context.runner.provider.aclose)

    app = Starlette(
        routes=_routes(preview),
        exception_handlers=_handlers(),
        lifespan=lifespan,
        max_body_size=MAX_BODY,
        middleware=[Middleware(EdgeMiddleware, context=context)],
    )
    app.state.ctx = context
    return app
