"""The simulated gateway alone (``sim_capacity``): bars it serves per second and per CPU
second, to readers that only count bytes; cold (bars built) and warm (cached) passes."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.contenders import Contender
from benchmarks.scenarios.base import SIM_NOW, Context, Metric, Row, Scenario


@dataclass(frozen=True)
class CapacityParams:
    requests: int
    readers: int = 2
    first_weeks_back: int = 20  # each repeat asks for weeks 10 further back (cold again)


class GatewayCapacity(Scenario):
    name = "gateway"
    title = "Simulated gateway capacity: 1-min bars, a week per request, raw-socket readers"
    metrics = [Metric("bars_per_s", "bars/s", "{:,.0f}", True),
               Metric("bars_per_cpu_s", "bars/CPU s", "{:,.0f}", True),
               Metric("gateway_cpu_s", "gateway CPU s", "{:.2f}", False)]
    needs_sim = True
    optional = True
    shared_contenders = False
    notes = ["the gateway runs in the measuring process here (loop thread and bar builder); "
             "two reader processes send every request at once and count bars"]

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.gw = None
        self.weeks_back = self.p.first_weeks_back

    def make_params(self, ctx: Context) -> CapacityParams:
        return CapacityParams(ctx.sizes.capacity_requests)

    def rows(self, contenders: list[Contender]) -> list[Row]:
        return [Row("cold", "cold (bars built)"), Row("warm", "warm (cached)")]

    def setup(self, contenders: list[Contender]) -> None:
        from ibfarm.sim import SimGateway

        self.gw = SimGateway(port=0, now=lambda: SIM_NOW, pacing="off").start()

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        from benchmarks import sim_capacity

        p = self.p
        cold = sim_capacity.run_pass(self.gw, p.readers, p.requests, weeks_back=self.weeks_back)
        warm = sim_capacity.run_pass(self.gw, p.readers, p.requests, weeks_back=self.weeks_back)
        self.weeks_back += 10  # new weeks: the next repeat's first pass builds them
        return {name: {"bars_per_s": r["bars_per_s"], "bars_per_cpu_s": r["bars_per_cpu_s"],
                       "gateway_cpu_s": r["gateway_cpu_s"], "bars": r["bars_sent"]}
                for name, r in (("cold", cold), ("warm", warm))}

    def teardown(self) -> None:
        if self.gw is not None:
            self.gw.stop()
