"""The report page: only with the preview, figures equal to the JSON, charts drawn in chromium.

The app runs under uvicorn on 127.0.0.1 over the known history of `tests/report_fixture.py`;
Debian's chromium (Playwright) may reach nothing else. Screenshots at 375 and 1280 px are saved
under test-artifacts/ (report-375.png, report-1280.png).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dripmail.config import Project
from tests.report_fixture import AFTER, EXPECTED, History, make_history

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("DRIPMAIL_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("report-page") / "studio")


def _get(app, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(path)

    return asyncio.run(go())


def _app(h: History, preview: bool):
    from dripmail.web.app import create_app

    return create_app(Project(h.root), h.settings, preview=preview, clock=lambda: AFTER)


def test_report_is_not_served_without_the_preview(history: History) -> None:
    app = _app(history, preview=False)
    assert _get(app, "/report").status_code == 404
    assert _get(app, "/report.json").status_code == 404


def test_report_json_has_the_expected_figures(history: History) -> None:
    answer = _get(_app(history, preview=True), "/report.json")
    assert answer.status_code == 200
    got = answer.json()
    got.pop("generated_at"), got.pop("notes")
    assert got == EXPECTED


def test_bad_dates_are_a_400_page(history: History) -> None:
    app = _app(history, preview=True)
    answer = _get(app, "/report?since=June")
    assert answer.status_code == 400 and "is not a date: use YYYY-MM-DD" in answer.text
    answer = _get(app, "/report?since=2026-06-05&until=2026-06-01")
    assert answer.status_code == 400 and "after --until" in answer.text
    answer = _get(app, "/report.json?since=2026-13-01")
    assert answer.status_code == 400
    assert "is not a date: use YYYY-MM-DD" in answer.json()["error"]


def test_funnel_chart_and_table_give_the_same_share_of_the_same_step(history: History) -> None:
    import re

    app = _app(history, preview=True)
    funnel = _get(app, "/report.json").json()["funnel"]
    html = _get(app, "/report").text
    desc = re.search(r'<desc id="funnel-chart-desc">(.*?)</desc>', html).group(1)  # type: ignore[union-attr]
    table = html.split('id="funnel-table"', 1)[1].split("</table>", 1)[0]
    for rate, base in (
        (funnel["confirm_rate"], "sign-ups"),
        (funnel["start_rate"], "confirmed"),
        (funnel["completion_rate"], "started"),
    ):
        said = f"{rate:.1%} of {base}"
        assert said in desc and said in table, said
        assert html.count(f"{said}</text>") == 1  # the chart's own label


def test_page_says_opens_are_approximate_and_charts_have_text(history: History) -> None:
    html = _get(_app(history, preview=True), "/report").text
    assert "Apple Mail Privacy Protection" in html
    for ident in ("funnel-chart", "lessons-chart", "time-chart"):
        assert f'id="{ident}" role="img"' in html and f'id="{ident}-desc"' in html
    assert "<script" not in html  # nothing to load, works offline


class Server:
    """The app under uvicorn in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:  # uvicorn either starts or the thread dies
            assert self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        from dripmail.web.serving import wake_long_polls

        wake_long_polls(self.app)  # as a stop signal does under `dripmail serve`
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture
def server(history: History) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (set DRIPMAIL_CHROMIUM)")
    with Server(_app(history, preview=True)) as running:
        yield running


def _value(data: dict, key: str):
    for part in key.split("."):
        data = data[int(part)] if part.isdigit() else data[part]  # type: ignore[index]
    return data


@pytest.mark.browser
def test_charts_render_and_figures_equal_the_json(server: Server) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    figures = httpx.get(server.base + "/report.json").json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for width in (375, 1280):
            context = browser.new_context(viewport={"width": width, "height": 900})
            context.set_default_timeout(300_000)  # a loaded machine: slow, never wrong
            context.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith(server.base)
                    else route.abort()
                ),
            )
            page = context.new_page()
            page.goto(server.base + "/report")
            # Every chart is drawn: visible bars or lines with a real size.
            for ident, shape in (
                ("funnel-chart", "rect.bar"),
                ("lessons-chart", "rect.bar"),
                ("time-chart", "polyline.line"),
            ):
                chart = page.locator(f"#{ident}")
                box = chart.bounding_box()
                assert box and box["width"] > 250 and box["height"] > 100, (ident, box)
                # One round trip for every shape's box (one call per shape cost more CPU in
                # Playwright's driver than drawing the page).
                sizes = chart.locator(shape).evaluate_all(
                    "els => els.map(e => e.getBoundingClientRect())"
                    ".map(r => ({width: r.width, height: r.height}))"
                )
                assert sizes, ident
                assert any(s["width"] > 1 and s["height"] > 1 for s in sizes), ident
            assert page.locator("#funnel-chart rect.bar").count() == 4
            assert page.locator("#lessons-chart rect.bar").count() == 3 * len(figures["lessons"])
            # Every figure on the page is the JSON's.
            cells = page.locator("[data-key]").evaluate_all(
                "els => els.map(e => [e.getAttribute('data-key'), e.getAttribute('data-value'),"
                " e.textContent])"
            )
            assert len(cells) > 150  # counts and rates
            for key, shown, text in cells:
                if shown is None:
                    shown = (text or "").strip()  # also inside closed <details>
                want = _value(figures, key)
                assert shown == ("None" if want is None else str(want)), key
            # The page itself never scrolls sideways on a phone: wide tables scroll inside.
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{overflow}px wider than the {width}px window"
            # A table that scrolls inside says so: a visible hint above it.
            unmarked = page.evaluate(
                """() => [...document.querySelectorAll('.scroll')]
                    .filter(box => box.scrollWidth > box.clientWidth)
                    .filter(box => {
                        const hint = box.previousElementSibling;
                        return !(hint && hint.classList.contains('scroll-hint')
                                 && hint.offsetHeight > 0);
                    })
                    .map(box => box.querySelector('table').id)"""
            )
            assert unmarked == [], f"tables scroll sideways without a hint at {width}px"
            if width == 375:
                assert page.locator(".scroll-hint:visible").count() >= 1
            # The lessons table reads on a phone: a short row name ("Day 1", title below it)
            # leaves the first numbers on screen; at 1280 px it fits whole (nothing clipped).
            lessons_box = page.locator("#lessons-table").evaluate(
                "t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]"
            )
            first_row = page.locator("#lessons-table tbody tr").nth(0)
            assert (first_row.locator("th").text_content() or "").startswith("Day 11. ")
            sent = first_row.locator("td").nth(1).bounding_box()  # delivered, 2nd number
            assert sent and sent["x"] + sent["width"] <= width, (width, sent)
            if width == 1280:
                assert lessons_box[0] <= lessons_box[1], f"lessons table clipped: {lessons_box}"
                news = page.locator("#newsletters-table").evaluate(
                    "t => t.parentElement.scrollWidth - t.parentElement.clientWidth"
                )
                assert news <= 0, f"newsletters table clipped by {news}px"
            # The lesson bars differ by more than colour: solid, striped, dotted fills.
            fills = page.evaluate(
                """() => [...new Set([...document.querySelectorAll('#lessons-chart rect.bar')]
                    .map(r => r.getAttribute('fill')))]"""
            )
            assert len(fills) == 3 and sum(f.startswith("url(#") for f in fills) == 2, fills
            # Each <details> shows it can open: a triangle before its summary.
            marks = page.evaluate(
                """() => [...document.querySelectorAll('summary')].map(
                    s => getComputedStyle(s, '::before').content)"""
            )
            assert marks and all(m not in ("none", "normal", '""') for m in marks), marks
            page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)
            context.close()
        browser.close()
    for width in (375, 1280):
        assert (ARTIFACTS / f"report-{width}.png").stat().st_size > 10_000


def test_only_the_demo_database_is_labelled_simulated(history: History, tmp_path: Path) -> None:
    from dripmail.demo import is_demo_database
    from dripmail.web.app import create_app

    (tmp_path / "demo").mkdir()
    settings = history.settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'demo' / 'demo.db'}"}
    )
    app = create_app(Project(history.root), settings, preview=True, clock=lambda: AFTER)
    assert "Simulated figures" in _get(app, "/report").text

    assert is_demo_database("sqlite:////home/studio/demo/demo.db")
    assert not is_demo_database("sqlite:////home/studio/dripmail.db")
    assert not is_demo_database("postgresql+psycopg://u@h/demo/demo.db")
    assert "Simulated figures" not in _get(_app(history, preview=True), "/report").text
