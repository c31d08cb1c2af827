"""Command help written as paragraphs, so the terminal wraps it once."""

from __future__ import annotations


def paragraphs(text: str | None) -> str:
    """`text` with each paragraph (blocks between blank lines) joined into one line.

    Typer's rich help keeps a docstring's line breaks and then wraps the lines again at the
    terminal's width, so hard-wrapped docstrings come out broken in two places on a narrow
    terminal. One line per paragraph leaves the wrapping to rich alone.
    """
    blocks = (text or "").strip().split("\n\n")
    return "\n\n".join(" ".join(block.split()) for block in blocks)
