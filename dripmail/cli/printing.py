"""Stored text shown on a terminal: what a reader typed or a provider said is printed so that
it cannot break a line or reach the terminal as a control sequence."""

from __future__ import annotations

# C0 controls (tab aside), DEL, C1 controls and the Unicode line and paragraph separators:
# a newline in a stored name would split a listing's line, a CR overwrite it, an ESC drive
# the terminal.
_SHOWN_ESCAPED = {
    c: f"\\u{c:04x}"
    for c in (*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def visible(text: str) -> str:
    """`text` with every control character written as an escape (``\\u000a``), the rest as is."""
    return text.translate(_SHOWN_ESCAPED)
