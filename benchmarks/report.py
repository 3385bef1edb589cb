"""Markdown tables from a results file (for the README): ``python -m benchmarks.report [FILE]``.

Default file: ``benchmarks/results/latest.json``. One table per scenario (median, then min–max
over the repeats), then the targets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def _fmt(fmt: str, value: float) -> str:
    if fmt.endswith("d}"):
        value = int(round(value))
    return fmt.format(value)


def _cell(summary: dict, key: str, fmt: str) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _fmt(fmt, s["median"])
    return f"{_fmt(fmt, s['median'])} ({_fmt(fmt, s['min'])}–{_fmt(fmt, s['max'])})"


def markdown(results: dict) -> str:
    lines: list[str] = []
    for sc in results["scenarios"].values():
        if "skipped" in sc or not sc.get("contenders"):
            continue
        metrics = sc["metrics"]
        lines += [f"**{sc['title']}**", "",
                  "| contender | " + " | ".join(m["label"] for m in metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for row in sc["contenders"].values():
            cells = [_cell(row["summary"], m["key"], m["format"]) for m in metrics]
            if "skipped" in row and not row["summary"]:
                cells[0] = "skipped"
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
        for row in sc["contenders"].values():
            if "skipped" in row:
                lines.append(f"- {row['label']}: {row['skipped']}")
            for err in dict.fromkeys(row.get("errors", [])):
                lines.append(f"- {row['label']} failed: {err}")
        if lines[-1] != "":
            lines.append("")
    checks = results.get("checks", [])
    if checks:
        lines += ["| target | contender | figure | met |", "|---|---|---:|---|"]
        for c in checks:
            lines.append(f"| {c['target']} | {c['contender']} | {c['value']:.3g} | "
                         f"{'yes' if c['met'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else DEFAULT
    print(markdown(json.loads(path.read_text())))  # noqa: T201


if __name__ == "__main__":
    main()
