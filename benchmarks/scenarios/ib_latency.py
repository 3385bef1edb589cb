"""A backfill against the simulator's model of IB's answer times: ktrdr's DataManager over the
farm, the farm alone, one connection with gather, and the original plan's one connection, one
request at a time; each one's wall time over the bound IB's rules and those answer times allow.

The simulated gateway answers with ``latency="ib"`` (``ibfarm/sim/latency.py``: a week of
1-minute bars, 1,950 of them, takes IB about 8.3 s; the time grows faster than the bars)
divided by ``latency_scale``, under IB's own pacing rules::

    setup   DataManager.backfill(symbols, 1m, the last `weeks` weeks) into a scratch directory,
            untimed: the bar requests it sends are recorded (the gateway caches their bars)
              └─ bars per request ─► the model's answer time per request ─► the bound
    repeat  every row in turn (an order rotated every repeat), a message window apart:
              datamanager   DataManager.backfill into an empty directory (the same requests)
              farm-N ...    the recorded requests, IbFarm.historical_bars (Arrow tables)
              gather        the same on one connection, 50 at a time
              serial        the same on one connection, one at a time (first repeat only)

The bound (``benchmarks.bounds.answer_bound``) is the largest of: the message rate
(((N - 1) // 50) x 1 s, then the shortest answer), 50 open requests (the sum of the answer
times / 50), and the longest answer. Every row must return the same bars.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from benchmarks.bounds import AnswerBound, answer_bound, in_order_s
from benchmarks.contenders import (
    Contender,
    DataManagerContender,
    SerialContender,
    make_contenders,
)
from benchmarks.scenarios.base import (
    SYMBOLS,
    Context,
    Metric,
    Rig,
    Row,
    Scenario,
    farm_counters,
    farm_moved,
    measure_each,
    same_bars,
)
from ibfarm import FarmConfig
from ibfarm.pacing import PacingPolicy
from ibfarm.sim.latency import answer_delay
from ktrdr.data.timeframes import bar_size

log = logging.getLogger(__name__)

DM, SERIAL = "datamanager", "serial"
#: Contenders of the run left out here, and why.
LEFT_OUT = {"per-request": "a connection per request, 8 at a time: the open-request limit it "
                           "leaves unused is what this scenario measures"}


@dataclass(frozen=True)
class IbLatencyParams:
    symbols: tuple[str, ...]
    weeks: int  # the backfill's range: the last this many weeks
    latency_scale: float  # IB's answer times divided by this
    timeframe: str = "1m"
    pacing_scale: float = 1.0  # IB's own rules
    serial_repeats: int = 1  # repeats the serial row runs in (the first ones)
    deadline_factor: float = 4.0  # a parallel row is given this many bounds, plus the extra
    deadline_extra_s: float = 60.0

    @property
    def policy(self) -> PacingPolicy:
        return PacingPolicy().scaled(self.pacing_scale)


class IbLatencyBackfill(Scenario):
    name = "ib_latency"
    title = "Backfill on IB's answer-time model: wall time over the bound IB's rules allow"
    metrics = [Metric("wall_per_bound", "wall/bound", "{:.2f}", False),
               Metric("wall_s", "wall s", "{:.2f}", False),
               Metric("bound_s", "bound s", "{:.2f}", False),
               Metric("vs_serial", "x serial", "{:.1f}x", True),
               Metric("requests", "requests", "{:,d}", False),
               Metric("answered", "answered", "{:,d}", True),
               Metric("unanswered", "unanswered", "{:,d}", False),
               Metric("violations", "violations", "{:d}", False),
               Metric("gateway_cpu_s", "gateway CPU s", "{:.1f}", False)]
    needs_sim = True
    optional = True
    shared_contenders = False

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.rig: Rig | None = None
        self.requests: list = []
        self.answers: list[float] = []
        self.bound: AnswerBound | None = None
        self.in_order = 0.0
        self.repeat = 0
        self.serial_wall: float | None = None

    def make_params(self, ctx: Context) -> IbLatencyParams:
        s = ctx.sizes
        return IbLatencyParams(tuple(SYMBOLS[:s.ib_latency_symbols]), s.ib_latency_weeks,
                               s.ib_latency_scale)

    @property
    def span(self):
        return self.ctx.now - timedelta(weeks=self.p.weeks), self.ctx.now

    def params(self) -> dict:
        out = super().params()
        if self.bound is not None:
            out["bound"] = self.bound.as_dict() | {"in_order_s": self.in_order}
        return out

    def describe(self) -> list[str]:
        p, policy = self.p, self.p.policy
        rules = ("IB's own pacing rules" if p.pacing_scale == 1 else
                 f"IB's rules with every window divided by {p.pacing_scale:g}")
        notes = [
            f"the simulated gateway answers after the model of IB's answer times "
            f"(latency='ib', ibfarm/sim/latency.py) divided by {p.latency_scale:g}, under "
            f"{rules} ({policy.message_rate} messages per {policy.message_window:g} s, "
            f"{policy.max_open_requests} open requests); the pacers' default margin",
            f"the backfill: {len(p.symbols)} symbols ({', '.join(p.symbols)}), {p.timeframe} "
            f"({bar_size(p.timeframe)}) regular-hours bars over the last {p.weeks} weeks, as "
            "ktrdr's DataManager cuts it (a week of trading days per request); every row sends "
            "the requests DataManager sent in an untimed first backfill (the gateway then "
            "answers from its cache, after the model's time)",
            "bound (benchmarks/bounds.py answer_bound) = max(message rate: ((N - 1) // "
            "message_rate) x message_window + the shortest answer; open requests: the sum of "
            "the answer times / max_open_requests; the longest answer), each answer time the "
            "model's for the bars in that answer; each term alone is a lower bound, so "
            "wall/bound >= 1",
            "x serial: the serial row's wall time (its first repeat) over this row's",
            "datamanager: DataManager.backfill into an empty data directory through "
            "IbDataAdapter over a farm with FarmConfig's defaults (2 workers): planning, "
            "fetching, converting and saving included; the other rows send the same requests "
            "and keep the answers as they come (Arrow tables, ib_insync bar lists)",
            f"serial: runs in the first {p.serial_repeats} repeat(s) only: its wall time is "
            "the sum of the answer times plus a round trip per request, and more repeats "
            "would only repeat that",
            "violations: the simulator's refusals (small-bar rules, 100 message rate, 322 "
            "open requests)"]
        if self.bound is not None:
            b = self.bound
            notes.insert(3, f"{b.requests} requests; answer times {b.shortest_s:.2f}-"
                            f"{b.longest_s:.2f} s, {b.answers_s:.1f} s in all; bound "
                            f"{b.total_s:.2f} s (message rate {b.message_s:.2f}, open "
                            f"requests {b.open_s:.2f}, longest answer {b.longest_s:.2f}; "
                            f"{b.binding} binds); a client that loses no time, sending them in "
                            f"DataManager's order, would take {self.in_order:.2f} s "
                            f"({self.in_order / b.total_s:.2f} x the bound: unequal answers "
                            "do not fill 50 slots perfectly)")
        return notes

    def rows(self, contenders: list[Contender]) -> list[Row]:
        workers = FarmConfig().max_workers
        rows = [Row(DM, f"DataManager.backfill, farm {workers}", workers)]
        rows += [Row(c.name, c.label, c.connections) for c in contenders
                 if c.name not in LEFT_OUT]
        rows.append(Row(SERIAL, SerialContender.label, 1))
        return rows

    def setup(self, contenders: list[Contender]) -> None:
        p = self.p
        self.rig = Rig(p.policy, self.ctx.now, latency="ib",
                       knobs={"latency_scale": p.latency_scale}).wait_ready()
        names = [c.name for c in contenders if c.name not in LEFT_OUT]
        lineup: list[Contender] = [DataManagerContender(range(3500, 3510))]
        lineup += make_contenders(names, id_offset=3000) if names else []
        lineup.append(SerialContender(range(3600, 3601)))
        self.rig.enlist(lineup)
        self._prime()

    def _prime(self) -> None:
        """The untimed first backfill: the requests DataManager sends, and their bars."""
        p, dm = self.p, self.rig.contender(DM)
        start, end = self.span
        with tempfile.TemporaryDirectory(prefix="bench-ib-latency-") as where:
            reports, sent = dm.backfill(where, p.symbols, p.timeframe, start, end, record=True)
        failed = [r for r in reports if not r.ok]
        if failed or not sent:
            raise RuntimeError(f"the first backfill failed: {failed or 'no requests'}")
        self.requests = [request for request, _ in sent]
        bars = [future.result(0).num_rows for _, future in sent]
        self.answers = [answer_delay("ib", p.latency_scale, 0.0, 1.0, n, True, True)
                        for n in bars]
        self.bound = answer_bound(self.requests, p.policy, self.answers)
        self.in_order = in_order_s(self.answers, p.policy)
        self.rig.used()

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        p, rig, bound = self.p, self.rig, self.bound
        k, self.repeat = self.repeat, self.repeat + 1
        order = [rig.contender(DM)]
        order += [rig.contender(c.name) for c in contenders if c.name not in LEFT_OUT]
        if k < p.serial_repeats:
            order.append(rig.contender(SERIAL))
        k %= len(order)
        order = order[k:] + order[:k]
        parallel_s = p.deadline_factor * bound.total_s + p.deadline_extra_s
        serial_s = 2 * bound.answers_s + p.deadline_extra_s
        start, end = self.span

        def measure(c: Contender) -> dict:
            rig.ready(c, p.policy.message_window)
            before = rig.gateway.stats()["requests"].get("historical", 0)
            farm_before = farm_counters(c)
            if isinstance(c, DataManagerContender):
                with tempfile.TemporaryDirectory(prefix="bench-ib-latency-") as where:
                    t = time.perf_counter()
                    reports, _ = c.backfill(where, p.symbols, p.timeframe, start, end)
                    wall = time.perf_counter() - t
                    files = sum(1 for _ in Path(where).rglob("*.parquet"))
                requests = sum(r.requests for r in reports)
                lost = sum(r.requests for r in reports if not r.ok)
                row = {"requests": requests, "answered": requests - lost, "unanswered": lost,
                       "bars": sum(r.rows for r in reports), "files": files,
                       "gaps_left": sum(r.gaps_left for r in reports),
                       "errors": {r.symbol: r.error for r in reports if not r.ok}}
            else:
                t = time.perf_counter()
                tally = c.tally(self.requests, serial_s if c.name == SERIAL else parallel_s)
                wall = time.perf_counter() - t
                row = tally.metrics()
            row["gateway_requests"] = rig.gateway.stats()["requests"].get("historical",
                                                                          0) - before
            row.update(wall_s=wall, bound_s=bound.total_s, wall_per_bound=wall / bound.total_s)
            return row | farm_moved(c, farm_before)

        out = measure_each(order, measure, gateway=lambda c: rig.gateway,
                           after=lambda c: rig.used())
        if "wall_s" in out.get(SERIAL, {}):
            self.serial_wall = out[SERIAL]["wall_s"]
        if self.serial_wall:
            for row in out.values():
                if "wall_s" in row:
                    row["vs_serial"] = self.serial_wall / row["wall_s"]
        same_bars(out)
        return out

    def teardown(self) -> None:
        if self.rig is not None:
            self.rig.close()
