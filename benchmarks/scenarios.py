"""The six scenarios. Each gets every contender and the same requests, and returns one repeat.

A scenario's ``run(ctx, contenders)`` measures every contender once (in the rotated order the
harness gives, so a slow moment of the machine lands on a different contender each repeat) and
returns ``{contender name: {metric: value}}``. ``setup``/``teardown`` bracket all repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psutil

from benchmarks.contenders import Contender, FarmContender, make_contenders
from benchmarks.gateway import SimGatewayProcess
from ibfarm import BarRequest
from ibfarm.pacing import PacingPolicy

log = logging.getLogger(__name__)

SYMBOLS = ["AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL"]
#: The simulated gateway's fixed clock: every run asks for the same bars.
SIM_NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)
MB = 2 ** 20


@dataclass
class Sizes:
    """How big each scenario is (``--quick`` shrinks them)."""

    large_requests: int = 24  # 1-minute bars, one week each
    small_requests: int = 200  # 1-hour bars
    small_latency: float = 0.2  # the gateway's answer latency in scenario 2
    pacing_scale: float = 120.0  # IB's windows divided by this
    pacing_margin: float = 0.02  # the pacer's margin in the pacing scenario (default 0.05)
    pacing_windows: int = 2  # windows after the first burst: window_max x (this + 1) requests
    tiny_rounds: int = 200  # tiny requests per contender per repeat
    recovery_requests: int = 40
    recovery_latency: float = 0.3
    restart_down: float = 0.5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(large_requests=8, small_requests=60, pacing_scale=300.0, pacing_windows=1,
                   pacing_margin=0.01,
                   tiny_rounds=60, recovery_requests=16)


@dataclass
class Context:
    """What every scenario needs: the gateway, the clock of its data, sizes, targets."""

    gateway: Any  # SimGatewayProcess or RealGateway
    now: datetime
    sizes: Sizes
    policy: PacingPolicy = field(default_factory=PacingPolicy)
    contender_names: list[str] | None = None

    @property
    def simulated(self) -> bool:
        return self.gateway.simulated


def _weekly(n: int, now: datetime, bar_size: str, duration: str,
            use_rth: bool = False) -> list[BarRequest]:
    """``n`` distinct requests: the symbols in turn, each time one more week back."""
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], bar_size, duration, use_rth=use_rth,
                       end=now - timedelta(weeks=1 + i // len(SYMBOLS))) for i in range(n)]


def _gateway_delta(ctx: Context, before: dict | None) -> dict:
    if before is None:
        return {}
    after = ctx.gateway.stats()
    return {"gateway_cpu_s": after["cpu_seconds"] - before["cpu_seconds"],
            "violations": after["pacing_violations"] - before["pacing_violations"]}


def _stats(ctx: Context) -> dict | None:
    return ctx.gateway.stats() if ctx.simulated else None


def _guarded(out: dict[str, dict], c: Contender, measure: Callable[[], dict]) -> None:
    """``out[c.name] = measure()``; a failure is recorded for that contender alone."""
    try:
        out[c.name] = measure()
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("%s failed: %r", c.name, exc)
        out[c.name] = {"error": f"{type(exc).__name__}: {exc}"}


class Scenario:
    """One scenario: a name, a title, what it reports, and how to run one repeat."""

    name = ""
    title = ""
    #: (metric, label, format, higher is better) shown in the table; the first is the headline
    metrics: list[tuple[str, str, str, bool]] = []
    needs_sim = False
    notes: list[str] = []
    #: rows are the scenario's own (not the contenders), labelled by ``row_labels``
    own_rows = False
    row_labels: dict[str, str] = {}
    #: run only when named (``--scenarios``), not by default
    optional = False

    def params(self, ctx: Context) -> dict:
        return {}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        pass

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        raise NotImplementedError

    def teardown(self, ctx: Context, contenders: list[Contender]) -> None:
        pass


class LargeResponses(Scenario):
    name = "large"
    title = "1. Large responses: 1-min bars, a week per request, as pandas"
    metrics = [("bars_per_s", "bars/s", "{:,.0f}", True), ("wall_s", "wall s", "{:.3f}", False),
               ("gateway_cpu_s", "gateway CPU s", "{:.3f}", False)]

    def params(self, ctx: Context) -> dict:
        return {"requests": ctx.sizes.large_requests, "bar_size": "1 min", "duration": "1 W",
                "use_rth": False}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        self.requests = _weekly(ctx.sizes.large_requests, ctx.now, "1 min", "1 W")
        # the gateway answers each request once first, so every contender reads its cache
        contenders[0].fetch(self.requests, 300)

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for c in contenders:
            def measure(c: Contender = c) -> dict:
                before = _stats(ctx)
                t = time.perf_counter()
                frames = c.fetch(self.requests, 300)
                wall = time.perf_counter() - t
                bars = sum(len(f) for f in frames)
                return {"bars": bars, "wall_s": wall, "bars_per_s": bars / wall,
                        **_gateway_delta(ctx, before)}
            _guarded(out, c, measure)
        _same_bars(out)
        return out


def _same_bars(out: dict[str, dict]) -> None:
    counts = {name: m["bars"] for name, m in out.items() if "bars" in m}
    if len(set(counts.values())) > 1:
        raise RuntimeError(f"contenders returned different bars: {counts}")


class SmallRequests(Scenario):
    name = "small"
    title = "2. Many small requests (1-hour bars) with gateway latency"
    metrics = [("req_per_s", "req/s", "{:,.1f}", True), ("wall_s", "wall s", "{:.2f}", False),
               ("of_bound", "bound/wall", "{:.0%}", True),
               ("gateway_cpu_s", "gateway CPU s", "{:.3f}", False)]
    notes = ["bound: request k (from 0) leaves no earlier than k // 50 seconds (IB's 50 "
             "messages a second) and no earlier than k // 50 latencies (50 open requests); "
             "the last answer takes one latency more. ib_insync itself sends at most 45 "
             "messages a second per connection"]

    def params(self, ctx: Context) -> dict:
        n, lat = ctx.sizes.small_requests, ctx.sizes.small_latency
        return {"requests": n, "bar_size": "1 hour", "duration": "1 W",
                "latency_s": lat if ctx.simulated else None,
                "bound_wall_s": self._bound(ctx) if ctx.simulated else None}

    def _bound(self, ctx: Context) -> float:
        # request k (from 0) cannot leave before k // 50 message windows have passed, nor
        # before the answer to request k - 50 has freed its open slot
        p, n, lat = ctx.policy, ctx.sizes.small_requests, ctx.sizes.small_latency
        last = n - 1
        sent = max(last // p.message_rate * p.message_window,
                   last // p.max_open_requests * lat)
        return sent + lat

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        self.requests = _weekly(ctx.sizes.small_requests, ctx.now, "1 hour", "1 W",
                                use_rth=True)
        if ctx.simulated:
            ctx.gateway.set(latency=ctx.sizes.small_latency)
        time.sleep(1.0)  # the message-rate window of earlier work has passed

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for c in contenders:
            def measure(c: Contender = c) -> dict:
                before = _stats(ctx)
                t = time.perf_counter()
                frames = c.fetch(self.requests, 300)
                wall = time.perf_counter() - t
                n = len(frames)
                m = {"requests": n, "bars": sum(len(f) for f in frames), "wall_s": wall,
                     "req_per_s": n / wall, **_gateway_delta(ctx, before)}
                if ctx.simulated:
                    m["of_bound"] = self._bound(ctx) / wall
                return m
            _guarded(out, c, measure)
            # farms on one gateway share one pacer: one message window between them
            if c.name.startswith("farm"):
                time.sleep(1.0)
        _same_bars(out)
        return out

    def teardown(self, ctx: Context, contenders: list[Contender]) -> None:
        if ctx.simulated:
            ctx.gateway.set(latency=0.0)


class PacingBound(Scenario):
    name = "pacing"
    title = "3. Pacing-bound small bars under scaled IB rules"
    metrics = [("of_bound", "of bound", "{:.1%}", True), ("rate", "req/s", "{:.2f}", True),
               ("violations", "violations", "{:d}", False), ("wall_s", "wall s", "{:.2f}", False)]
    needs_sim = True
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
             "another's requests); violations are counted by that simulator"]

    def policy(self, ctx: Context) -> PacingPolicy:
        return PacingPolicy().scaled(ctx.sizes.pacing_scale)

    def params(self, ctx: Context) -> dict:
        p = self.policy(ctx)
        return {"scale": ctx.sizes.pacing_scale, "window_s": p.window, "window_max": p.window_max,
                "requests": p.window_max * (ctx.sizes.pacing_windows + 1),
                "bound_req_per_s": p.window_max / p.window, "bar_size": "1 secs",
                "duration": "60 S", "pacing_margin_s": ctx.sizes.pacing_margin}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        policy = self.policy(ctx)
        n = policy.window_max * (ctx.sizes.pacing_windows + 1)
        # distinct requests (no identical ones), spread over the symbols
        self.requests = [BarRequest(SYMBOLS[i % len(SYMBOLS)], "1 secs", "60 S",
                                    end=ctx.now - timedelta(minutes=1 + i // len(SYMBOLS)),
                                    use_rth=False) for i in range(n)]
        self.gateways: dict[str, SimGatewayProcess] = {}
        self.own: dict[str, Contender] = {}
        self.last_end: dict[str, float] = {}
        fresh = make_contenders([c.name for c in contenders], id_offset=1200)
        for c in fresh:  # the gateway processes start side by side
            self.gateways[c.name] = SimGatewayProcess(policy, ctx.now, wait=False)
        for gw in self.gateways.values():
            gw.wait_ready()
        self._prime(policy)
        for c in fresh:
            gw = self.gateways[c.name]
            self.own[c.name] = c
            c.margin = ctx.sizes.pacing_margin
            c.start(gw.host, gw.port, policy)
            c.warm()

    def _prime(self, policy: PacingPolicy) -> None:
        """One untimed pass on every gateway at once, through a 2-worker farm with the
        default margin: each gateway has then built (and cached) these bars."""
        errors: list[BaseException] = []

        def prime(name: str, gw: SimGatewayProcess, offset: int) -> None:
            farm = FarmContender(2, range(offset, offset + 10))
            try:
                farm.start(gw.host, gw.port, policy)
                farm.fetch(self.requests, 120)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                farm.stop()
                self.last_end[name] = time.monotonic()

        threads = [threading.Thread(target=prime, args=(name, gw, 1600 + 10 * i), daemon=True)
                   for i, (name, gw) in enumerate(self.gateways.items())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        if errors:
            log.warning("priming the pacing gateways: %r", errors[0])

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        policy = self.policy(ctx)
        n, first = len(self.requests), policy.window_max
        # ten times the ideal time, and at least 30 s, before a contender is given up on
        timeout = max(30.0, 10 * ctx.sizes.pacing_windows * policy.window)
        out: dict[str, dict] = {}
        for c in (self.own[c.name] for c in contenders):
            gw = self.gateways[c.name]
            # this gateway's window must be empty, as at the first repeat
            rest = self.last_end.get(c.name, 0) + policy.window + 0.1 - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            before = gw.stats()
            gw.arrivals()  # forget the warm-up's

            def measure(c: Contender = c, gw: SimGatewayProcess = gw,
                        before: dict = before) -> dict:
                t = time.perf_counter()
                frames = c.fetch(self.requests, timeout)
                wall = time.perf_counter() - t
                after = gw.stats()
                seen = sorted(gw.arrivals())
                rate = (len(seen) - first) / (seen[-1] - seen[0])
                return {
                    "requests": len(frames), "wall_s": wall, "rate": rate,
                    "wall_rate": (n - first) / wall,
                    "of_bound": rate / (policy.window_max / policy.window),
                    "violations": after["pacing_violations"] - before["pacing_violations"],
                    "violated_rules": after["pacing_rules"],
                    "gateway_cpu_s": after["cpu_seconds"] - before["cpu_seconds"]}
            _guarded(out, c, measure)
            if "error" in out[c.name]:
                out[c.name]["violations"] = (gw.stats()["pacing_violations"]
                                             - before["pacing_violations"])
            self.last_end[c.name] = time.monotonic()
        return out

    def teardown(self, ctx: Context, contenders: list[Contender]) -> None:
        for c in getattr(self, "own", {}).values():
            with contextlib.suppress(Exception):
                c.stop()
        for gw in getattr(self, "gateways", {}).values():
            gw.stop()


class TinyLatency(Scenario):
    name = "tiny"
    title = "4. A tiny request's round trip (reqCurrentTime)"
    metrics = [("added_ms", "added ms", "{:+.3f}", False), ("median_ms", "median ms", "{:.3f}",
                                                              False),
               ("p90_ms", "p90 ms", "{:.3f}", False)]
    notes = ["calls go round-robin over the contenders, about 40 per second per connection "
             "(ib_insync holds back more than 45 messages a second); added = a contender's "
             "median minus the one ib_insync connection's median in the same repeat"]

    def params(self, ctx: Context) -> dict:
        return {"calls": ctx.sizes.tiny_rounds, "per_request_calls": ctx.sizes.tiny_rounds // 5}

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        samples: dict[str, list[float]] = {c.name: [] for c in contenders}
        for i in range(ctx.sizes.tiny_rounds):
            began = time.perf_counter()
            k = i % len(contenders)  # who goes first after the pause changes every round
            for c in contenders[k:] + contenders[:k]:
                if c.expensive_tiny and i % 5:
                    continue
                t = time.perf_counter()
                c.tiny()
                samples[c.name].append(time.perf_counter() - t)
            time.sleep(max(0.0, 0.025 - (time.perf_counter() - began)))
        out = {}
        for name, s in samples.items():
            s.sort()
            out[name] = {"calls": len(s), "median_ms": statistics.median(s) * 1e3,
                         "p90_ms": s[int(len(s) * 0.9) - 1] * 1e3}
        ref = out.get("gather", {}).get("median_ms")
        for m in out.values():
            m["added_ms"] = m["median_ms"] - ref if ref is not None else float("nan")
        return out


class StartupMemory(Scenario):
    name = "startup"
    title = "5. Cold start and memory"
    metrics = [("cold_start_s", "cold start s", "{:.3f}", False),
               ("all_ready_s", "all conns s", "{:.3f}", False),
               ("per_conn_mb", "MB per conn", "{:.1f}", False),
               ("total_mb", "total MB", "{:.1f}", False)]
    notes = ["cold start: from creating the contender to the answer of its first tiny request "
             "(the farm's forkserver already runs; the first farm in a fresh process pays about "
             "0.2 s more to start it); all conns: until every connection has answered",
             "memory (one sample, in a fresh process per contender, after one week of 1-min "
             "bars per connection): farm = each worker's RSS and the caller's added RSS; "
             "in-process baselines = the caller's added RSS; per conn = total / connections"]

    def params(self, ctx: Context) -> dict:
        return {"memory_after": "1 min bars, 1 W, one request per connection"}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        self.memory: dict[str, dict] = {}
        for c in contenders:
            try:
                self.memory[c.name] = _memory_in_child(c.name, ctx)
            except Exception as exc:
                log.warning("memory of %s: %r", c.name, exc)
                self.memory[c.name] = {"memory_error": repr(exc)}

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for c in contenders:
            def measure(c: Contender = c) -> dict:
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
                return {"cold_start_s": first, "all_ready_s": every,
                        **self.memory.get(c.name, {})}
            _guarded(out, c, measure)
        return out


def _memory_in_child(name: str, ctx: Context) -> dict:
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    # not a daemon: a farm in it starts worker processes of its own
    proc = spawn.Process(target=_memory_probe, name=f"bench-memory-{name}",
                         args=(child, name, ctx.gateway.host, ctx.gateway.port, ctx.now,
                               ctx.policy))
    proc.start()
    child.close()
    try:
        if not parent.poll(120):
            raise TimeoutError(f"memory probe of {name} took over 120 s")
        result = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if isinstance(result, BaseException):
        raise result
    return result


def _memory_probe(conn, name: str, host: str, port: int, now: datetime,
                  policy: PacingPolicy) -> None:
    try:
        import gc

        me = psutil.Process()
        gc.collect()
        base = me.memory_info().rss
        contender = make_contenders([name], id_offset=800)[0]
        contender.start(host, port, policy)
        try:
            contender.warm()
            contender.fetch(_weekly(contender.connections, now, "1 min", "1 W"), 120)
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


class Recovery(Scenario):
    name = "recovery"
    title = "6. Recovery: in-flight work after a worker SIGKILL / a gateway restart"
    metrics = [("restart_after_s", "after restart s", "{:.2f}", False),
               ("kill_after_s", "after kill s", "{:.2f}", False),
               ("clean_wall_s", "no fault s", "{:.2f}", False)]
    notes = ["N requests of 1-hour bars, answers after the recovery latency; 0.1 s after "
             "submitting, one worker is SIGKILLed (farm only: the baselines run in the "
             "caller's process) or the gateway restarts (port closed for restart_down s); "
             "after kill = last answer - kill; after restart = last answer - gateway back up; "
             "no fault = the same work undisturbed"]

    def params(self, ctx: Context) -> dict:
        return {"requests": ctx.sizes.recovery_requests, "latency_s": ctx.sizes.recovery_latency,
                "restart_down_s": ctx.sizes.restart_down, "bar_size": "1 hour",
                "duration": "1 W"}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        self.requests = _weekly(ctx.sizes.recovery_requests, ctx.now, "1 hour", "1 W",
                                use_rth=True)
        if ctx.simulated:
            ctx.gateway.set(latency=ctx.sizes.recovery_latency)

    def _timed(self, c: Contender, fault: Callable[[], Any] | None) -> tuple[float, Any]:
        c.warm()
        box: list = []
        timer = None
        if fault is not None:
            timer = threading.Timer(0.1, lambda: box.append(fault()))
            timer.daemon = True
            timer.start()
        t = time.perf_counter()
        frames = c.fetch(self.requests, 120)
        done = time.monotonic()
        wall = time.perf_counter() - t
        if timer is not None:
            timer.join(30)
        if len(frames) != len(self.requests):
            raise RuntimeError(f"{c.name}: {len(frames)} of {len(self.requests)} answers")
        return wall, (done, box[0] if box else None)

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for c in contenders:
            def measure(c: Contender = c) -> dict:
                m: dict[str, Any] = {}
                m["clean_wall_s"], _ = self._timed(c, None)
                if c.worker_pids():
                    def kill() -> tuple[float, int | None]:
                        pid = c.kill_worker()
                        return time.monotonic(), pid
                    _, (done, (killed_at, _pid)) = self._timed(c, kill)
                    m["kill_after_s"] = done - killed_at
                if ctx.simulated:
                    down = ctx.sizes.restart_down
                    _, (done, (_down_at, up_at)) = self._timed(
                        c, lambda: ctx.gateway.restart(down))
                    m["restart_after_s"] = done - up_at
                return m
            _guarded(out, c, measure)
        return out

    def teardown(self, ctx: Context, contenders: list[Contender]) -> None:
        if ctx.simulated:
            ctx.gateway.set(latency=0.0)


class GatewayCapacity(Scenario):
    """The simulated gateway alone (``bench_gateway``): bars it serves per second and per CPU
    second, to readers that only count bytes. Its own in-process gateway."""

    name = "gateway"
    title = "Simulated gateway capacity: 1-min bars, a week per request, raw-socket readers"
    metrics = [("bars_per_s", "bars/s", "{:,.0f}", True),
               ("bars_per_cpu_s", "bars/CPU s", "{:,.0f}", True),
               ("gateway_cpu_s", "gateway CPU s", "{:.2f}", False)]
    needs_sim = True
    own_rows = True
    optional = True
    row_labels = {"cold": "cold (bars built)", "warm": "warm (cached)"}
    notes = ["the gateway runs in the measuring process here (loop thread and bar builder); "
             "two reader processes send every request at once and count bars"]

    def params(self, ctx: Context) -> dict:
        return {"readers": 2, "requests": ctx.sizes.large_requests * 2}

    def setup(self, ctx: Context, contenders: list[Contender]) -> None:
        from ibfarm.sim import SimGateway

        self.gw = SimGateway(port=0, now=lambda: SIM_NOW, pacing="off").start()
        self.weeks_back = 10

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        from benchmarks import bench_gateway

        n = ctx.sizes.large_requests * 2
        self.weeks_back += 10  # new weeks: the first pass builds them
        cold = bench_gateway.run_pass(self.gw, 2, n, weeks_back=self.weeks_back)
        warm = bench_gateway.run_pass(self.gw, 2, n, weeks_back=self.weeks_back)
        return {name: {"bars_per_s": r["bars_per_s"], "bars_per_cpu_s": r["bars_per_cpu_s"],
                       "gateway_cpu_s": r["gateway_cpu_s"], "bars": r["bars_sent"]}
                for name, r in (("cold", cold), ("warm", warm))}

    def teardown(self, ctx: Context, contenders: list[Contender]) -> None:
        if getattr(self, "gw", None) is not None:
            self.gw.stop()


class Backfill(Scenario):
    """``DataManager.backfill`` through a 4-worker farm against the old way (one connection,
    one segment at a time), each on a gateway of its own (``bench_backfill``)."""

    name = "backfill"
    title = "Backfill: ktrdr DataManager over the farm vs one connection, serial segments"
    metrics = [("wall_s", "wall s", "{:.2f}", False), ("requests", "requests", "{:,.0f}", False),
               ("rows", "rows", "{:,.0f}", False), ("violations", "violations", "{:d}", False),
               ("speedup", "speed-up", "{:.1f}x", True)]
    needs_sim = True
    own_rows = True
    optional = True
    row_labels = {"old-serial": "1 conn, serial segments", "farm-dm": "DataManager, farm 4"}
    notes = ["IB's pacing rules and 300 ms answers on each side's own simulated gateway; "
             "both store the same bars (checked)"]

    def params(self, ctx: Context) -> dict:
        quick = ctx.sizes.large_requests < Sizes().large_requests
        return {"jobs": 6 if quick else 20, "latency_s": 0.3, "workers": 4, "pacing": "ib"}

    def run(self, ctx: Context, contenders: list[Contender]) -> dict[str, dict]:
        import tempfile
        from pathlib import Path

        from benchmarks import bench_backfill
        from ibfarm.sim import SimGateway

        work = bench_backfill.jobs(quick=self.params(ctx)["jobs"] == 6)
        out: dict[str, dict] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("old-serial", "farm-dm"):
                with SimGateway(port=0, now=lambda: SIM_NOW, latency=0.3, pacing="ib") as gw:
                    where = Path(tmp) / name
                    if name == "farm-dm":
                        r = bench_backfill.run_farm(gw.port, work, where, 4, "ib")
                    else:
                        r = bench_backfill.run_sequential(gw.port, work, where)
                    stats = gw.stats()
                out[name] = {"wall_s": r["wall_s"], "rows": r["rows"],
                             "requests": stats["requests"].get("historical", 0),
                             "violations": stats["pacing_violations"]}
        if out["old-serial"]["rows"] != out["farm-dm"]["rows"]:
            raise RuntimeError(f"the two ways stored different data: {out}")
        out["farm-dm"]["speedup"] = out["old-serial"]["wall_s"] / out["farm-dm"]["wall_s"]
        return out


SCENARIOS: list[Scenario] = [LargeResponses(), SmallRequests(), PacingBound(), TinyLatency(),
                             StartupMemory(), Recovery(), GatewayCapacity(), Backfill()]
SCENARIO_NAMES = [s.name for s in SCENARIOS]
