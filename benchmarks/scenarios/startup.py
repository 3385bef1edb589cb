"""Scenario 5: cold start (a fresh contender to its first answer) and memory per connection
(measured in a fresh process per contender, so one's memory never counts for another)."""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from datetime import datetime

import psutil

from benchmarks.contenders import Contender, make_contenders
from benchmarks.scenarios.base import MB, Context, Metric, Scenario, measure_each, weekly
from ibfarm.pacing import PacingPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartupParams:
    memory_after: str = "1 min bars, 1 W, one request per connection"
    probe_timeout_s: float = 120.0


class StartupMemory(Scenario):
    name = "startup"
    title = "5. Cold start and memory"
    metrics = [Metric("cold_start_s", "cold start s", "{:.3f}", False),
               Metric("all_ready_s", "all conns s", "{:.3f}", False),
               Metric("per_conn_mb", "MB per conn", "{:.1f}", False),
               Metric("total_mb", "total MB", "{:.1f}", False)]
    notes = ["cold start: from creating the contender to the answer of its first tiny request "
             "(the farm's forkserver already runs; the first farm in a fresh process pays about "
             "0.2 s more to start it); all conns: until every connection has answered",
             "memory (one sample, in a fresh process per contender, after one week of 1-min "
             "bars per connection): farm = each worker's RSS and the caller's added RSS; "
             "in-process baselines = the caller's added RSS; per conn = total / connections"]

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.memory: dict[str, dict] = {}

    def make_params(self, ctx: Context) -> StartupParams:
        return StartupParams()

    def setup(self, contenders: list[Contender]) -> None:
        for c in contenders:
            try:
                self.memory[c.name] = _memory_in_child(c.name, self.ctx,
                                                       self.p.probe_timeout_s)
            except Exception as exc:
                log.warning("memory of %s: %r", c.name, exc)
                self.memory[c.name] = {"memory_error": repr(exc)}

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        ctx = self.ctx

        def measure(c: Contender) -> dict:
            fresh = make_contenders([c.name], id_offset=400)[0]
            try:
                t = time.perf_counter()
                fresh.start(ctx.gateway.host, ctx.gateway.port, ctx.policy)
                fresh.tiny()
                first = time.perf_counter() - t
                fresh.warm()
                every = time.perf_counter() - t
            finally:
                fresh.stop()
            return {"cold_start_s": first, "all_ready_s": every, **self.memory.get(c.name, {})}
        return measure_each(contenders, measure)


def _memory_in_child(name: str, ctx: Context, timeout: float) -> dict:
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    # not a daemon: a farm in it starts worker processes of its own
    proc = spawn.Process(target=_memory_probe, name=f"bench-memory-{name}",
                         args=(child, name, ctx.gateway.host, ctx.gateway.port, ctx.now,
                               ctx.policy))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"memory probe of {name} took over {timeout} s")
        result = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()
    if isinstance(result, BaseException):
        raise result
    return result


def _memory_probe(conn, name: str, host: str, port: int, now: datetime,
                  policy: PacingPolicy) -> None:
    try:
        me = psutil.Process()
        gc.collect()
        base = me.memory_info().rss
        contender = make_contenders([name], id_offset=800)[0]
        contender.start(host, port, policy)
        try:
            contender.warm()
            contender.fetch(weekly(contender.connections, now, "1 min", "1 W"), 120)
            gc.collect()
            added = me.memory_info().rss - base
            workers = [psutil.Process(pid).memory_full_info()
                       for pid in contender.worker_pids()]
        finally:
            contender.stop()
        rss = [w.rss for w in workers]
        total = added + sum(rss)
        result = {"caller_added_mb": added / MB, "total_mb": total / MB,
                  "per_conn_mb": total / MB / contender.connections}
        if workers:
            result.update(worker_rss_mb=max(rss) / MB,
                          worker_uss_mb=max(w.uss for w in workers) / MB,
                          worker_pss_mb=max(w.pss for w in workers) / MB)
        conn.send(result)
    except BaseException as exc:  # reported to the parent
        conn.send(RuntimeError(f"memory probe of {name}: {exc!r}"))
    finally:
        conn.close()
