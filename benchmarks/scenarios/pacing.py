"""Scenario 3: small-bar requests bound by IB's pacing rules (scaled), each contender on a
simulated gateway of its own; the rate the gateway accepted them at, against the rules' bound.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from benchmarks.contenders import Contender, FarmContender
from benchmarks.scenarios.base import (
    Context,
    Metric,
    Rig,
    Scenario,
    arrival_rate,
    close_all,
    measure_each,
    minutely,
)
from ibfarm.pacing import PacingPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacingParams:
    scale: float
    windows: int  # windows after the first burst
    pacing_margin_s: float
    bar_size: str = "1 secs"
    duration: str = "60 S"

    @property
    def policy(self) -> PacingPolicy:
        return PacingPolicy().scaled(self.scale)

    @property
    def requests(self) -> int:
        return self.policy.window_max * (self.windows + 1)


class PacingBound(Scenario):
    name = "pacing"
    title = "3. Pacing-bound small bars under scaled IB rules"
    metrics = [Metric("of_bound", "of bound", "{:.1%}", True),
               Metric("rate", "req/s", "{:.2f}", True),
               Metric("violations", "violations", "{:d}", False),
               Metric("wall_s", "wall s", "{:.2f}", False)]
    needs_sim = True
    shared_contenders = False
    notes = ["policy: IB's rules with every window divided by the scale; the pacers' margin "
             "(added to every window) is pacing_margin_s instead of the default 0.05 s, which "
             "would be large next to scaled windows",
             "every gateway gets one untimed pass first, so it answers from its cache",
             "N = window_max x (windows + 1) requests of 60 bars; achieved rate = "
             "(N - window_max) / (last arrival - first arrival), arrivals timed by the simulator "
             "as it accepts each request: the first window's burst is free, so a client that "
             "refills the window the moment it may scores 100% (less the margin); "
             "bound = window_max / window; wall = first submit to last answer",
             "each contender has a simulated gateway of its own (one's window never holds "
             "another's requests); violations are counted by that simulator (small-bar rules, "
             "message rate, open requests)"]

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        p = self.p
        self.requests = minutely(p.requests, ctx.now, p.bar_size, p.duration)
        self.rigs: dict[str, Rig] = {}  # one gateway (and contender) per contender name

    def make_params(self, ctx: Context) -> PacingParams:
        s = ctx.sizes
        return PacingParams(s.pacing_scale, s.pacing_windows, s.pacing_margin)

    def params(self) -> dict:
        policy = self.p.policy
        return super().params() | {"window_s": policy.window, "window_max": policy.window_max,
                                   "requests": self.p.requests,
                                   "bound_req_per_s": policy.window_max / policy.window}

    def setup(self, contenders: list[Contender]) -> None:
        p, policy = self.p, self.p.policy
        for c in contenders:  # the gateway processes start side by side
            self.rigs[c.name] = Rig(policy, self.ctx.now)
        for rig in self.rigs.values():
            rig.wait_ready()
        self._prime(policy)
        for name, rig in self.rigs.items():
            rig.fresh([name], id_offset=1200, margin=p.pacing_margin_s)

    def _prime(self, policy: PacingPolicy) -> None:
        """One untimed pass on every gateway at once, through a 2-worker farm with the
        default margin: each gateway has then built (and cached) these bars."""
        errors: list[BaseException] = []

        def prime(rig: Rig, offset: int) -> None:
            farm = FarmContender(2, range(offset, offset + 10))
            try:
                farm.start(rig.gateway.host, rig.gateway.port, policy)
                farm.fetch(self.requests, 120)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                farm.stop()
                rig.used()

        threads = [threading.Thread(target=prime, args=(rig, 1600 + 10 * i), daemon=True)
                   for i, rig in enumerate(self.rigs.values())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        if errors:
            log.warning("priming the pacing gateways: %r", errors[0])

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        p, policy = self.p, self.p.policy
        first = policy.window_max
        # ten times the ideal time, and at least 30 s, before a contender is given up on
        timeout = max(30.0, 10 * p.windows * policy.window)
        own = [self.rigs[c.name].contender(c.name) for c in contenders]

        def measure(c: Contender) -> dict:
            rig = self.rigs[c.name]
            rig.rest(policy.window + 0.1)  # this gateway's window is empty, as at the first
            rig.gateway.arrivals()  # forget the warm-up's
            t = time.perf_counter()
            frames = c.fetch(self.requests, timeout)
            wall = time.perf_counter() - t
            seen = sorted(rig.gateway.arrivals())
            rate = arrival_rate(seen, first)
            return {"requests": len(frames), "wall_s": wall, "rate": rate,
                    "wall_rate": (len(self.requests) - first) / wall,
                    "of_bound": rate / (policy.window_max / policy.window)}
        return measure_each(own, measure, gateway=lambda c: self.rigs[c.name].gateway,
                            after=lambda c: self.rigs[c.name].used())

    def teardown(self) -> None:
        close_all(self.rigs.values())
