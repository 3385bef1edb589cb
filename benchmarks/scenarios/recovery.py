"""Scenario 6: in-flight work after a fault: a farm worker SIGKILLed, or the gateway restarted;
how long after the fault the last answer came."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.contenders import Contender
from benchmarks.scenarios.base import Context, Metric, Scenario, measure_each, weekly


@dataclass(frozen=True)
class RecoveryParams:
    requests: int
    latency_s: float
    restart_down_s: float
    bar_size: str = "1 hour"
    duration: str = "1 W"
    fault_after_s: float = 0.1
    timeout_s: float = 120.0


class Recovery(Scenario):
    name = "recovery"
    title = "6. Recovery: in-flight work after a worker SIGKILL / a gateway restart"
    metrics = [Metric("restart_after_s", "after restart s", "{:.2f}", False),
               Metric("kill_after_s", "after kill s", "{:.2f}", False),
               Metric("clean_wall_s", "no fault s", "{:.2f}", False)]
    notes = ["N requests of 1-hour bars, answers after the recovery latency; 0.1 s after "
             "submitting, one worker is SIGKILLed (farm only: the baselines run in the "
             "caller's process) or the gateway restarts (port closed for restart_down s); "
             "after kill = last answer - kill; after restart = last answer - gateway back up; "
             "no fault = the same work undisturbed"]

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        p = self.p
        self.requests = weekly(p.requests, ctx.now, p.bar_size, p.duration, use_rth=True)

    def make_params(self, ctx: Context) -> RecoveryParams:
        s = ctx.sizes
        return RecoveryParams(s.recovery_requests, s.recovery_latency, s.restart_down)

    def setup(self, contenders: list[Contender]) -> None:
        if self.ctx.simulated:
            self.ctx.gateway.set(latency=self.p.latency_s)

    def _timed(self, c: Contender, fault: Callable[[], Any] | None) -> tuple[float, Any]:
        c.warm()
        box: list = []
        timer = None
        if fault is not None:
            timer = threading.Timer(self.p.fault_after_s, lambda: box.append(fault()))
            timer.daemon = True
            timer.start()
        t = time.perf_counter()
        frames = c.fetch(self.requests, self.p.timeout_s)
        done = time.monotonic()
        wall = time.perf_counter() - t
        if timer is not None:
            timer.join(30)
        if len(frames) != len(self.requests):
            raise RuntimeError(f"{c.name}: {len(frames)} of {len(self.requests)} answers")
        return wall, (done, box[0] if box else None)

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        gateway = self.ctx.gateway

        def measure(c: Contender) -> dict:
            m: dict[str, Any] = {}
            m["clean_wall_s"], _ = self._timed(c, None)
            if c.worker_pids():
                def kill() -> tuple[float, int | None]:
                    pid = c.kill_worker()
                    return time.monotonic(), pid
                _, (done, (killed_at, _pid)) = self._timed(c, kill)
                m["kill_after_s"] = done - killed_at
            if self.ctx.simulated:
                _, (done, (_down_at, up_at)) = self._timed(
                    c, lambda: gateway.restart(self.p.restart_down_s))
                m["restart_after_s"] = done - up_at
            return m
        return measure_each(contenders, measure)

    def teardown(self) -> None:
        if self.ctx.simulated:
            self.ctx.gateway.set(latency=0.0)
