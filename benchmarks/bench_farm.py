"""The farm against one plain ib_insync connection, side by side, on the simulated gateway.

Measured in one run (the gateway runs in a process of its own, pacing off, fixed clock):

* added latency: the median round trip of a tiny request (``reqCurrentTime``) through the
  farm minus the same call made directly with ib_insync (target: under 0.5 ms);
* throughput: 1-minute bars per second delivered as pandas DataFrames, one week per request,
  through the farm (2 workers, ``Table.to_pandas()``) against one ib_insync connection with
  ``util.df`` (all requests in flight at once on it). The gateway answers every request once
  before timing, so both sides read from its cache (target: farm at least 1.7x);
* worker memory: RSS (and USS, PSS) of a worker that has served bars (target: RSS < 70 MB);
* worker cold start: from submit to the answer of a new worker's first tiny request, when the
  forkserver already runs, and the first one in a fresh process (target: under 1 s).

    python -m benchmarks.bench_farm [--requests 24] [--calls 400] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import psutil
from ib_insync import IB, util

from ibfarm import BarRequest, IbFarm
from ibfarm.contracts import make_contract

NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)
SYMBOLS = ["AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL"]
TARGETS = {"added_latency_ms": 0.5, "speedup": 1.7, "worker_rss_mb": 70.0, "cold_start_s": 1.0}


def start_gateway() -> tuple[subprocess.Popen, int]:
    """``ibfarm gateway`` in a process of its own; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ibfarm.cli import main; main()", "gateway", "--port", "0",
         "--pacing", "off", "--now", NOW.isoformat()],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    port = int(line.split(" on ", 1)[1].split()[0].rsplit(":", 1)[1])
    return proc, port


def bar_requests(n: int) -> list[BarRequest]:
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], "1 min", "1 W", use_rth=False,
                       end=NOW - timedelta(weeks=1 + i // len(SYMBOLS))) for i in range(n)]


def direct_client(port: int) -> IB:
    ib = IB()
    ib.connect("127.0.0.1", port, clientId=90, readonly=True, timeout=10)
    return ib


def direct_latency(ib: IB, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        ib.reqCurrentTime()
        samples.append(time.perf_counter() - t)
    return samples


def farm_latency(farm: IbFarm, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        farm.submit(IB.reqCurrentTimeAsync).result(10)
        samples.append(time.perf_counter() - t)
    return samples


def direct_throughput(ib: IB, requests: list[BarRequest]) -> tuple[float, int]:
    async def fetch_all():
        return await asyncio.gather(*(ib.reqHistoricalDataAsync(
            make_contract(r.symbol), r.end_utc(), r.duration, r.bar_size, r.what_to_show,
            r.use_rth, formatDate=2, timeout=0) for r in requests))

    t = time.perf_counter()
    frames = [util.df(bars) for bars in ib.run(fetch_all())]
    return time.perf_counter() - t, sum(len(f) for f in frames)


def farm_throughput(farm: IbFarm, requests: list[BarRequest]) -> tuple[float, int]:
    t = time.perf_counter()
    frames = [table.to_pandas() for table in farm.map_bars(requests, timeout=120)]
    return time.perf_counter() - t, sum(len(f) for f in frames)


def cold_start(port: int) -> float:
    t = time.perf_counter()
    with IbFarm(port=port, max_workers=1, client_ids=range(60, 70)) as farm:
        farm.submit(IB.reqCurrentTimeAsync).result(30)
        return time.perf_counter() - t


def run(requests: int = 24, calls: int = 400, rounds: int = 3) -> dict:
    """Run every measurement; return the figures (and whether each meets its target)."""
    gateway, port = start_gateway()
    try:
        first_cold = cold_start(port)  # starts this process's forkserver
        ib = direct_client(port)
        farm = IbFarm(port=port, max_workers=2, client_ids=range(1, 10))
        try:
            reqs = bar_requests(requests)
            farm_throughput(farm, reqs)  # the gateway encodes each answer once
            direct_latency(ib, 50)
            farm_latency(farm, 50)
            d_lat = direct_latency(ib, calls)
            f_lat = farm_latency(farm, calls)
            d_runs = [direct_throughput(ib, reqs) for _ in range(rounds)]
            f_runs = [farm_throughput(farm, reqs) for _ in range(rounds)]
            usage = worker_memory(farm)
        finally:
            farm.shutdown()
            ib.disconnect()
        warm_cold = statistics.median(cold_start(port) for _ in range(3))
    finally:
        gateway.terminate()
        gateway.wait(10)
    d_time, bars = min(d_runs)
    f_time, f_bars = min(f_runs)
    assert bars == f_bars, (bars, f_bars)
    result = {
        "direct_latency_ms": statistics.median(d_lat) * 1e3,
        "farm_latency_ms": statistics.median(f_lat) * 1e3,
        "direct_latency_p99_ms": _p99(d_lat) * 1e3,
        "farm_latency_p99_ms": _p99(f_lat) * 1e3,
        "bars": bars,
        "direct_bars_per_s": bars / d_time,
        "farm_bars_per_s": bars / f_time,
        "cold_start_s": warm_cold,
        "cold_start_first_s": first_cold,
        **usage,
        "cpus": psutil.cpu_count(),
    }
    result["added_latency_ms"] = result["farm_latency_ms"] - result["direct_latency_ms"]
    result["speedup"] = result["farm_bars_per_s"] / result["direct_bars_per_s"]
    result["meets"] = {
        "added_latency_ms": result["added_latency_ms"] < TARGETS["added_latency_ms"],
        "speedup": result["speedup"] >= TARGETS["speedup"],
        "worker_rss_mb": result["worker_rss_mb"] < TARGETS["worker_rss_mb"],
        "cold_start_s": result["cold_start_s"] < TARGETS["cold_start_s"],
    }
    return result


def _p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, int(len(samples) * 0.99) - 1)]


def worker_memory(farm: IbFarm) -> dict:
    rss, uss, pss = [], [], []
    for worker in farm.status()["workers"]:
        info = psutil.Process(worker["pid"]).memory_full_info()
        rss.append(info.rss)
        uss.append(info.uss)
        pss.append(info.pss)
    mb = 2 ** 20
    return {"worker_rss_mb": max(rss) / mb, "worker_uss_mb": max(uss) / mb,
            "worker_pss_mb": max(pss) / mb}


def report(r: dict) -> str:
    ok = {True: "ok", False: "MISSED"}
    m = r["meets"]
    return "\n".join([
        f"farm benchmark on {r['cpus']} CPUs, simulated gateway in its own process",
        f"  tiny request, median   direct {r['direct_latency_ms']:.3f} ms   "
        f"farm {r['farm_latency_ms']:.3f} ms",
        f"  tiny request, p99      direct {r['direct_latency_p99_ms']:.3f} ms   "
        f"farm {r['farm_latency_p99_ms']:.3f} ms   (ib_insync sends at most 45 messages/s "
        f"per connection)",
        f"  added latency          {r['added_latency_ms']:.3f} ms   "
        f"target < {TARGETS['added_latency_ms']} ms: {ok[m['added_latency_ms']]}",
        f"  1-min bars as pandas   direct {r['direct_bars_per_s']:,.0f}/s   "
        f"farm (2 workers) {r['farm_bars_per_s']:,.0f}/s   ({r['bars']:,} bars per pass)",
        f"  speedup                {r['speedup']:.2f}x   "
        f"target >= {TARGETS['speedup']}x: {ok[m['speedup']]}",
        f"  worker memory          RSS {r['worker_rss_mb']:.1f} MB   USS "
        f"{r['worker_uss_mb']:.1f} MB   PSS {r['worker_pss_mb']:.1f} MB   "
        f"target RSS < {TARGETS['worker_rss_mb']:.0f} MB: {ok[m['worker_rss_mb']]}",
        f"  worker cold start      {r['cold_start_s'] * 1e3:.0f} ms   (first in a fresh "
        f"process, with the forkserver: {r['cold_start_first_s'] * 1e3:.0f} ms)   "
        f"target < {TARGETS['cold_start_s']} s: {ok[m['cold_start_s']]}",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="bar requests per pass")
    parser.add_argument("--calls", type=int, default=400, help="tiny requests per side")
    parser.add_argument("--rounds", type=int, default=3, help="throughput passes (best kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.requests, args.calls, args.rounds)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
