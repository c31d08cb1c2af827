"""`send.py report` through the entry point (in process) on the known history: terminal,
JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli_in_process import run_cli
from tests.report_fixture import EXPECTED, History, make_history

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("report-cli") / "studio")


def _report(h: History, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    env.update(h.env())
    return run_cli(h.root, "report", *args, env=env)


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


def test_csv_has_every_expected_figure(history: History) -> None:
    done = _report(history, "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    notes = [r for r in rows if r[0] == "note"]
    assert rows[: -len(notes)] == expected_csv()
    # Read on its own, the CSV says opens are approximate and how scanner clicks were counted.
    assert [(r[1], r[3]) for r in notes] == [("1", "text"), ("2", "text")]
    assert notes[0][4].startswith("Opens are approximate: Apple Mail Privacy Protection")
    assert notes[1][4].endswith("left out of clicks, shown apart.")


def test_json_has_every_expected_figure(history: History) -> None:
    done = _report(history, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got.pop("generated_at") and any("Apple Mail" in n for n in got.pop("notes"))
    assert got == EXPECTED


def test_terminal_tables_show_every_row(history: History) -> None:
    done = _report(history)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def rows(title: str) -> list[list[str]]:
        """The body rows of the table titled `title`, as cells (boxed or box-less tables)."""
        first = next(n for n, x in enumerate(lines) if x.strip().startswith(title))
        out: list[list[str]] = []
        started = False
        for x in lines[first + 1 :]:
            s = x.strip()
            if s.startswith(("─", "┡")):
                started = True
                continue
            if not started:
                continue
            if not s or s.startswith("└"):
                break
            out.append([c for c in re.split(r"\s*│\s*|\s{2,}", s.strip("│ ")) if c])
        return out

    f = EXPECTED["funnel"]
    assert rows("Sign-up funnel") == [
        ["signed up", str(f["signups"])],
        ["confirmed", "4", "80.0%", "of sign-ups"],
        ["started (lesson 1 sent)", "4", "100.0%", "of confirmed"],
        ["completed (last lesson sent)", "1", "25.0%", "of started"],
    ]
    assert "Median time to confirm by the emailed link: 30 min" in done.stdout
    assert "Of the 4 confirmed: 4 by the emailed link, 0 without a link" in done.stdout

    def pct(n: int, sent: int) -> str:
        return f"{n / sent * 100:.1f}%"

    lessons = EXPECTED["lessons"]
    assert rows("Lessons: copies") == [
        [r["title"], str(r["sent"]), str(r["delivered"]), str(r["opened"]), str(r["clicked"])]
        for r in lessons
    ]
    assert rows("Lessons: clicks by link") == [
        [
            str(day), str(r["video_clicks"]), str(r["other_clicks"]), str(r["scanner_clicks"]),
            str(r["unsubscribed"]), str(r["bounced"]), str(r["complained"]),
            "-" if r["drop"] is None else str(r["drop"]),
        ]
        for day, r in enumerate(lessons, start=1)
    ]  # fmt: skip
    assert rows("Lessons: rates") == [
        [
            str(day), pct(r["delivered"], r["sent"]), pct(r["opened"], r["sent"]),
            pct(r["clicked"], r["sent"]), pct(r["unsubscribed"], r["sent"]),
            pct(r["bounced"], r["sent"]), pct(r["complained"], r["sent"]),
            "-" if r["drop"] is None else f"{r['drop_rate'] * 100:.1f}%",
        ]
        for day, r in enumerate(lessons, start=1)
    ]  # fmt: skip
    assert rows("Newsletter issues: copies") == [["hips", "1", "1", "1", "1"]]
    assert rows("By the reader's local send hour") == [
        ["07:00", "13", "3 (23.1%)", "2 (15.4%)"],
        ["11:00", "1", "1 (100.0%)", "1 (100.0%)"],
    ]
    assert rows("By the reader's time zone") == [
        ["America/New_York", "10", "3 (30.0%)", "3 (30.0%)"],
        ["Europe/Berlin", "4", "1 (25.0%)", "0 (0.0%)"],
    ]
    assert "Apple Mail Privacy Protection" in done.stdout


def test_help_says_opens_are_approximate() -> None:
    done = run_cli(REPO, "report", "--help")
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
