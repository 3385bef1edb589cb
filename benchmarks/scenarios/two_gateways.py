"""Two gateways: one farm over two simulated gateways against one farm on one, under a
pacing-bound small-bar workload (IB's rules scaled so a window lasts a few seconds).

Each gateway (one IB username) has its own pacing budget, so a farm over two should go twice
as fast when the rules, not the machine, are what limit it::

    farm "one" ── gateway A                  window_max x (windows + 1) requests
    farm "two" ─┬ gateway B                  twice as many, same rules on each
                └ gateway C
    rate = (requests - gateways x window_max) / (last arrival - first arrival)

Arrivals are timed by the simulators as they accept each request (one monotonic clock for the
host's processes); the first window's burst on each gateway is free, hence subtracted. Each
farm's gateways are its own, so neither sees the other's windows; before each measurement
its gateways have been idle for a whole window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.contenders import Contender, FarmContender
from benchmarks.scenarios.base import (
    Context,
    Metric,
    Rig,
    Row,
    Scenario,
    arrival_rate,
    breaches,
    close_all,
    measure_each,
    minutely,
)
from ibfarm.pacing import PacingPolicy

SETUPS = {"one": 1, "two": 2}  # row -> gateways behind its farm


@dataclass(frozen=True)
class GatewaysParams:
    scale: float
    windows: int  # windows after the first burst
    workers_per_gateway: int
    bar_size: str = "30 secs"
    duration: str = "1800 S"

    @property
    def policy(self) -> PacingPolicy:
        return PacingPolicy().scaled(self.scale)

    @property
    def per_gateway(self) -> int:
        return self.policy.window_max * (self.windows + 1)


class TwoGateways(Scenario):
    name = "gateways"
    title = "Two gateways: pacing-bound small bars, a farm on one gateway vs on two"
    metrics = [Metric("rate", "req/s at gateways", "{:.2f}", True),
               Metric("vs_one", "x one gateway", "{:.2f}x", True),
               Metric("of_bound", "of bound", "{:.1%}", True),
               Metric("wall_req_per_s", "req/s wall", "{:.1f}", True),
               Metric("answered", "answered", "{:,d}", True),
               Metric("violations", "violations", "{:d}", False),
               Metric("wall_s", "wall s", "{:.2f}", False)]
    needs_sim = True
    optional = True
    shared_contenders = False

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        p = self.p
        self.requests = minutely(p.per_gateway * max(SETUPS.values()), ctx.now, p.bar_size,
                                 p.duration)
        self.rigs: dict[str, list[Rig]] = {}
        self.farms: dict[str, FarmContender] = {}
        self.repeat = 0

    def make_params(self, ctx: Context) -> GatewaysParams:
        s = ctx.sizes
        return GatewaysParams(s.gateways_scale, s.gateways_windows, s.gateways_workers)

    def params(self) -> dict:
        policy = self.p.policy
        return super().params() | {
            "window_s": policy.window, "window_max": policy.window_max,
            "requests_per_gateway": self.p.per_gateway,
            "bound_req_per_s_per_gateway": policy.window_max / policy.window}

    def describe(self) -> list[str]:
        p, policy = self.p, self.p.policy
        return [f"IB's rules with every window divided by {p.scale:g}: {policy.window_max} "
                f"small-bar requests per {policy.window:g} s per gateway; requests of "
                f"{p.bar_size} bars for {p.duration}, all distinct; the farms' default margin",
                f"{p.per_gateway} requests per gateway ({p.windows} windows after the first "
                f"burst); {p.workers_per_gateway} workers per gateway",
                "rate: (requests - gateways x window_max) / (last arrival - first arrival) at "
                "the simulators; of bound = rate / (gateways x window_max / window); x one "
                "gateway = this repeat's rate over the one-gateway farm's; violations: the "
                "simulators' refusals (small-bar rules, message rate, open requests)"]

    def rows(self, contenders: list[Contender]) -> list[Row]:
        w = self.p.workers_per_gateway
        return [Row("one", f"farm, 1 gateway ({w} workers)", w),
                Row("two", f"farm, 2 gateways ({w} workers each)", 2 * w)]

    def setup(self, contenders: list[Contender]) -> None:
        policy = self.p.policy
        for name, count in SETUPS.items():  # the gateway processes start side by side
            self.rigs[name] = [Rig(policy, self.ctx.now) for _ in range(count)]
        for name, rigs in self.rigs.items():
            for rig in rigs:
                rig.wait_ready()
            farm = FarmContender(self.p.workers_per_gateway, range(10, 20),
                                 gateways=[rig.address for rig in rigs], name=name)
            rigs[0].enlist([farm])  # the first rig stops it
            self.farms[name] = farm

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        order = list(SETUPS) if self.repeat % 2 == 0 else list(reversed(SETUPS))
        self.repeat += 1
        # the farms are named after their rows; a row's failure leaves the other to run
        out = measure_each([self.farms[name] for name in order], lambda f: self._measure(f.name))
        if "rate" in out.get("one", {}) and "rate" in out.get("two", {}):
            out["two"]["vs_one"] = out["two"]["rate"] / out["one"]["rate"]
        return out

    def _measure(self, name: str) -> dict:
        p, policy = self.p, self.p.policy
        rigs, farm = self.rigs[name], self.farms[name]
        for rig in rigs:
            rig.rest(policy.window + 0.1)
            rig.gateway.arrivals()  # forget the warm-up's
        requests = self.requests[:p.per_gateway * len(rigs)]
        before = [rig.gateway.stats() for rig in rigs]
        t = time.perf_counter()
        try:
            tally = farm.tally(requests, max(30.0, 10 * p.windows * policy.window))
            wall = time.perf_counter() - t
        finally:
            for rig in rigs:
                rig.used()
        seen = [rig.gateway.arrivals() for rig in rigs]
        stamps = sorted(s for one in seen for s in one)
        rate = arrival_rate(stamps, len(rigs) * policy.window_max)
        row = tally.metrics() | {
            "wall_s": wall, "rate": rate, "wall_req_per_s": tally.answered / wall,
            "of_bound": rate / (len(rigs) * policy.window_max / policy.window),
            "gateway_requests": [len(one) for one in seen]}
        for rig, b in zip(rigs, before, strict=True):
            for key, value in breaches(b, rig.gateway.stats()).items():
                row[key] = row.get(key, 0) + value
        return row

    def teardown(self) -> None:
        close_all(r for rigs in self.rigs.values() for r in rigs)
