"""axe-core (from npm, see package.json; `npm install` puts it in node_modules/) run in chromium.

`serious_findings(page)` injects axe into the page as it is and returns the serious and
critical violations as one readable line each. Pages with a strict Content-Security-Policy
need a context made with `bypass_csp=True` so the injected script may run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"


def axe_source() -> str:
    """The axe-core script; skips (saying how to install it) when npm was not run."""
    if not AXE.is_file():
        pytest.skip(f"no {AXE.relative_to(REPO)}: run `npm install` in the project folder")
    return AXE.read_text(encoding="utf-8")


def serious_findings(page, source: str) -> list[str]:
    """Serious and critical axe violations on the page, one line per rule and element."""
    page.add_script_tag(content=source)
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                targets: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}));
        }"""
    )
    return [
        f"{v['impact']}: {v['id']} ({v['help']}) at {', '.join(v['targets'])}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
