"""Scenarios 1 and 2: large responses (bars per second as pandas) and many small requests with
gateway latency (requests per second against IB's bound). Both run on the run's gateway with
the run's contenders."""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.bounds import ib_bound
from benchmarks.contenders import Contender
from benchmarks.scenarios.base import Context, Metric, Scenario, measure_each, same_bars, weekly


@dataclass(frozen=True)
class LargeParams:
    requests: int
    bar_size: str = "1 min"
    duration: str = "1 W"
    use_rth: bool = False
    timeout_s: float = 300.0


class LargeResponses(Scenario):
    name = "large"
    title = "1. Large responses: 1-min bars, a week per request, as pandas"
    metrics = [Metric("bars_per_s", "bars/s", "{:,.0f}", True),
               Metric("wall_s", "wall s", "{:.3f}", False),
               Metric("gateway_cpu_s", "gateway CPU s", "{:.3f}", False)]
    notes = ["the gateway answers each request once first (untimed), so every contender "
             "reads its cache"]

    def make_params(self, ctx: Context) -> LargeParams:
        return LargeParams(ctx.sizes.large_requests)

    def setup(self, contenders: list[Contender]) -> None:
        p = self.p
        self.requests = weekly(p.requests, self.ctx.now, p.bar_size, p.duration, p.use_rth)
        contenders[0].fetch(self.requests, p.timeout_s)

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        def measure(c: Contender) -> dict:
            t = time.perf_counter()
            frames = c.fetch(self.requests, self.p.timeout_s)
            wall = time.perf_counter() - t
            bars = sum(len(f) for f in frames)
            return {"bars": bars, "wall_s": wall, "bars_per_s": bars / wall}
        out = measure_each(contenders, measure, gateway=lambda c: self.ctx.gateway)
        same_bars(out)
        return out


@dataclass(frozen=True)
class SmallParams:
    requests: int
    latency_s: float | None  # None on a real gateway (its own)
    bar_size: str = "1 hour"
    duration: str = "1 W"
    use_rth: bool = True
    timeout_s: float = 300.0


class SmallRequests(Scenario):
    name = "small"
    title = "2. Many small requests (1-hour bars) with gateway latency"
    metrics = [Metric("req_per_s", "req/s", "{:,.1f}", True),
               Metric("wall_s", "wall s", "{:.2f}", False),
               Metric("of_bound", "bound/wall", "{:.0%}", True),
               Metric("gateway_cpu_s", "gateway CPU s", "{:.3f}", False)]
    notes = ["bound (benchmarks/bounds.py): request k (from 0) leaves no earlier than k // 50 "
             "seconds (IB's 50 messages a second) and no earlier than k // 50 latencies "
             "(50 open requests); the last answer takes one latency more"]

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        p = self.p
        self.requests = weekly(p.requests, ctx.now, p.bar_size, p.duration, p.use_rth)
        self.bound = ib_bound(self.requests, ctx.policy, p.latency_s or 0.0)

    def make_params(self, ctx: Context) -> SmallParams:
        return SmallParams(ctx.sizes.small_requests,
                           ctx.sizes.small_latency if ctx.simulated else None)

    def params(self) -> dict:
        out = super().params()
        if self.p.latency_s is not None:
            out["bound_wall_s"] = self.bound.total_s
        return out

    def setup(self, contenders: list[Contender]) -> None:
        if self.p.latency_s is not None:
            self.ctx.gateway.set(latency=self.p.latency_s)
        time.sleep(1.0)  # the message-rate window of earlier work has passed

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        def measure(c: Contender) -> dict:
            t = time.perf_counter()
            frames = c.fetch(self.requests, self.p.timeout_s)
            wall = time.perf_counter() - t
            n = len(frames)
            row = {"requests": n, "bars": sum(len(f) for f in frames), "wall_s": wall,
                   "req_per_s": n / wall}
            if self.p.latency_s is not None:
                row["of_bound"] = self.bound.total_s / wall
            return row

        def pause(c: Contender) -> None:
            # farms on one gateway share one pacer: one message window between them
            if c.name.startswith("farm"):
                time.sleep(1.0)
        out = measure_each(contenders, measure, gateway=lambda c: self.ctx.gateway,
                           after=pause)
        same_bars(out)
        return out

    def teardown(self) -> None:
        if self.p.latency_s is not None:
            self.ctx.gateway.set(latency=0.0)
