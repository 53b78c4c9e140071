"""Summarize a pytest-benchmark JSON as a ratio table: ours against the baselines.

Usage: python benchmarks/summarize.py BENCH.json [BENCH.json ...] [--out FIGURES.json] [--markdown]

In each benchmark group the entry whose name contains "ours" is the reference point;
every other entry (torchvision, pytorch-grad-cam, the package's pure-PyTorch reference,
...) is reported as "x slower than ours". Peak extra memory comes from extra_info.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict


def _is_ours(name: str) -> bool:
    return "ours" in name.lower()


def summarize(data: dict) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b["name"]].append(b)
    rows = []
    for group, items in sorted(groups.items()):
        ours = [b for b in items if _is_ours(b["name"])]
        base = ours[0]["stats"]["median"] if ours else None
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            med = b["stats"]["median"]
            rows.append({
                "group": group,
                "name": b["name"],
                "median_ms": med * 1e3,
                "min_ms": b["stats"]["min"] * 1e3,
                "rounds": b["stats"]["rounds"],
                "vs_ours": (med / base) if base else None,
                "peak_extra_mib": b.get("extra_info", {}).get("peak_extra_mib"),
                "extra_info": b.get("extra_info", {}),
            })
    return rows


def render(rows: list[dict], markdown: bool = False) -> str:
    header = ["group", "benchmark", "median ms", "min ms", "x ours", "peak extra MiB"]
    lines = []
    table = [
        [r["group"], r["name"], f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f}",
         "-" if r["vs_ours"] is None else f"{r['vs_ours']:.1f}x",
         "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.1f}"]
        for r in rows
    ]
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(row) + " |" for row in table]
    else:
        widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
                  for i, h in enumerate(header)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json", nargs="+", help="pytest-benchmark JSON files (merged)")
    ap.add_argument("--out", help="write the figures (rows + machine) as JSON here")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    data = {"benchmarks": []}
    for path in args.bench_json:
        part = json.load(open(path))
        data["benchmarks"] += part.get("benchmarks", [])
        data.setdefault("machine_info", part.get("machine_info", {}))
    rows = summarize(data)
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{machine.get('node', '')}")
    print(render(rows, args.markdown))
    if args.out:
        json.dump({"machine_info": machine, "rows": rows}, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
