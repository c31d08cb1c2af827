"""`/newsletters`: the public archive of sent newsletters, for `send.py serve`.

    routes(project, settings)  # or routes(): then the app's `state.ctx.runner` is used

`GET /newsletters` lists the issues that finished sending, newest first; `GET
/newsletters/<slug>` shows one as readers got it (a blank reader: no name, no personal links).
Drafts, scheduled and cancelled issues are never shown. Pages are cached per file version.
"""

from __future__ import annotations

from functools import cached_property

from jinja2 import Environment, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from dripmail.errors import DripmailError, NotFoundError

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cache-Control": "public, max-age=300",
}

_PAGES = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
INDEX = _PAGES.from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Newsletter archive · {{ title }}</title>
<style>
  :root { color-scheme: light dark; }
  body { margin: 0; background: {{ brand.background }}; color: {{ brand.text }};
         font: 18px/1.55 Georgia, "Times New Roman", serif; }
  main { max-width: 36rem; margin: 0 auto; padding: 2rem 1.25rem 3rem; }
  a { color: {{ brand.primary }}; }
  .wordmark { font-weight: bold; letter-spacing: .05em; text-decoration: none; }
  .muted { color: {{ brand.muted }}; font-size: .95rem; }
  ol { list-style: none; padding: 0; } li { margin: 0 0 1.25rem; }
  @media (prefers-color-scheme: dark) { body { background: #161616; color: #ececec; }
    a { color: #9fd3c7; } .muted { color: #b5b5b5; } }
</style></head>
<body><main>
<a class="wordmark" href="{{ site_url or '/' }}">{{ brand.wordmark }}</a>
<h1>Newsletter archive</h1>
{% if issues %}<ol>
{% for issue in issues %}  <li><a href="/newsletters/{{ issue.slug }}">{{ issue.subject }}</a><br>
    <span class="muted"><time datetime="{{ issue.sent_at.isoformat() }}">
      {{- issue.sent_at.day }} {{ issue.sent_at.strftime("%B %Y") }}</time></span></li>
{% endfor %}</ol>
{% else %}<p>No issues yet.</p>
{% endif %}<p class="muted"><a href="/">Sign up</a> to get the next one by email.</p>
<p class="muted" id="your-links">Already a reader? To unsubscribe or change your preferences,
use the links at the foot of the newsletter in your inbox: they are yours alone, and
unsubscribing there takes one click. The copies here are the same for everyone.</p>
</main></body></html>
"""
)
BANNER = _PAGES.from_string(
    '<div style="font:15px/1.5 system-ui,sans-serif;text-align:center;padding:10px;'
    'background:#fff;color:#222;border-bottom:1px solid #ddd">'
    "The {{ wordmark }} newsletter of {{ sent_at.day }} {{ sent_at.strftime('%B %Y') }} &middot; "
    '<a href="/newsletters" style="color:#222">all issues</a> &middot; '
    '<a href="/" style="color:#222">sign up</a></div>'
)
NOT_FOUND = "<!doctype html><title>Not found</title><p>There is no such newsletter issue."


class _Archive:
    """Where the archive gets the store, course and renderer from."""

    def __init__(self, project=None, settings=None) -> None:
        self.project = project
        self.settings = settings
        self.pages: dict[tuple[str, int, str | None], str] = {}

    @cached_property
    def _own_runner(self):
        from dripmail.runner import Runner

        return Runner(self.project, self.settings)

    def runner(self, request: Request):
        """The app's runner when mounted without arguments, else our own."""
        if self.project is None:
            return request.app.state.ctx.runner
        return self._own_runner

    def index(self, runner) -> str:
        from dripmail.archive import sent_issues

        course = runner.course
        return INDEX.render(
            issues=sent_issues(runner.engine),
            title=course.title,
            brand=course.brand,
            site_url=course.site_url,
        )

    def issue(self, runner, slug: str) -> str:
        from dripmail.archive import find_issue, web_version
        from dripmail.render import Renderer

        issue = find_issue(runner.engine, slug)
        path = runner.project.newsletters_dir / f"{slug}.md"
        if not path.is_file():
            raise NotFoundError(f"newsletters/{slug}.md is no longer there")
        version = (slug, path.stat().st_mtime_ns, issue.content_hash)
        page = self.pages.get(version)
        if page is None:
            course = runner.course
            # A renderer of our own: the shared one caches by path and would keep an old text.
            renderer = Renderer(runner.project, course)
            banner = BANNER.render(wordmark=course.brand.wordmark, sent_at=issue.sent_at)
            page = web_version(runner.project, renderer, issue, banner)
            if len(self.pages) > 64:  # a handful of issues; never grow without bound
                self.pages.clear()
            self.pages[version] = page
        return page


def routes(project=None, settings=None) -> list[BaseRoute]:
    """The archive's routes; mount them in the web app (`create_app`)."""
    archive = _Archive(project, settings)

    async def index(request: Request) -> Response:
        runner = archive.runner(request)
        html = await run_in_threadpool(archive.index, runner)
        return HTMLResponse(html, headers=HEADERS)

    async def issue(request: Request) -> Response:
        runner = archive.runner(request)
        try:
            html = await run_in_threadpool(archive.issue, runner, request.path_params["slug"])
        except NotFoundError:
            return HTMLResponse(NOT_FOUND, 404, headers={**HEADERS, "Cache-Control": "no-store"})
        except DripmailError:
            # A broken file or template: the operator sees it in `check`; visitors get a 503.
            return HTMLResponse(
                "<!doctype html><title>Unavailable</title><p>This issue cannot be shown now.",
                503,
                headers={**HEADERS, "Cache-Control": "no-store", "Retry-After": "300"},
            )
        return HTMLResponse(html, headers=HEADERS)

    return [
        Route("/newsletters", index, name="newsletters"),
        Route("/newsletters/", index),
        Route("/newsletters/{slug}", issue, name="newsletter"),
    ]
