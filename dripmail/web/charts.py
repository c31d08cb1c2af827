"""Small server-rendered SVG charts for the report page: no script, no CDN, works offline.

Each chart is an inline ``<svg role="img">`` with a <title> and a <desc> that says in words
what it shows (screen readers read those; the page puts a table of the same figures beside
each chart). Colours keep at least 3:1 contrast on white (WCAG 1.4.11 for graphics) and series
differ by more than colour (bar fills solid, striped, dotted; lines solid or dashed; labels).
Sizes are in viewBox units: the SVG scales to the page width, so fonts are sized for a phone
(viewBox 440 wide shown at ~330 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

WIDTH = 440
FONT = "font-family: system-ui, -apple-system, 'Segoe UI', sans-serif"
TEXT = "#222222"
GRID = "#d0d0d0"
# Okabe-Ito blue, a darkened orange and purple: distinct for common colour blindness, and
# each at least 3:1 against white.
SERIES = ("#0072B2", "#B35900", "#6A3D9A")


def _svg(height: int, title: str, desc: str, body: list[str], ident: str) -> Markup:
    return Markup(
        f'<svg class="chart" id="{ident}" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'aria-labelledby="{ident}-title {ident}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'style="{FONT}">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _patterns(ident: str, count: int) -> str:
    """<defs> with a fill for each series after the first: white diagonal stripes, then white
    dots, over the series colour, so bars differ by more than colour (also in greyscale)."""
    out = []
    for s in range(1, count):
        colour = SERIES[s % len(SERIES)]
        mark = (
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2"/>'
            if s % 2
            else '<circle cx="3" cy="3" r="1.4" fill="#ffffff"/>'
        )
        transform = ' patternTransform="rotate(45)"' if s % 2 else ""
        out.append(
            f'<pattern id="{ident}-p{s}" width="6" height="6" patternUnits="userSpaceOnUse"'
            f'{transform}><rect width="6" height="6" fill="{colour}"/>{mark}</pattern>'
        )
    return f"<defs>{''.join(out)}</defs>" if out else ""


def _fill(ident: str, s: int) -> str:
    """The first series solid, the others patterned (see _patterns)."""
    return SERIES[0] if s == 0 else f"url(#{ident}-p{s})"


def _pct(part: int, whole: int) -> str:
    return f"{part / whole * 100:.0f}%" if whole else "-"


def funnel(
    steps: Sequence[tuple[str, int, str]], colour: str, ident: str = "funnel-chart"
) -> Markup:
    """Horizontal bars, one per step ``(label, count, name as a base)``; each step after the
    first is labelled with its share of the previous step, named ("80.0% of sign-ups"), the
    same base as the report's table and terminal."""
    top = max((n for _, n, _ in steps), default=0) or 1
    row, room = 60, WIDTH - 120
    body: list[str] = []
    labels: list[str] = []
    for i, (label, count, _) in enumerate(steps):
        if i:
            before, base = steps[i - 1][1], steps[i - 1][2]
            share = f"{count / before * 100:.1f}%" if before else "-"
            label = f"{label}: {share} of {base}"
        labels.append(label)
        y = 8 + i * row
        width = max(2.0, count / top * room) if count else 0
        body.append(
            f'<text x="0" y="{y + 16}" font-size="18" fill="{TEXT}">{escape(label)}</text>'
            f'<rect class="bar" x="0" y="{y + 23}" width="{width:.1f}" height="26" rx="3" '
            f'fill="{colour}" data-value="{count}"><title>{escape(label)}: {count}</title></rect>'
            f'<text x="{width + 8:.1f}" y="{y + 43}" font-size="18" fill="{TEXT}">{count}</text>'
        )
    desc = "; ".join(
        f"{steps[i][0]}: {steps[i][1]}" + (f" ({label.split(': ', 1)[1]})" if i else "")
        for i, label in enumerate(labels)
    )
    return _svg(8 + len(steps) * row + 4, "Sign-up funnel", desc, body, ident)


def grouped_rates(
    groups: Sequence[tuple[str, Sequence[float | None]]],
    series: Sequence[str],
    ident: str = "lessons-chart",
) -> Markup:
    """Vertical bars of rates (0..1) per group, one bar per series, on a 0-100% axis."""
    left, bottom, top, height = 54, 50, 12, 260
    plot_h = height - top - bottom
    top_rate = max((r or 0 for _, rates in groups for r in rates), default=0)
    # The axis ends at the next 10% above the highest rate, so small rates stay visible.
    ceiling = min(1.0, max(0.1, (int(top_rate * 10) + 1) / 10))
    body: list[str] = [_patterns(ident, len(series))]
    for k in range(5):
        tick = ceiling * k / 4
        y = top + plot_h - tick / ceiling * plot_h
        body.append(
            f'<line x1="{left}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y + 5:.1f}" font-size="15" text-anchor="end" '
            f'fill="{TEXT}">{tick * 100:.0f}%</text>'
        )
    n = max(1, len(groups))
    slot = (WIDTH - left) / n
    bar = min(22.0, (slot - 10) / max(1, len(series)))
    for g, (label, rates) in enumerate(groups):
        x0 = left + g * slot + (slot - bar * len(series)) / 2
        for s, value in enumerate(rates):
            v = value or 0
            h = v / ceiling * plot_h
            body.append(
                f'<rect class="bar" x="{x0 + s * bar:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar - 2:.1f}" height="{h:.1f}" fill="{_fill(ident, s)}" '
                f'stroke="{SERIES[s % len(SERIES)]}" data-value="{v}">'
                f"<title>{escape(label)}, {escape(series[s])}: "
                f"{'-' if value is None else f'{v * 100:.1f}%'}</title></rect>"
            )
        body.append(
            f'<text x="{left + g * slot + slot / 2:.1f}" y="{top + plot_h + 20}" font-size="15" '
            f'text-anchor="middle" fill="{TEXT}">{escape(label)}</text>'
        )
    body.append(_legend(series, height - 12, lines=False, ident=ident))
    desc = "; ".join(
        f"{label}: "
        + ", ".join(
            f"{name} {'-' if r is None else f'{r * 100:.1f}%'}"
            for name, r in zip(series, rates, strict=True)
        )
        for label, rates in groups
    )
    return _svg(height, "Lessons: " + ", ".join(series), desc, body, ident)


def _legend(series: Sequence[str], y: int, lines: bool, ident: str = "") -> str:
    """Swatches (bars: the fills of the bars, solid or patterned) or line samples (lines: the
    first solid, the others dashed)."""
    out, x = [], 52
    for s, name in enumerate(series):
        colour = SERIES[s % len(SERIES)]
        if lines:
            dash = ' stroke-dasharray="6 3"' if s else ""
            out.append(
                f'<line x1="{x}" x2="{x + 22}" y1="{y - 5}" y2="{y - 5}" stroke="{colour}" '
                f'stroke-width="3"{dash}/>'
            )
        else:
            out.append(
                f'<rect x="{x}" y="{y - 12}" width="14" height="14" fill="{_fill(ident, s)}" '
                f'stroke="{colour}"/>'
            )
        out.append(f'<text x="{x + 28}" y="{y}" font-size="15" fill="{TEXT}">{escape(name)}</text>')
        x += 44 + int(len(name) * 8.5)
    return "".join(out)


def over_time(
    days: Sequence[date],
    series: Sequence[tuple[str, Sequence[int]]],
    ident: str = "time-chart",
) -> Markup:
    """Lines of daily counts (solid, then dashed), first and last day on the axis."""
    left, bottom, top, height = 54, 64, 12, 250
    plot_h = height - top - bottom
    plot_w = WIDTH - left - 10
    # An even peak keeps the middle tick a whole number.
    peak = max((v for _, values in series for v in values), default=0) or 1
    peak += peak % 2
    body: list[str] = []
    for k in range(3):
        value = peak * k / 2
        y = top + plot_h - value / peak * plot_h
        body.append(
            f'<line x1="{left}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y + 5:.1f}" font-size="15" text-anchor="end" '
            f'fill="{TEXT}">{value:.0f}</text>'
        )
    n = len(days)

    def x_of(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    for s, (name, values) in enumerate(series):
        colour = SERIES[s % len(SERIES)]
        points = " ".join(
            f"{x_of(i):.1f},{top + plot_h - v / peak * plot_h:.1f}" for i, v in enumerate(values)
        )
        dash = ' stroke-dasharray="6 3"' if s else ""
        body.append(
            f'<polyline class="line" points="{points}" fill="none" stroke="{colour}" '
            f'stroke-width="2.5"{dash}/>'
        )
        if n <= 62:  # dots while they stay apart
            for i, v in enumerate(values):
                y = top + plot_h - v / peak * plot_h
                body.append(
                    f'<circle cx="{x_of(i):.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                    f"<title>{days[i].isoformat()}: {v} {escape(name)}</title></circle>"
                )
    if days:
        body.append(
            f'<text x="{left}" y="{top + plot_h + 18}" font-size="15" fill="{TEXT}">'
            f"{days[0].isoformat()}</text>"
        )
        if n > 1:
            body.append(
                f'<text x="{WIDTH - 10}" y="{top + plot_h + 18}" font-size="15" '
                f'text-anchor="end" fill="{TEXT}">{days[-1].isoformat()}</text>'
            )
    body.append(_legend([name for name, _ in series], height - 14, lines=True))
    # "name: count" reads right for any count ("unsubscribes: 1", not "1 unsubscribes").
    totals = ", ".join(f"{name}: {sum(values)}" for name, values in series)
    span = f"{days[0].isoformat()} to {days[-1].isoformat()}" if days else "no days"
    desc = f"Daily counts from {span}, in total {totals}; the table below lists every day."
    return _svg(height, "Sign-ups and unsubscribes per day", desc, body, ident)
