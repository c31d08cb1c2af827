"""Run every benchmark: `python bench/run.py [--quick]`.

Each `bench/bench_*.py` exposes `run(quick: bool) -> list[dict]`; a figure is either
``{"name", "value", "unit"}`` or a comparison ``{"name", "unit", "ours", "naive", "ratio"}``
measured in the same run (the machines are shared and noisy: only same-run ratios are quoted).
Results go to bench/results.json and bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _markdown(results: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"{results['when']} on {results['machine']}, "
        f"{'quick' if results['quick'] else 'full'} run."
        " Medians; ratios compare two ways measured in the same run.",
        "",
        "| figure | value | naive way | ratio |",
        "|---|---|---|---|",
    ]
    for fig in results["figures"]:
        if "ratio" in fig:
            lines.append(
                f"| {fig['name']} | {fig['ours']:.4g} {fig['unit']} | "
                f"{fig['naive']:.4g} {fig['unit']} | {fig['ratio']:.1f}x |"
            )
        else:
            lines.append(f"| {fig['name']} | {fig['value']:.4g} {fig['unit']} | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args()
    figures: list[dict] = []
    for path in sorted(HERE.glob("bench_*.py")):
        started = time.perf_counter()
        print(f"running {path.stem} ...", flush=True)
        figures.extend(_load(path).run(args.quick))
        print(f"  done in {time.perf_counter() - started:.1f}s", flush=True)
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} python {platform.python_version()}",
        "quick": args.quick,
        "figures": figures,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "RESULTS.md").write_text(_markdown(results))
    print(_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
