"""Runs scenarios over contenders: interleaved, repeated, summarised, checked, saved, printed.

Per scenario: a fresh ``Scenario`` built from the run's context, ``setup`` once, then
``repeats`` rounds; round ``r`` measures every contender once, in the contender order rotated
by ``r`` (machine noise lands on each in turn); then the median, min and max of every metric
per row. The run's contenders are started on the run's gateway the first time a scenario
measures them there (``Lineup``). Targets from the issues are checked against the medians
(counts that must be zero, against the worst repeat).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.contenders import Contender
from benchmarks.scenarios import Context, Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A figure an issue asked for.

    Attributes:
        scenario: where it is measured.
        rows: a pattern of row names (``farm-*``, ``farm-*@2500``), or ``a/b``: the ratio of
            row a's median to row b's.
        metric, op, goal: the figure, the comparison (``>=``, ``<=``, ``<``, ``==``) and the
            value it must meet.
        stat: ``median`` over the repeats, or ``max`` (a count that must stay zero in every
            repeat).
        text: what the issue said.
    """

    scenario: str
    rows: str
    metric: str
    op: str
    goal: float
    text: str
    stat: str = "median"


TARGETS = [
    Target("large", "farm-2/gather", "bars_per_s", ">=", 1.7,
           "farm (2 workers) >= 1.7x one connection on large responses (2 cores)"),
    Target("pacing", "farm-*", "of_bound", ">=", 0.95, "farm >= 95% of the pacing bound"),
    Target("pacing", "farm-*", "violations", "==", 0, "zero pacing violations", "max"),
    Target("tiny", "farm-*", "added_ms", "<", 0.5, "added latency through the farm < 0.5 ms"),
    Target("startup", "farm-*", "worker_rss_mb", "<", 70.0, "worker RSS < 70 MB"),
    Target("startup", "farm-*", "cold_start_s", "<", 1.0, "worker cold start < 1 s"),
    Target("scale", "farm-*@2500", "wall_per_bound", "<=", 1.3,
           "farm: wall/bound <= 1.3 at 2,500 requests"),
    Target("scale", "farm-*@20000", "wall_per_bound", "<=", 1.3,
           "farm: wall/bound <= 1.3 at 20,000 requests"),
    Target("scale", "farm-*", "unanswered", "==", 0, "farm: every request answered", "max"),
    Target("scale", "farm-*", "violations", "==", 0, "farm: zero pacing violations at scale",
           "max"),
    Target("gateways", "two", "vs_one", ">=", 1.9,
           "two gateways >= 1.9x one gateway's throughput"),
    Target("gateways", "*", "violations", "==", 0, "zero violations at either", "max"),
    Target("gateways", "*", "unanswered", "==", 0, "every request answered", "max"),
    Target("ib_latency", "farm-*", "wall_per_bound", "<=", 1.3,
           "latency-model backfill: farm wall/bound <= 1.3"),
    Target("ib_latency", "datamanager", "wall_per_bound", "<=", 1.3,
           "latency-model backfill: DataManager wall/bound <= 1.3"),
    Target("ib_latency", "*", "unanswered", "==", 0,
           "latency-model backfill: every request answered", "max"),
    Target("ib_latency", "*", "violations", "==", 0,
           "latency-model backfill: zero pacing violations", "max"),
    Target("store_read", "pyarrow_table", "load_data_speed", ">=", 0.8,
           "load_data(local) >= 0.8x as fast as pyarrow.dataset"),
]
OPS = {">=": lambda v, g: v >= g, "<=": lambda v, g: v <= g, "<": lambda v, g: v < g,
       "==": lambda v, g: v == g}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """``{metric: {median, min, max, n}}`` over the repeats (numbers only)."""
    keys = sorted({k for run in runs for k, v in run.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for key in keys:
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))
                  and not (isinstance(run[key], float) and math.isnan(run[key]))]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values), "n": len(values)}
    return out


class Lineup:
    """The run's contenders, started on the run's gateway (and warmed) when first needed."""

    def __init__(self, contenders: list[Contender], ctx: Context):
        self.contenders, self.ctx = contenders, ctx
        self.live: list[Contender] = []

    def start(self) -> None:
        for c in self.contenders:
            if c not in self.live:
                c.start(self.ctx.gateway.host, self.ctx.gateway.port, self.ctx.policy)
                self.live.append(c)
                c.warm()

    def stop(self) -> None:
        for c in self.live:
            try:
                c.stop()
            except Exception:
                log.exception("stopping %s failed", c.name)
        self.live.clear()


def run_scenario(cls: type[Scenario], ctx: Context, lineup: Lineup, repeats: int) -> dict:
    """Every repeat of one scenario, built fresh; returns its part of the results."""
    began = time.perf_counter()
    scenario = cls(ctx)
    contenders = lineup.contenders
    rows = {row.name: row for row in scenario.rows(contenders)}
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    gateway_before = None
    error = None
    try:
        if scenario.shared_contenders:
            lineup.start()
            gateway_before = ctx.gateway.stats() if ctx.simulated else None
        scenario.setup(contenders)
        for r in range(repeats):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            log.info("%s: repeat %d of %d (%s)", scenario.name, r + 1, repeats,
                     ", ".join(c.name for c in order))
            for name, metrics in scenario.run(order).items():
                runs.setdefault(name, []).append(metrics)
    except (Exception, asyncio.CancelledError) as exc:  # reported; the others still run
        log.exception("scenario %s failed", scenario.name)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            scenario.teardown()
        except Exception:
            log.exception("teardown of %s failed", scenario.name)
    result: dict[str, Any] = {
        "title": scenario.title, "params": scenario.params(), "notes": scenario.describe(),
        "metrics": [asdict(m) for m in scenario.metrics],
        "repeats": repeats, "seconds": round(time.perf_counter() - began, 2),
        "contenders": {name: _row_result(rows.get(name), name, done)
                       for name, done in runs.items() if done},
    }
    if gateway_before is not None:
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


def _row_result(row, name: str, runs: list[dict]) -> dict:
    out = {"label": row.label if row else name, "connections": row.connections if row else None,
           "runs": runs, "summary": summarise(runs)}
    skipped = {run["skipped"] for run in runs if "skipped" in run}
    if skipped:
        out["skipped"] = sorted(skipped)[0]
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        out["errors"] = errors
    return out


def _stat(results: dict, scenario: str, row: str, metric: str, stat: str) -> float | None:
    try:
        return results["scenarios"][scenario]["contenders"][row]["summary"][metric][stat]
    except KeyError:
        return None


def check_targets(results: dict) -> list[dict]:
    """Each target against the figures: met or not, and by how much."""
    checks = []
    for t in TARGETS:
        if t.scenario not in results["scenarios"]:
            continue
        names = results["scenarios"][t.scenario].get("contenders", {})
        if "/" in t.rows:
            a, b = t.rows.split("/")
            va = _stat(results, t.scenario, a, t.metric, t.stat)
            vb = _stat(results, t.scenario, b, t.metric, t.stat)
            pairs = [(t.rows, va / vb if va and vb else None)]
        else:
            pairs = [(name, _stat(results, t.scenario, name, t.metric, t.stat))
                     for name in names if fnmatch.fnmatchcase(name, t.rows)]
        for name, value in pairs:
            if value is None:
                continue
            checks.append({"target": t.text, "scenario": t.scenario, "contender": name,
                           "metric": t.metric, "stat": t.stat, "value": value, "op": t.op,
                           "goal": t.goal, "met": bool(OPS[t.op](value, t.goal)),
                           "margin": value - t.goal})
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


def run_all(ctx: Context, scenarios: list[type[Scenario]], contenders: list[Contender],
            repeats: int, args: dict) -> dict:
    """Run every scenario (the contenders started when first needed, stopped at the end)."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "args": args,
        "machine": machine(), "sizes": asdict(ctx.sizes),
        "gateway": ({"kind": "simulated", "process": "own process, same 2 cores"}
                    if ctx.simulated else
                    {"kind": "real", "host": ctx.gateway.host, "port": ctx.gateway.port}),
        "contenders": {c.name: c.label for c in contenders}, "scenarios": {}}
    lineup = Lineup(contenders, ctx)
    try:
        for cls in scenarios:
            if cls.needs_sim and not ctx.simulated:
                results["scenarios"][cls.name] = {
                    "title": cls.title, "skipped": "needs the simulated gateway"}
                continue
            log.info("scenario %s", cls.name)
            results["scenarios"][cls.name] = run_scenario(cls, ctx, lineup, repeats)
    finally:
        lineup.stop()
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
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: room for every column
            console = Console(width=150)
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
            cells = [_cell(row["summary"], metric["key"], metric["format"])
                     for metric in sc["metrics"]]
            if "skipped" in row and not row["summary"]:
                cells[0] = "skipped"
            table.add_row(escape(row["label"]), *cells)
        console.print()
        console.print(table)
        params = ", ".join(f"{k}={v}" for k, v in sc["params"].items()
                           if v is not None and not isinstance(v, (dict, list, tuple)))
        console.print(f"[dim]{escape(params)}[/dim]")
        if "gateway" in sc:
            g = sc["gateway"]
            console.print(f"[dim]simulated gateway: {g['cpu_s']:.2f} s CPU on its thread "
                          f"({g['process_cpu_s']:.2f} s its process), "
                          f"{g['pacing_violations']} pacing violations[/dim]")
        for note in sc["notes"]:
            console.print(f"[dim]- {escape(note)}[/dim]")
        for row in sc["contenders"].values():
            if "skipped" in row:
                console.print(f"[dim]- {escape(row['label'])}: {escape(row['skipped'])}[/dim]")
            for err in dict.fromkeys(row.get("errors", [])):
                console.print(f"[red]{escape(row['label'])} failed: {escape(err)}[/red]")
        if "error" in sc:
            console.print(f"[red]failed: {escape(sc['error'])}[/red]")
    if results["checks"]:
        table = Table(title="Targets (medians; counts that must be zero: the worst repeat)",
                      title_justify="left", title_style="bold")
        for col in ("target", "contender", "value", "goal", "met"):
            table.add_column(col, justify="left" if col in ("target", "contender") else "right")
        for c in results["checks"]:
            table.add_row(escape(c["target"]), c["contender"], f"{c['value']:.3g}",
                          f"{c['op']} {c['goal']:g}",
                          "[green]yes[/green]" if c["met"] else "[red]NO[/red]")
        console.print()
        console.print(table)
