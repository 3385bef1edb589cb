"""Scale: backfill loads of a few hundred to tens of thousands of requests, each contender's
wall time against the shortest time IB's rules and the gateway's answer time allow.

Per size (a ``ScaleTier``: requests, pacing scale, answer latency, pacer margin)::

    size's gateway (one simulated gateway per pacing scale, its latency set per size)
      └─ every contender in turn: tally(requests) ─► answered / failed / timed out,
         wall, bound (benchmarks/bounds.py), wall / bound, the gateway's breaches

The requests are a backfill's: 8 symbols x the last 52 weeks, one week of 1-hour bars each,
in turn (past 416 requests the same weeks again). Bars of an hour are outside IB's small-bar
rules, so the message rate and the open-request limit bind. A contender whose
``most_requests`` is below a size is skipped at that size, with its reason (and, when it ran
the size before, how long the larger one would take at its rate then).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from benchmarks.bounds import Bound, ib_bound
from benchmarks.contenders import Contender, FarmContender
from benchmarks.scenarios.base import (
    SYMBOLS,
    Context,
    Metric,
    Rig,
    Row,
    ScaleTier,
    Scenario,
    close_all,
    farm_counters,
    farm_moved,
    measure_each,
    weekly,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleParams:
    tiers: tuple[ScaleTier, ...]
    bar_size: str = "1 hour"
    duration: str = "1 W"
    use_rth: bool = True
    weeks: int = 52  # distinct weeks per symbol
    deadline_factor: float = 4.0  # a batch is given this many bounds, plus deadline_extra_s
    deadline_extra_s: float = 30.0


def _rig_key(tier: ScaleTier) -> tuple[float, float]:
    return tier.pacing_scale, tier.margin


def _row(name: str, tier: ScaleTier) -> str:
    return f"{name}@{tier.requests}"


class Scale(Scenario):
    name = "scale"
    title = "Scale: backfill loads, wall time over the bound IB's rules and latency allow"
    metrics = [Metric("wall_per_bound", "wall/bound", "{:.2f}", False),
               Metric("wall_s", "wall s", "{:.2f}", False),
               Metric("bound_s", "bound s", "{:.2f}", False),
               Metric("req_per_s", "req/s", "{:,.0f}", True),
               Metric("answered", "answered", "{:,d}", True),
               Metric("failed", "failed", "{:,d}", False),
               Metric("timed_out", "timed out", "{:,d}", False),
               Metric("violations", "violations", "{:d}", False),
               Metric("gateway_cpu_s", "gateway CPU s", "{:.1f}", False)]
    needs_sim = True
    optional = True
    shared_contenders = False

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        p = self.p
        most = max(t.requests for t in p.tiers)
        self.all_requests = weekly(most, ctx.now, p.bar_size, p.duration, p.use_rth,
                                   weeks=p.weeks)
        self.bounds: dict[ScaleTier, Bound] = {
            t: ib_bound(self.all_requests[:t.requests], t.policy, t.latency) for t in p.tiers}
        self.rigs: dict[tuple[float, float], Rig] = {}

    def make_params(self, ctx: Context) -> ScaleParams:
        return ScaleParams(ctx.sizes.scale_tiers)

    def params(self) -> dict:
        return super().params() | {
            "bounds": {t.requests: self.bounds[t].as_dict() for t in self.p.tiers}}

    def describe(self) -> list[str]:
        p = self.p
        notes = [
            "bound (benchmarks/bounds.py) = max(message rate: ((N - 1) // message_rate) x "
            "message_window; open requests: ((N - 1) // max_open_requests) x latency; "
            "small-bar rules for bars of 30 s or less: none here, 1-hour bars) + latency (the "
            "last answer); each term alone is a lower bound, so wall/bound >= 1, and the "
            "pacers' margin alone costs 1 + margin / message_window"]
        for t in p.tiers:
            b, policy = self.bounds[t], t.policy
            rules = ("IB's rules" if t.pacing_scale == 1 else
                     f"IB's rules with every window divided by {t.pacing_scale:g} "
                     f"({policy.message_rate} messages per {policy.message_window:g} s)")
            notes.append(f"{t.requests:,} requests: {rules}, answers after "
                         f"{t.latency * 1000:.0f} ms, pacer margin {t.margin:g} s; bound "
                         f"{b.total_s:.2f} s (message rate {b.message_s:.2f}, open requests "
                         f"{b.open_s:.2f}, + {b.latency:g}; {b.binding} binds)")
        notes += [
            f"requests: {len(SYMBOLS)} symbols x the last {p.weeks} weeks, one week of "
            f"{p.bar_size} regular-hours bars each, in turn (past {len(SYMBOLS) * p.weeks} "
            "requests the same weeks again); each gateway answered them once before timing, "
            "so answers come from its cache",
            "answered / failed / timed out: what became of every request within "
            f"{p.deadline_factor:g} x bound + {p.deadline_extra_s:g} s; violations: the "
            "simulator's refusals (small-bar rules, 100 message rate, 322 open requests)",
            "nothing is converted to pandas: a contender's answer is its own (an Arrow table, "
            "ib_insync's bar list); the baselines keep at most 50 requests at their pacer",
            "one simulated gateway per pacing scale; on it the contenders run one after "
            "another, each warmed (every connection up) and then a message window apart",
            "margins: the farm's default (0.05 s) under IB's own windows; under scaled ones "
            "a margin that holds on a loaded machine but is not half the window (the default "
            "0.05 s on a 0.1 s window alone makes wall/bound 1.5)"]
        return notes

    def rows(self, contenders: list[Contender]) -> list[Row]:
        return [Row(_row(c.name, t), f"{c.label} · {t.requests:,}", c.connections)
                for t in self.p.tiers for c in contenders]

    def setup(self, contenders: list[Contender]) -> None:
        names = [c.name for c in contenders]
        for tier in self.p.tiers:  # the gateway processes start side by side
            if _rig_key(tier) not in self.rigs:
                self.rigs[_rig_key(tier)] = Rig(tier.policy, self.ctx.now, tier.latency)
        for i, ((_, margin), rig) in enumerate(self.rigs.items()):
            rig.wait_ready().fresh(names, id_offset=2000 + 1000 * i, margin=margin)
            self._prime(rig)

    def _prime(self, rig: Rig) -> None:
        """Every distinct request of the sizes on ``rig`` answered once (untimed), through a
        farm if one runs: the gateway then answers them from its cache."""
        most = max(t.requests for t in self.p.tiers if self.rigs[_rig_key(t)] is rig)
        distinct = self.all_requests[:min(most, len(SYMBOLS) * self.p.weeks)]
        primer = next((c for c in rig.contenders if isinstance(c, FarmContender)),
                      rig.contenders[0])
        tally = primer.tally(distinct, 300)
        if tally.answered != len(distinct):
            log.warning("priming %s: %s", rig.address, tally.metrics())
        rig.used()

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        p = self.p
        out: dict[str, dict] = {}
        rates: dict[str, tuple[int, float]] = {}  # name -> (requests, req/s) at its last size
        for tier in p.tiers:
            rig, policy, bound = self.rigs[_rig_key(tier)], tier.policy, self.bounds[tier]
            rig.gateway.set(latency=tier.latency)
            requests = self.all_requests[:tier.requests]
            timeout = p.deadline_factor * bound.total_s + p.deadline_extra_s
            go, skip = [], []
            for c in contenders:
                fits = c.most_requests is None or tier.requests <= c.most_requests
                (go if fits else skip).append(rig.contender(c.name))

            def measure(c: Contender, requests=requests, timeout=timeout, bound=bound,
                        rig=rig, policy=policy) -> dict:
                rig.ready(c, policy.message_window)
                before = farm_counters(c)
                t = time.perf_counter()
                tally = c.tally(requests, timeout)
                wall = time.perf_counter() - t
                row = tally.metrics() | {
                    "wall_s": wall, "bound_s": bound.total_s,
                    "wall_per_bound": wall / bound.total_s, "req_per_s": tally.answered / wall}
                return row | farm_moved(c, before)

            rows = measure_each(go, measure, gateway=lambda c, rig=rig: rig.gateway,
                                after=lambda c, rig=rig: rig.used())
            for name, row in rows.items():
                out[_row(name, tier)] = row
                if "req_per_s" in row and row["req_per_s"] > 0:
                    rates[name] = (tier.requests, row["req_per_s"])
            for c in skip:
                reason = f"skipped at {tier.requests:,} requests: {c.why_fewer}"
                if c.name in rates:
                    n, rate = rates[c.name]
                    reason += (f" (at its {n:,}-request rate, {rate:,.0f} req/s, these would "
                               f"take about {tier.requests / rate:,.0f} s)")
                out[_row(c.name, tier)] = {"skipped": reason}
        return out

    def teardown(self) -> None:
        close_all(self.rigs.values())
