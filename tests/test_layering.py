"""The CLI (`dripmail/cli/`) and the web app (`dripmail/web/`) are shells: they parse, call the
core (`Dripmail`, `Runner`) and print; they import nothing from `dripmail.store` (no SQL,
no store module), at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dripmail"


def _store_imports(path: Path, base: Path = PACKAGE.parent) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "dripmail.store" or name.startswith("dripmail.store."):
                found.append(f"{path.relative_to(base)}:{node.lineno}: {name}")
                break
    return found


def test_the_shells_import_nothing_from_the_store() -> None:
    shells = sorted((PACKAGE / "cli").rglob("*.py")) + sorted((PACKAGE / "web").rglob("*.py"))
    assert len(shells) > 10
    assert [hit for path in shells for hit in _store_imports(path)] == []


def test_the_check_sees_every_form_of_store_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text(
        "import dripmail.store.db\n"
        "from dripmail import store\n"
        "def f():\n"
        "    from dripmail.store.report_queries import forget_stored\n"
        "from dripmail import storefront, app\n"
    )
    assert [hit.split(": ")[0] for hit in _store_imports(sample, tmp_path)] == [
        "x.py:1",
        "x.py:2",
        "x.py:4",
    ]
