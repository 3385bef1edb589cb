"""``make demo``: a parallel backfill of 8 symbols (stocks and forex), 1-hour bars over two
years, on an embedded simulated IB Gateway with IB's pacing rules and its model of IB's answer
times (scaled down ten times); then the summary, the farm's status, and a second run that
finds nothing missing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone

from ktrdr.cli import console, farm_table, run_backfill, summary_table
from ktrdr.data.data_manager import DataManager
from ktrdr.sim import EmbeddedSim

SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "SPY", "EUR.USD", "GBP.USD", "USD.JPY"]
TIMEFRAME = "1h"
YEARS = 2
#: The simulator's model of IB's answer times (a request's time grows with its bars: a day of
#: 1-minute bars about 0.6 s), divided by this so the demo takes seconds.
LATENCY_SCALE = 10.0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir = tempfile.mkdtemp(prefix="ktrdr-demo-")
    end = datetime.now(timezone.utc)
    start = end - timedelta(days=365 * YEARS)
    console.print(f"[bold]ktrdr demo[/bold]: backfill {len(SYMBOLS)} symbols, {TIMEFRAME} bars, "
                  f"{start:%Y-%m-%d} .. now, simulated IB Gateway (IB's answer times / "
                  f"{LATENCY_SCALE:g}, IB's pacing rules), 4 farm workers; data in {data_dir}")
    try:
        with EmbeddedSim(latency="ib", latency_scale=LATENCY_SCALE, pacing="ib",
                         max_workers=4) as sim:
            manager = DataManager(data_dir, sim.provider())
            try:
                began = time.monotonic()
                reports = run_backfill(manager, SYMBOLS, TIMEFRAME, start.isoformat(), None)
                took = time.monotonic() - began
                console.print(summary_table(reports, f"backfill {TIMEFRAME}, {took:.1f} s"))
                console.print(farm_table(sim.farm_status() or {}))
                stats = sim.gateway.stats()
                console.print(f"gateway: {stats['requests']}, {stats['bars_sent']:,} bars sent, "
                              f"{stats['pacing_violations']} pacing violations, "
                              f"at most {stats['max_open_requests']} requests open at once",
                              highlight=False)
                before = stats["requests"].get("historical", 0)
                again = manager.backfill(SYMBOLS, TIMEFRAME, start.isoformat(), end.isoformat())
                after = sim.gateway.stats()["requests"].get("historical", 0)
                console.print(f"second run over the same range: {after - before} historical "
                              f"requests, {sum(r.gaps_left for r in again)} gaps left")
            finally:
                manager.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if any(not r.ok for r in reports):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
