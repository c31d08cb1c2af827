"""App-wide behaviour: error pages without tracebacks, security headers, health, mounts."""

from __future__ import annotations

import httpx
import pytest
from conftest import assert_clean

pytestmark = pytest.mark.anyio


async def test_healthz_answers_when_the_database_does(web):
    answer = await web.client().get("/healthz")
    assert answer.status_code == 200 and answer.text == "ok"


async def test_unknown_paths_and_methods_get_a_short_page(web):
    client = web.client()
    missing = await client.get("/wp-admin.php")
    assert missing.status_code == 404 and "There is nothing at this address" in missing.text
    wrong = await client.delete("/subscribe")
    assert wrong.status_code == 405
    api = await client.get("/nope", headers={"Accept": "application/json"})
    assert api.status_code == 404 and api.json()["ok"] is False
    for answer in (missing, wrong, api):
        assert_clean(answer)


async def test_every_answer_carries_the_security_headers(web):
    for path in ("/", "/healthz", "/confirm/bad", "/nope"):
        answer = await web.client().get(path)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"  # tokens never leak onward
        assert "default-src 'none'" in answer.headers["content-security-policy"]


async def test_an_unexpected_failure_is_a_calm_500_without_a_traceback(web):
    # Break the database under the app: the handler's exception must not reach the visitor.
    web.app.state.ctx.runner.__dict__["engine"] = None
    transport = httpx.ASGITransport(app=web.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.post("/subscribe", data={"email": "a@example.com"})
    assert answer.status_code == 500
    assert "Something went wrong" in answer.text
    assert_clean(answer)


async def test_a_broken_course_at_start_is_named_and_the_app_still_starts(make_web, tmp_path):
    web = make_web()
    (web.root / "course" / "course.toml").write_text("id = \n")
    web = make_web()  # a restart with the broken file: unsubscribe and webhooks must answer
    (problem,) = web.app.state.ctx.app.content_problems()
    assert problem.startswith("course/course.toml:1: ")
    client = web.client()
    assert (await client.get("/healthz")).status_code == 200
    # Nothing to take the title or zone from: a calm 503, never a traceback.
    page = await client.get("/")
    assert page.status_code == 503 and "Temporarily unavailable" in page.text
    assert_clean(page)


async def test_the_served_app_mounts_the_newsletter_archive(web):
    answer = await web.client().get("/newsletters")
    assert answer.status_code == 200 and "Newsletter archive" in answer.text
    assert (await web.client().get("/newsletters/nothing-here")).status_code == 404
