"""Run every benchmark: `python bench/run.py [--quick] [--only NAME ... [--update]]`.

Each `bench/bench_*.py` exposes `run(quick: bool) -> list[dict]`; a figure is either a plain
value ``{"name", "value", "unit"}`` (`figure.value`) or a comparison built by
`figure.compare`: dripmail, the peer a user would write and the limit (the cheapest way),
measured in the same run (the machines are shared and noisy: only same-run ratios are
quoted). Results go to bench/results.json and bench/RESULTS.md. `--only NAME ... --update`
runs those benches again and replaces just their figures in the files (each bench's figures
keep the time of the run that measured them), so one changed bench need not cost a full run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # benches import figure.py


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _num(amount: float, unit: str) -> str:
    return f"{amount:.4g} {unit}"


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def _markdown(results: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"{results['when']} on {results['machine']}, "
        f"{'quick' if results['quick'] else 'full'} run of {', '.join(results['benches'])}"
        f" ({results['seconds']:.0f} s)"
        + (
            f"; measured later on their own (again, or first: a bench added since):"
            f" {', '.join(results['updated'])}"
            if results.get("updated")
            else ""
        )
        + ". Each comparison is dripmail beside the peer a user"
        " would write and the limit (the cheapest way to do the same work in Python on the"
        " same inputs), measured in the same run of its bench; `vs peer` is how many times"
        " better than the peer, `of limit` the share of the limit's speed reached"
        " (1.0 = at the limit).",
        "",
        "| figure | dripmail | peer | vs peer | limit | of limit |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for fig in results["figures"]:
        unit = fig.get("unit", "")
        if "ours" in fig:
            peer = fig.get("peer", fig.get("naive"))
            vs_peer = fig.get("vs_peer", fig.get("ratio"))
            limit = _num(fig["limit"], unit) if "limit" in fig else "not measured"
            of_limit = f"{fig['of_limit']:.2f}" if "of_limit" in fig else ""
            lines.append(
                f"| {fig['name']} | {_num(fig['ours'], unit)} | {_num(peer, unit)} | "
                f"{_times(vs_peer) if vs_peer is not None else ''} | {limit} | {of_limit} |"
            )
            if fig.get("peer_is") or fig.get("limit_is"):
                notes.append(f"- **{fig['name']}**")
                if fig.get("peer_is"):
                    notes.append(f"  - peer: {fig['peer_is']}")
                if fig.get("limit_is"):
                    notes.append(f"  - limit: {fig['limit_is']}")
        else:
            lines.append(f"| {fig['name']} | {_num(fig['value'], unit)} | | | | |")
    if notes:
        lines += ["", "## What each peer and limit is", "", *notes]
    if results.get("not_yet_run"):
        lines += ["", f"Cut short before: {', '.join(results['not_yet_run'])}."]
    if results.get("failed"):
        lines += ["", "## Benchmarks that failed in this run", ""]
        lines += [f"- {name}: {reason}" for name, reason in results["failed"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these, print, write nothing"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace those benches' figures in results.json and RESULTS.md",
    )
    args = parser.parse_args()
    if args.update and not args.only:
        parser.error("--update needs --only NAME ...")
    known = sorted(p.stem for p in HERE.glob("bench_*.py"))
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only or []}
    if wanted - set(known):
        parser.error(
            f"no benchmark {', '.join(sorted(wanted - set(known)))}; there are: "
            + ", ".join(name.removeprefix("bench_") for name in known)
        )
    if args.update:
        if not (HERE / "results.json").exists():
            parser.error("no bench/results.json to update yet: run every bench first")
        previous = json.loads((HERE / "results.json").read_text())
        if previous.get("quick") != args.quick:
            stored = "quick" if previous.get("quick") else "full"
            parser.error(
                f"the stored results are a {stored} run: update them with a {stored} run "
                f"({'add' if stored == 'quick' else 'drop'} --quick), or run every bench"
            )
    figures: list[dict] = []
    failed: dict[str, str] = {}
    benches = [p for p in sorted(HERE.glob("bench_*.py")) if not wanted or p.stem in wanted]
    begun = time.perf_counter()
    results: dict = {}
    for done, path in enumerate(benches, 1):
        started = time.perf_counter()
        print(f"running {path.stem} ...", flush=True)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            figures.extend(
                {**fig, "bench": path.stem, "measured": when} for fig in _load(path).run(args.quick)
            )
        except Exception as exc:  # one broken bench must not lose the others' figures
            traceback.print_exc()
            last = str(exc).splitlines()[-1:] or [""]
            failed[path.stem] = f"{type(exc).__name__}: {last[0]}"
        print(f"  done in {time.perf_counter() - started:.1f}s", flush=True)
        results = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} python {platform.python_version()}",
            "quick": args.quick,
            "benches": [p.stem for p in benches[:done]],
            "not_yet_run": [p.stem for p in benches[done:]],
            "seconds": time.perf_counter() - begun,
            "figures": figures,
            "failed": failed,
        }
        if args.update:
            # A bench that failed again keeps the figures it had; the others are replaced.
            measured = {p.stem for p in benches[:done]} - set(failed)
            kept = [f for f in previous["figures"] if f.get("bench") not in measured]
            results |= {
                "when": previous["when"],
                "benches": sorted(set(previous["benches"]) | set(results["benches"])),
                "seconds": previous["seconds"],
                "updated": sorted(set(previous.get("updated", [])) | measured),
                # A full run's order (benches by name); stable, so each keeps its own order.
                "figures": sorted(kept + figures, key=lambda f: f.get("bench", "")),
            }
        if not wanted or args.update:  # after each bench: a run cut short keeps its figures
            (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (HERE / "RESULTS.md").write_text(_markdown(results))
    print(_markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
