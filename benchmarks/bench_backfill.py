"""Backfill of 20 symbol jobs: ktrdr's DataManager through the farm vs the old way.

The old way is one ib_insync ``IB`` connection and one segment at a time (sequential awaits),
as ktrdr's ``IbDataFetcher`` did, with the same segments and a minimal pacer so it stays
inside IB's rules (at most 5 requests per contract in 2 s). The new way is
``DataManager.backfill``: every missing segment of every symbol submitted to an ``IbFarm`` at
once. Each side gets its own simulated gateway (same market, IB's pacing rules, the same
answer latency) and its own data directory; both store the same bars.

The simulator lists 11 non-future symbols, so the 20 jobs are 11 symbols x 1-hour bars over a
year plus 9 symbols x 15-minute bars over 12 weeks (about 12 segments each).

    python -m benchmarks.bench_backfill [--latency 0.3] [--workers 4] [--quick]
    python -m benchmarks --scenarios backfill       # 20 jobs (6 with --quick), in the harness
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from benchmarks.scenarios.base import breaches
from ibfarm import IbFarm
from ibfarm.backend import IB, Forex, Index, Stock
from ibfarm.sim import SimGateway
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter
from ktrdr.data.store import BarStore
from ktrdr.data.timeframes import bar_size, segments

NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)
STOCKS = ["AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL"]
FOREX = ["EUR.USD", "GBP.USD", "USD.JPY"]
INDEX = ["SPX"]
ALL = STOCKS + FOREX + INDEX  # the 11 non-future symbols, in this order below


def jobs(count: int = 20) -> list[tuple[str, str, datetime, datetime]]:
    """``(symbol, timeframe, start, end)``: the first ``count`` (at most 20) of 20 jobs of
    about 12 segments each."""
    if not 1 <= count <= 20:
        raise ValueError(f"between 1 and 20 backfill jobs, not {count}")
    hourly = [(s, "1h", NOW - timedelta(days=365), NOW) for s in ALL[:11]]
    fifteen = [(s, "15m", NOW - timedelta(weeks=12), NOW) for s in ALL[:9]]
    return (hourly + fifteen)[:count]


def _contract(symbol: str):
    if symbol in FOREX:
        return Forex(symbol.replace(".", "")), "MIDPOINT"
    if symbol in INDEX:
        return Index(symbol, "CBOE", "USD"), "TRADES"
    return Stock(symbol, "SMART", "USD"), "TRADES"


class _ContractPacer:
    """At most ``limit`` requests per contract in ``window`` seconds (IB's rule)."""

    def __init__(self, limit: int = 5, window: float = 2.0):
        self.limit, self.window = limit, window
        self.sent: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    async def wait(self, key: str) -> None:
        sent = self.sent[key]
        while True:
            now = time.monotonic()
            while sent and now - sent[0] >= self.window:
                sent.popleft()
            if len(sent) < self.limit:
                sent.append(now)
                return
            await asyncio.sleep(self.window - (now - sent[0]) + 0.01)


def run_sequential(port: int, work, data_dir: Path) -> dict:
    """One connection, one segment at a time; the bars stored as ktrdr stores them."""
    store = BarStore(data_dir)

    async def main() -> tuple[int, int]:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=99, readonly=True, timeout=20)
        pacer = _ContractPacer()
        rows = requests = 0
        try:
            for symbol, timeframe, start, end in work:
                contract, what = _contract(symbol)
                frames = []
                for seg in segments(timeframe, start, end):
                    await pacer.wait(symbol)
                    bars = await ib.reqHistoricalDataAsync(
                        contract, seg.end.strftime("%Y%m%d %H:%M:%S UTC"), seg.duration,
                        bar_size(timeframe), what, True, 2)
                    requests += 1
                    if bars:
                        frame = pd.DataFrame([(b.date, b.open, b.high, b.low, b.close, b.volume)
                                              for b in bars],
                                             columns=["timestamp", "open", "high", "low",
                                                      "close", "volume"])
                        frames.append(frame)
                frame = pd.concat(frames).drop_duplicates("timestamp", keep="last")
                frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
                frame = frame.set_index("timestamp").sort_index()
                frame = frame[(frame.index >= start) & (frame.index < end)]
                store.write(symbol, timeframe, frame, [])
                rows += len(frame)
        finally:
            ib.disconnect()
        return rows, requests

    began = time.perf_counter()
    rows, requests = asyncio.run(main())
    return {"wall_s": time.perf_counter() - began, "rows": rows, "requests": requests}


def run_farm(port: int, work, data_dir: Path, workers: int, pacing: str) -> dict:
    """``DataManager.backfill`` per timeframe, both at once, through one farm."""
    farm = IbFarm(port=port, max_workers=workers, pacing=pacing, request_timeout=120)
    provider = IbDataAdapter(farm=farm, source="sim")
    groups: dict[str, list] = collections.defaultdict(list)
    for job in work:
        groups[job[1]].append(job)
    reports: list = []
    try:
        farm.submit(IB.isConnected).result(60)  # a worker connected, as the old way connects
        began = time.perf_counter()

        def one(timeframe: str, group: list) -> None:
            with DataManager(data_dir, provider) as manager:
                reports.extend(manager.backfill([j[0] for j in group], timeframe, group[0][2],
                                                group[0][3]))

        threads = [threading.Thread(target=one, args=item) for item in groups.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        status = farm.status()["farm"]
    finally:
        farm.shutdown(wait=True, cancel_futures=True)
    failed = [r for r in reports if not r.ok]
    if failed:
        raise SystemExit(f"farm backfill failed: {failed}")
    return {"wall_s": wall, "rows": sum(r.rows for r in reports),
            "requests": sum(r.requests for r in reports), "workers": status["spawned"]}


def compare(work, latency: float, workers: int, pacing: str, now: datetime = NOW
            ) -> dict[str, dict]:
    """Both ways over ``work``, each on a simulated gateway and in a data directory of its
    own: ``{"sequential": ..., "farm": ...}``, each with its gateway's counts.

    Raises:
        RuntimeError: the two stored different bars.
    """
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("sequential", "farm"):
            with SimGateway(port=0, now=lambda: now, latency=latency, pacing=pacing) as gw:
                where = Path(tmp) / name
                if name == "farm":
                    result = run_farm(gw.port, work, where, workers, pacing)
                else:
                    result = run_sequential(gw.port, work, where)
                stats = gw.stats()
                result["gateway_requests"] = stats["requests"].get("historical", 0)
                result.update(breaches({"pacing_violations": 0, "errors_sent": {}}, stats))
                result["max_open"] = stats["max_open_requests"]
                results[name] = result
    seq, farm = results["sequential"], results["farm"]
    if seq["rows"] != farm["rows"]:
        raise RuntimeError(f"the two ways stored different data: {seq['rows']} vs "
                           f"{farm['rows']} rows")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3,
                        help="gateway answer latency in seconds (default 0.3)")
    parser.add_argument("--workers", type=int, default=4, help="farm workers (default 4)")
    parser.add_argument("--pacing", default="ib", help="pacing preset for gateway and farm")
    parser.add_argument("--quick", action="store_true", help="6 jobs instead of 20")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = jobs(6 if args.quick else 20)
    try:
        results = compare(work, args.latency, args.workers, args.pacing)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    seq, farm = results["sequential"], results["farm"]
    ratio = seq["wall_s"] / farm["wall_s"]
    if args.json:
        print(json.dumps({"jobs": len(work), "latency_s": args.latency, **results,  # noqa: T201
                          "speedup": ratio}, indent=2))
        return
    print(f"backfill of {len(work)} symbol jobs, gateway latency {args.latency * 1000:.0f} ms, "
          f"pacing {args.pacing!r}")  # noqa: T201
    print(f"{'':24}{'wall s':>9}{'requests':>10}{'rows':>10}{'max open':>10}"
          f"{'violations':>12}")  # noqa: T201
    for name, label in (("sequential", "one connection, serial"),
                        ("farm", f"farm, {args.workers} workers")):
        r = results[name]
        print(f"{label:24}{r['wall_s']:9.2f}{r['gateway_requests']:10d}{r['rows']:10,d}"
              f"{r['max_open']:10d}{r['violations']:12d}")  # noqa: T201
    print(f"speed-up: {ratio:.1f}x")  # noqa: T201


if __name__ == "__main__":
    main()
