"""What every scenario shares: sizes, the run's context, the scenario interface, the measuring
loop, simulated gateways of a scenario's own, and the requests most scenarios send.

The harness builds each scenario fresh for its run from the run's ``Context`` (its parameters
are a frozen dataclass made from ``Sizes``; what it starts lives on that one object)::

    Scenario(ctx) ── params() ──► the record
       setup(contenders)                           once
       run(contenders in rotated order) ──► rows   once per repeat
            └─ measure_each(contenders, measure)   one row per contender; a failure is that
                                                   row's, the gateway's CPU and breaches added
       teardown()                                  always

A scenario that needs rules or answer times of its own (scaled pacing, several gateways) opens
a ``Rig``: a simulated gateway process and fresh contenders started on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from benchmarks.contenders import DEFAULT_MARGIN, Contender, FarmContender, make_contenders
from benchmarks.target import SimGatewayProcess
from ibfarm import BarRequest
from ibfarm.pacing import PacingPolicy

log = logging.getLogger(__name__)

SYMBOLS = ["AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL"]
#: The simulated gateway's fixed clock: every run asks for the same bars.
SIM_NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)
MB = 2 ** 20
#: IB error codes that mean a client broke a pacing limit other than the small-bar rules.
RATE_EXCEEDED, TOO_MANY_OPEN = 100, 322


@dataclass(frozen=True)
class ScaleTier:
    """One size of the scale scenario: how many requests, under which rules and answer time.

    Attributes:
        requests: backfill requests in the batch.
        pacing_scale: IB's windows divided by this (1: IB's own rules).
        latency: seconds the gateway takes to answer each request.
        margin: seconds the pacers add to every window.
    """

    requests: int
    pacing_scale: float = 1.0
    latency: float = 0.3
    margin: float = DEFAULT_MARGIN

    @property
    def policy(self) -> PacingPolicy:
        return PacingPolicy().scaled(self.pacing_scale)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``Sizes.quick()`` is the ``--quick`` set."""

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
    capacity_requests: int = 48  # the gateway-capacity scenario, per pass
    backfill_jobs: int = 20  # symbol jobs in the backfill scenario (at most 20)
    # margins: the farm's default under IB's own windows; under windows / 10, 0.02 s: twice
    # the smallest margin that kept the gateway's count clean on the 2-core machine with four
    # CPU-bound processes beside the run (0.005 s did not; see the README's Performance)
    scale_tiers: tuple[ScaleTier, ...] = (
        ScaleTier(250, pacing_scale=1.0, latency=0.3, margin=0.05),
        ScaleTier(2_500, pacing_scale=10.0, latency=0.2, margin=0.02),
        ScaleTier(20_000, pacing_scale=10.0, latency=0.02, margin=0.02),
    )
    gateways_scale: float = 200.0  # IB's windows divided by this in the gateways scenario
    gateways_windows: int = 2  # windows after the first burst there
    gateways_workers: int = 2  # farm workers per gateway there
    ib_latency_symbols: int = 4  # the latency-model backfill: symbols of 1-minute bars
    ib_latency_weeks: int = 50  # ... over the last this many weeks (a request a week)
    ib_latency_scale: float = 5.0  # ... IB's answer times divided by this
    store_read_reads: int = 15  # reads of each reader per repeat in the store-read scenario

    @classmethod
    def quick(cls) -> Sizes:
        return cls(large_requests=8, small_requests=60, pacing_scale=300.0, pacing_windows=1,
                   pacing_margin=0.01, tiny_rounds=60, recovery_requests=16,
                   capacity_requests=16, backfill_jobs=6,
                   scale_tiers=(ScaleTier(100, 1.0, 0.1, 0.05), ScaleTier(500, 10.0, 0.1, 0.02),
                                ScaleTier(1_000, 10.0, 0.02, 0.02)),
                   gateways_scale=300.0, gateways_windows=1, ib_latency_symbols=2,
                   ib_latency_weeks=3, ib_latency_scale=40.0, store_read_reads=3)


@dataclass
class Context:
    """What every scenario needs: the gateway, the clock of its data, sizes, the rules."""

    gateway: Any  # SimGatewayProcess or RealGateway
    now: datetime
    sizes: Sizes
    policy: PacingPolicy = field(default_factory=PacingPolicy)
    quick: bool = False

    @property
    def simulated(self) -> bool:
        return self.gateway.simulated


@dataclass(frozen=True)
class Metric:
    """A column of a scenario's table: key in the rows, label, format, which way is better."""

    key: str
    label: str
    format: str
    higher_is_better: bool


@dataclass(frozen=True)
class Row:
    """A row of a scenario's results: a contender, or one of the scenario's own."""

    name: str
    label: str
    connections: int | None = None


class Scenario:
    """One scenario: what it reports, its parameters, and how to run one repeat.

    Subclasses set the class attributes, make their parameters in ``make_params`` (a frozen
    dataclass) and read only those in ``setup``/``run``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: the table's columns; the first is the headline
    metrics: ClassVar[list[Metric]] = []
    notes: ClassVar[list[str]] = []
    needs_sim: ClassVar[bool] = False
    #: run only when named (``--scenarios``) or with ``all``, not by default
    optional: ClassVar[bool] = False
    #: measures the run's contenders on the run's gateway (the harness starts them first);
    #: False: it starts what it measures itself
    shared_contenders: ClassVar[bool] = True

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.p = self.make_params(ctx)

    def make_params(self, ctx: Context) -> Any:
        return None

    def params(self) -> dict:
        """What the record shows of this run's parameters."""
        return asdict(self.p) if is_dataclass(self.p) else {}

    def describe(self) -> list[str]:
        """The notes printed under the table."""
        return list(self.notes)

    def rows(self, contenders: list[Contender]) -> list[Row]:
        """The rows, in the order they are shown."""
        return [Row(c.name, c.label, c.connections) for c in contenders]

    def setup(self, contenders: list[Contender]) -> None:
        pass

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


def breaches(before: dict, after: dict) -> dict:
    """Pacing limits a gateway saw broken between two ``stats()``: the small-bar rules
    (162 pacing violation), the message rate (100, the connection is closed) and the
    open-request limit (322); ``violations`` is their sum."""
    def sent(code: int) -> int:
        return after["errors_sent"].get(code, 0) - before["errors_sent"].get(code, 0)
    out = {"pacing_violations": after["pacing_violations"] - before["pacing_violations"],
           "rate_exceeded": sent(RATE_EXCEEDED), "too_many_open": sent(TOO_MANY_OPEN)}
    out["violations"] = sum(out.values())
    return out


def gateway_delta(before: dict | None, after: dict | None) -> dict:
    """The gateway's CPU seconds and breaches between two ``stats()`` (nothing for a real one)."""
    if before is None or after is None:
        return {}
    return {"gateway_cpu_s": after["cpu_seconds"] - before["cpu_seconds"],
            **breaches(before, after)}


def arrival_rate(stamps: list[float], burst: int) -> float:
    """Requests a second a gateway accepted after the free ``burst`` of the rules' first
    window: the rest over the time from the first arrival to the last (``stamps`` sorted)."""
    return (len(stamps) - burst) / (stamps[-1] - stamps[0])


#: A farm's own counters a scenario reports per batch, as ``farm_<name>``.
FARM_COUNTERS = ("requeued", "retried", "timed_out", "failed")


def farm_counters(c: Contender) -> dict | None:
    """A farm contender's totals now (None for a baseline)."""
    return c.status()["farm"] if isinstance(c, FarmContender) else None


def farm_moved(c: Contender, before: dict | None) -> dict:
    """``farm_<counter>``: how far the farm's own counters moved since ``before``."""
    if before is None:
        return {}
    after = c.status()["farm"]
    return {f"farm_{k}": after[k] - before[k] for k in FARM_COUNTERS}


def measure_each(contenders: list[Contender], measure: Callable[[Contender], dict], *,
                 gateway: Callable[[Contender], Any] | None = None,
                 after: Callable[[Contender], None] | None = None) -> dict[str, dict]:
    """``measure(c)`` for every contender, in the order given: ``{name: its row}``.

    A contender whose measurement fails gets ``{"error": ...}`` and the others still run.
    ``gateway(c)`` names the gateway ``c`` works on: its CPU seconds and breaches during the
    measurement join the row. ``after(c)`` runs after each (a pause, say).
    """
    out: dict[str, dict] = {}
    for c in contenders:
        gw = gateway(c) if gateway is not None else None
        before = gw.stats() if gw is not None else None
        try:
            row = measure(c)
        except (Exception, asyncio.CancelledError) as exc:  # that contender's row only
            log.warning("%s failed: %r", c.name, exc)
            row = {"error": f"{type(exc).__name__}: {exc}"}
        if before is not None:
            try:
                row.update(gateway_delta(before, gw.stats()))
            except Exception as exc:  # a gateway that died: the row says so
                row.setdefault("error", f"gateway stats: {exc!r}")
        out[c.name] = row
        if after is not None:
            after(c)
    return out


def weekly(n: int, now: datetime, bar_size: str, duration: str, use_rth: bool = False,
           weeks: int | None = None) -> list[BarRequest]:
    """``n`` requests: the symbols in turn, each round one more week back (after ``weeks``
    weeks, the same weeks again)."""
    def back(i: int) -> int:
        rounds = i // len(SYMBOLS)
        return 1 + (rounds % weeks if weeks else rounds)
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], bar_size, duration, use_rth=use_rth,
                       end=now - timedelta(weeks=back(i))) for i in range(n)]


def minutely(n: int, now: datetime, bar_size: str, duration: str) -> list[BarRequest]:
    """``n`` distinct small-bar requests: the symbols in turn, each round a minute earlier."""
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], bar_size, duration, use_rth=False,
                       end=now - timedelta(minutes=1 + i // len(SYMBOLS))) for i in range(n)]


def same_bars(out: dict[str, dict]) -> None:
    """Every contender that answered returned the same number of bars."""
    counts = {name: m["bars"] for name, m in out.items() if "bars" in m}
    if len(set(counts.values())) > 1:
        raise RuntimeError(f"contenders returned different bars: {counts}")


class Rig:
    """A simulated gateway process of a scenario's own, and fresh contenders started on it.

    The gateway starts at construction without waiting (several start side by side); call
    ``wait_ready`` before using ``port``, then ``enlist`` the contenders. ``close`` stops
    both; it is safe after a failure half-way.

    Args:
        policy: the rules the gateway enforces and the contenders' pacers follow.
        now: the gateway's clock.
        latency: seconds before each historical answer, or ``"ib"`` (changeable with
            ``gateway.set``).
        knobs: other settings of the simulated gateway (``latency_scale``, ...).
    """

    def __init__(self, policy: PacingPolicy, now: datetime, latency: Any = 0.0,
                 knobs: dict[str, Any] | None = None):
        self.policy = policy
        self.gateway = SimGatewayProcess(policy, now, latency=latency, wait=False, knobs=knobs)
        self.contenders: list[Contender] = []
        self.last_used = 0.0

    def wait_ready(self) -> Rig:
        self.gateway.wait_ready()
        return self

    @property
    def address(self) -> str:
        return f"{self.gateway.host}:{self.gateway.port}"

    def enlist(self, contenders: list[Contender], margin: float = DEFAULT_MARGIN) -> Rig:
        """Start and warm ``contenders`` on this gateway (``margin``: their pacers')."""
        for c in contenders:
            c.start(self.gateway.host, self.gateway.port, self.policy, margin)
            self.contenders.append(c)
            c.warm()
        return self

    def fresh(self, names: list[str], id_offset: int, margin: float = DEFAULT_MARGIN) -> Rig:
        """``enlist`` a new set of the named contenders."""
        return self.enlist(make_contenders(names, id_offset=id_offset), margin)

    def contender(self, name: str) -> Contender:
        return next(c for c in self.contenders if c.name == name)

    def used(self) -> None:
        """Note that work on this gateway just ended."""
        self.last_used = time.monotonic()

    def rest(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed since the last ``used``: the gateway's windows
        hold none of the earlier work."""
        wait = self.last_used + seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def ready(self, c: Contender, window: float) -> None:
        """``c`` with every connection up (a farm's workers exit after idle_timeout between
        repeats, and their handshakes would count against a batch's first window), then a
        rule window with nothing in it."""
        c.warm()
        self.used()
        self.rest(window + 0.1)

    def close(self) -> None:
        for c in self.contenders:
            try:
                c.stop()
            except Exception:
                log.exception("stopping %s failed", c.name)
        self.contenders.clear()
        self.gateway.stop()


def close_all(rigs) -> None:
    for rig in rigs:
        rig.close()
