"""A docs table from `metaflow bench --json` reports: one row per report, one column per strategy.

Collects the JSON objects ``metaflow bench ... --json`` printed (one file each) with the command
lines that produced them into ``docs/results/NAME.json``, whose table ``tests/docs`` compares with
docs/results.md::

    metaflow bench --plugin miniimagenet-resnet12 ... --order second --json > second.json
    metaflow bench --plugin miniimagenet-resnet12 ... --order first --json > first.json
    python benchmarks/bench_table.py NAME --command "metaflow bench ..." second.json first.json \\
        --out docs/results/NAME.json
    python benchmarks/bench_table.py --render docs/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STRATEGIES = ("loop", "batched", "compiled", "compiled-loop", "compiled-split", "cudagraphs")


def collect(name: str, command: str, paths: list[Path]) -> dict[str, Any]:
    return {
        "table": name,
        "script": "benchmarks/bench_table.py",
        "command": command,
        "reports": [json.loads(p.read_text()) for p in paths],
    }


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "—"
    if result.get("error"):
        return "failed"
    rate = f"{result['tasks_per_s']:.2f}"
    if result["strategy"] == "loop":
        return rate
    return f"{rate} ({result['speedup_vs_loop']:.2f}×)"


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    reports = report["reports"]
    present = [s for s in STRATEGIES if any(
        r["strategy"] == s for rep in reports for r in rep["results"]
    )]  # fmt: skip
    header = ["order", *(f"`{s}`" for s in present), "compile s", "`auto` picks"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for rep in reports:
        by_name = {r["strategy"]: r for r in rep["results"]}
        compiles = [r["compile_s"] for r in rep["results"] if r["compile_s"]]
        span = "—" if not compiles else f"{min(compiles):.0f}"
        if compiles and f"{max(compiles):.0f}" != span:
            span += f"–{max(compiles):.0f}"
        auto = rep["auto"]["strategy"] if rep.get("auto") else "not asked"
        cells = [rep["order"], *(_cell(by_name.get(s)) for s in present), span, f"`{auto}`"]
        lines.append("| " + " | ".join(cells) + " |")
    first = reports[0]
    errors = ", ".join(
        f"{r['strategy']} {r['max_rel_err']:.0e}"
        for r in first["results"]
        if r["strategy"] != "loop" and r.get("max_rel_err") is not None
    )
    lines.append("")
    lines.append(
        f"{first['preset']}, meta-batch {first['meta_batch']}, {first['inner_steps']} inner "
        f"step(s), {first['dtype']}, {first['threads']} torch threads, torch "
        f"{first['torch_version']}; tasks/s (× the loop of the same run). Largest meta-gradient "
        f"difference from the loop, relative ({first['order']} order): {errors}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="the table's name (docs/results/NAME.json)")
    parser.add_argument("reports", nargs="*", type=Path, help="metaflow bench --json outputs")
    parser.add_argument("--command", default="", help="the bench command line, for the record")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the table of a JSON file and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return
    if not args.name or not args.reports:
        parser.error("give the table's name and at least one report")
    report = collect(args.name, args.command, args.reports)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
