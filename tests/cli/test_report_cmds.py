"""`send.py report` as a real subprocess on the known history: terminal, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report_fixture import EXPECTED, History, make_history

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("report-cli") / "studio")


def _report(h: History, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    env.update(h.env())
    return subprocess.run(
        [sys.executable, str(REPO / "send.py"), "--root", str(h.root), "report", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def expected_csv() -> list[list[str]]:
    """Every figure of EXPECTED as the tidy CSV rows, built independently of the code."""
    rows = [["section", "key", "title", "metric", "value"]]
    rows += [["funnel", "", "", k, _cell(v)] for k, v in EXPECTED["funnel"].items()]
    for section in ("lesson", "newsletter"):
        for r in EXPECTED[section + "s"]:
            for k, v in r.items():
                if k == "links":
                    rows += [
                        [f"{section}_link", r["key"], r["title"], u, str(n)] for u, n in v.items()
                    ]
                elif k not in ("key", "title"):
                    rows.append([section, r["key"], r["title"], k, _cell(v)])
    for section in ("hour", "zone"):
        for r in EXPECTED[section + "s"]:
            rows += [[section, r["key"], "", k, _cell(v)] for k, v in r.items() if k != "key"]
    for d in EXPECTED["days"]:
        rows += [["day", d["day"], "", "signups", str(d["signups"])]]
        rows += [["day", d["day"], "", "unsubscribed", str(d["unsubscribed"])]]
    return rows


def test_json_has_every_expected_figure(history: History) -> None:
    done = _report(history, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got.pop("generated_at") and any("Apple Mail" in n for n in got.pop("notes"))
    assert got == EXPECTED


def test_csv_has_every_expected_figure(history: History) -> None:
    done = _report(history, "--csv")
    assert done.returncode == 0, done.stderr
    assert list(csv.reader(io.StringIO(done.stdout))) == expected_csv()


def test_terminal_tables_show_every_row(history: History) -> None:
    done = _report(history)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def row(label: str) -> list[str]:
        found = [[c.strip() for c in x.strip("│┃ ").split("│")] for x in lines if "│" in x]
        (cells,) = [c for c in found if c[0].startswith(label)]
        return cells

    f = EXPECTED["funnel"]
    assert row("signed up")[1] == str(f["signups"])
    assert row("confirmed")[1:4] == ["4", "80.0%", "median time to confirm 30 min"]
    assert row("started (lesson 1 sent)")[1:3] == ["4", "100.0%"]
    assert row("completed (last lesson sent)")[1:3] == ["1", "25.0%"]

    def pct(n: int, sent: int) -> str:
        return f"{n} ({n / sent * 100:.1f}%)"

    for r in EXPECTED["lessons"]:
        cells = row(r["title"])
        want = [
            r["title"], str(r["sent"]), pct(r["delivered"], r["sent"]), pct(r["opened"], r["sent"]),
            pct(r["clicked"], r["sent"]), str(r["scanner_clicks"]), str(r["video_clicks"]),
            str(r["other_clicks"]), pct(r["unsubscribed"], r["sent"]), pct(r["bounced"], r["sent"]),
            pct(r["complained"], r["sent"]),
            "-" if r["drop"] is None else f"{r['drop']} ({r['drop_rate'] * 100:.1f}%)",
        ]  # fmt: skip
        assert cells == want
    nl = EXPECTED["newsletters"][0]
    assert row(nl["key"])[:6] == ["hips", "1", "1 (100.0%)", "1 (100.0%)", "1 (100.0%)", "0"]
    assert row("07:00") == ["07:00", "13", "3 (23.1%)", "2 (15.4%)"]
    assert row("11:00") == ["11:00", "1", "1 (100.0%)", "1 (100.0%)"]
    assert row("America/New_York") == ["America/New_York", "10", "3 (30.0%)", "3 (30.0%)"]
    assert row("Europe/Berlin") == ["Europe/Berlin", "4", "1 (25.0%)", "0 (0.0%)"]
    assert "Apple Mail Privacy Protection" in done.stdout


def test_help_says_opens_are_approximate() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "send.py"), "report", "--help"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0
    assert "Apple Mail Privacy Protection" in done.stdout and "approximate" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "June"], "--since 'June' is not a date: use YYYY-MM-DD"),
        (["--since", "2026-06-05", "--until", "2026-06-01"], "after --until"),
        (["--json", "--csv"], "choose one"),
        (["--demo"], "no demo has run in"),
    ],
)
def test_bad_options_are_one_line(history: History, args: list[str], message: str) -> None:
    done = _report(history, *args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
