"""ktrdr's ``DataManager.backfill`` through a farm against the old way (one connection, one
segment at a time), each on an in-process simulated gateway of its own (``bench_backfill``);
both must store the same bars."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.contenders import Contender
from benchmarks.scenarios.base import SIM_NOW, Context, Metric, Row, Scenario


@dataclass(frozen=True)
class BackfillParams:
    jobs: int
    latency_s: float = 0.3
    workers: int = 4
    pacing: str = "ib"


class Backfill(Scenario):
    name = "backfill"
    title = "Backfill: ktrdr DataManager over the farm vs one connection, serial segments"
    metrics = [Metric("wall_s", "wall s", "{:.2f}", False),
               Metric("requests", "requests", "{:,.0f}", False),
               Metric("rows", "rows", "{:,.0f}", False),
               Metric("violations", "violations", "{:d}", False),
               Metric("speedup", "speed-up", "{:.1f}x", True)]
    needs_sim = True
    optional = True
    shared_contenders = False

    def make_params(self, ctx: Context) -> BackfillParams:
        return BackfillParams(ctx.sizes.backfill_jobs)

    def describe(self) -> list[str]:
        p = self.p
        return [f"IB's pacing rules ({p.pacing!r}) and {p.latency_s * 1000:.0f} ms answers on "
                "each side's own simulated gateway; both store the same bars (checked)"]

    def rows(self, contenders: list[Contender]) -> list[Row]:
        return [Row("old-serial", "1 conn, serial segments"),
                Row("farm-dm", f"DataManager, farm {self.p.workers}", self.p.workers)]

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        from benchmarks import bench_backfill

        p = self.p
        both = bench_backfill.compare(bench_backfill.jobs(p.jobs), p.latency_s, p.workers,
                                      p.pacing, now=SIM_NOW)
        out = {name: {"wall_s": both[way]["wall_s"], "rows": both[way]["rows"],
                      "requests": both[way]["gateway_requests"],
                      "violations": both[way]["violations"]}
               for name, way in (("old-serial", "sequential"), ("farm-dm", "farm"))}
        out["farm-dm"]["speedup"] = out["old-serial"]["wall_s"] / out["farm-dm"]["wall_s"]
        return out
