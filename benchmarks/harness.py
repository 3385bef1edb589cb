"""Runs scenarios over contenders: interleaved, repeated, summarised, checked, saved, printed.

Per scenario: ``setup`` once, then ``repeats`` rounds; round ``r`` measures every contender
once, in the contender order rotated by ``r`` (machine noise lands on each in turn); then the
median, min and max of every metric per contender. Targets from the earlier issues are checked
against the medians.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.contenders import Contender
from benchmarks.scenarios import Context, Scenario

log = logging.getLogger(__name__)

#: The targets set in earlier issues: (scenario, contender, metric, comparison, value, text).
TARGETS = [
    ("large", "ratio:farm-2/gather", "bars_per_s", ">=", 1.7,
     "farm (2 workers) >= 1.7x one connection on large responses (2 cores)"),
    ("pacing", "farm-*", "of_bound", ">=", 0.95, "farm >= 95% of the pacing bound"),
    ("pacing", "farm-*", "violations", "==", 0, "zero pacing violations"),
    ("tiny", "farm-*", "added_ms", "<", 0.5, "added latency through the farm < 0.5 ms"),
    ("startup", "farm-*", "worker_rss_mb", "<", 70.0, "worker RSS < 70 MB"),
    ("startup", "farm-*", "cold_start_s", "<", 1.0, "worker cold start < 1 s"),
]


def summarise(runs: list[dict]) -> dict[str, dict]:
    """``{metric: {median, min, max, n}}`` over the repeats (numbers only)."""
    keys = sorted({k for run in runs for k, v in run.items() if isinstance(v, (int, float))})
    out = {}
    for key in keys:
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))
                  and not (isinstance(run[key], float) and math.isnan(run[key]))]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values), "n": len(values)}
    return out


def run_scenario(scenario: Scenario, ctx: Context, contenders: list[Contender],
                 repeats: int) -> dict:
    """Every repeat of one scenario; returns its part of the results."""
    began = time.perf_counter()
    gateway_before = ctx.gateway.stats() if ctx.simulated else None
    runs: dict[str, list[dict]] = {} if scenario.own_rows else {c.name: [] for c in contenders}
    error = None
    try:
        scenario.setup(ctx, contenders)
        for r in range(repeats):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            log.info("%s: repeat %d of %d (%s)", scenario.name, r + 1, repeats,
                     ", ".join(c.name for c in order))
            for name, metrics in scenario.run(ctx, order).items():
                runs.setdefault(name, []).append(metrics)
    except (Exception, asyncio.CancelledError) as exc:  # reported; the others still run
        log.exception("scenario %s failed", scenario.name)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            scenario.teardown(ctx, contenders)
        except Exception:
            log.exception("teardown of %s failed", scenario.name)
    labels = {c.name: c.label for c in contenders} | scenario.row_labels
    connections = {c.name: c.connections for c in contenders}
    result: dict[str, Any] = {
        "title": scenario.title, "params": scenario.params(ctx), "notes": scenario.notes,
        "metrics": [{"key": k, "label": label, "format": fmt, "higher_is_better": hib}
                    for k, label, fmt, hib in scenario.metrics],
        "repeats": repeats, "seconds": round(time.perf_counter() - began, 2),
        "contenders": {name: {"label": labels.get(name, name),
                              "connections": connections.get(name),
                              "runs": rows, "summary": summarise(rows)}
                       for name, rows in runs.items() if rows},
    }
    if gateway_before is not None and not scenario.own_rows:
        after = ctx.gateway.stats()
        result["gateway"] = {
            "cpu_s": after["cpu_seconds"] - gateway_before["cpu_seconds"],
            "process_cpu_s": after["process_cpu_seconds"]
            - gateway_before["process_cpu_seconds"],
            "pacing_violations": after["pacing_violations"]
            - gateway_before["pacing_violations"],
            "bars_sent": after["bars_sent"] - gateway_before["bars_sent"]}
    if error:
        result["error"] = error
    return result


def _median(results: dict, scenario: str, contender: str, metric: str) -> float | None:
    try:
        return results["scenarios"][scenario]["contenders"][contender]["summary"][metric][
            "median"]
    except KeyError:
        return None


def check_targets(results: dict) -> list[dict]:
    """Each target against the medians: met or not, and by how much."""
    checks = []
    for scenario, who, metric, op, target, text in TARGETS:
        if scenario not in results["scenarios"]:
            continue
        contenders = results["scenarios"][scenario]["contenders"]
        if who.startswith("ratio:"):
            a, b = who[6:].split("/")
            va, vb = _median(results, scenario, a, metric), _median(results, scenario, b, metric)
            rows = [(who[6:], va / vb if va and vb else None)]
        else:
            prefix = who.rstrip("*")
            rows = [(name, _median(results, scenario, name, metric))
                    for name in contenders if name.startswith(prefix)]
        for name, value in rows:
            if value is None:
                continue
            met = {">=": value >= target, "<": value < target, "==": value == target}[op]
            checks.append({"target": text, "scenario": scenario, "contender": name,
                           "metric": metric, "value": value, "op": op, "goal": target,
                           "met": bool(met), "margin": value - target})
    return checks


def machine() -> dict:
    """What the figures were measured on."""
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=False).stdout.strip() or None
    except OSError:
        pass
    return {"cpus": psutil.cpu_count(), "cpus_physical": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "load_1m_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "commit": commit}


def run_all(ctx: Context, scenarios: list[Scenario], contenders: list[Contender],
            repeats: int, args: dict) -> dict:
    """Start the contenders on the gateway, run every scenario, stop them; the results."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "args": args,
        "machine": machine(), "sizes": asdict(ctx.sizes),
        "gateway": ({"kind": "simulated", "process": "own process, same 2 cores"}
                    if ctx.simulated else
                    {"kind": "real", "host": ctx.gateway.host, "port": ctx.gateway.port}),
        "contenders": {c.name: c.label for c in contenders}, "scenarios": {}}
    live: list[Contender] = []
    try:
        for c in contenders:
            c.start(ctx.gateway.host, ctx.gateway.port, ctx.policy)
            live.append(c)
            c.warm()
        for scenario in scenarios:
            if scenario.needs_sim and not ctx.simulated:
                results["scenarios"][scenario.name] = {
                    "title": scenario.title, "skipped": "needs the simulated gateway"}
                continue
            log.info("scenario %s", scenario.name)
            results["scenarios"][scenario.name] = run_scenario(scenario, ctx, contenders,
                                                               repeats)
    finally:
        for c in live:
            try:
                c.stop()
            except Exception:
                log.exception("stopping %s failed", c.name)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["checks"] = check_targets(results)
    return results


def save(results: dict, out_dir: Path) -> Path:
    """``results-<time>.json`` and ``latest.json`` in ``out_dir``; returns the first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"results-{stamp}.json"
    text = json.dumps(results, indent=1, default=str)
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def _cell(summary: dict, key: str, fmt: str) -> str:
    s = summary.get(key)
    if s is None:
        return "-"

    def f(v: float) -> str:
        if fmt.endswith("d}"):
            v = int(round(v))
        return fmt.format(v)
    if s["n"] == 1 or s["min"] == s["max"]:
        return f(s["median"])
    return f"{f(s['median'])} [dim]({f(s['min'])}–{f(s['max'])})[/dim]"


def print_results(results: dict, console: Console | None = None) -> None:
    """One table per scenario (median, then min–max) and the targets."""
    console = console or Console()
    m = results["machine"]
    console.print(f"[bold]ibfarm benchmark[/bold]  {m['cpus']} CPUs, Python {m['python']}, "
                  f"gateway: {results['gateway']['kind']}, {results['args'].get('repeats')} "
                  f"repeats, {results['seconds']} s")
    for sc in results["scenarios"].values():
        if "skipped" in sc:
            console.print(f"\n[bold]{sc['title']}[/bold]: skipped ({sc['skipped']})")
            continue
        table = Table(title=f"{sc['title']}", title_justify="left", title_style="bold")
        table.add_column("contender")
        for metric in sc["metrics"]:
            table.add_column(metric["label"], justify="right")
        for row in sc["contenders"].values():
            table.add_row(row["label"], *(_cell(row["summary"], metric["key"], metric["format"])
                                          for metric in sc["metrics"]))
        console.print()
        console.print(table)
        params = ", ".join(f"{k}={v}" for k, v in sc["params"].items() if v is not None)
        console.print(f"[dim]{params}[/dim]")
        if "gateway" in sc:
            g = sc["gateway"]
            console.print(f"[dim]simulated gateway: {g['cpu_s']:.2f} s CPU on its thread "
                          f"({g['process_cpu_s']:.2f} s its process), "
                          f"{g['pacing_violations']} pacing violations[/dim]")
        for note in sc["notes"]:
            console.print(f"[dim]- {note}[/dim]")
        if "error" in sc:
            console.print(f"[red]failed: {sc['error']}[/red]")
    if results["checks"]:
        table = Table(title="Targets (medians)", title_justify="left", title_style="bold")
        for col in ("target", "contender", "value", "goal", "met"):
            table.add_column(col, justify="left" if col in ("target", "contender") else "right")
        for c in results["checks"]:
            table.add_row(c["target"], c["contender"], f"{c['value']:.3g}",
                          f"{c['op']} {c['goal']:g}",
                          "[green]yes[/green]" if c["met"] else "[red]NO[/red]")
        console.print()
        console.print(table)
