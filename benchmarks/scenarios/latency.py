"""Scenario 4: a tiny request's round trip (``reqCurrentTime``) through every contender, calls
interleaved round-robin so the machine's moods land on all of them alike."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from benchmarks.contenders import Contender
from benchmarks.scenarios.base import Context, Metric, Scenario


@dataclass(frozen=True)
class TinyParams:
    calls: int
    per_request_calls: int  # a connection per call: every fifth round only
    interval_s: float = 0.025  # a round at most every this often (ib_insync's 45 messages/s)


class TinyLatency(Scenario):
    name = "tiny"
    title = "4. A tiny request's round trip (reqCurrentTime)"
    metrics = [Metric("added_ms", "added ms", "{:+.3f}", False),
               Metric("median_ms", "median ms", "{:.3f}", False),
               Metric("p90_ms", "p90 ms", "{:.3f}", False)]
    notes = ["calls go round-robin over the contenders, about 40 per second per connection "
             "(ib_insync holds back more than 45 messages a second); added = a contender's "
             "median minus the one ib_insync connection's median in the same repeat"]

    def make_params(self, ctx: Context) -> TinyParams:
        return TinyParams(ctx.sizes.tiny_rounds, ctx.sizes.tiny_rounds // 5)

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        # not measure_each: the calls interleave, one sample of every contender per round
        samples: dict[str, list[float]] = {c.name: [] for c in contenders}
        for i in range(self.p.calls):
            began = time.perf_counter()
            k = i % len(contenders)  # who goes first after the pause changes every round
            for c in contenders[k:] + contenders[:k]:
                if c.expensive_tiny and i % 5:
                    continue
                t = time.perf_counter()
                c.tiny()
                samples[c.name].append(time.perf_counter() - t)
            time.sleep(max(0.0, self.p.interval_s - (time.perf_counter() - began)))
        out = {}
        for name, s in samples.items():
            s.sort()
            out[name] = {"calls": len(s), "median_ms": statistics.median(s) * 1e3,
                         "p90_ms": s[int(len(s) * 0.9) - 1] * 1e3}
        ref = out.get("gather", {}).get("median_ms")
        for m in out.values():
            m["added_ms"] = m["median_ms"] - ref if ref is not None else float("nan")
        return out
