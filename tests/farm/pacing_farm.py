"""A farm in a process of its own, for tests of pacing shared across farms.

    python -m tests.farm.pacing_farm PORT SCALE OFFSET COUNT MARGIN

runs COUNT small-bar requests (ends shifted by OFFSET minutes, so two farms never send
identical requests) under ``PacingPolicy().scaled(SCALE)`` and prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from ibfarm import BarRequest, IbFarm
from ibfarm.pacing import PacingPolicy
from tests.conftest import NOW

SYMBOLS = ("AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL")
#: Regular-hours ends on four trading days of the week before the gateway's clock.
SESSION_ENDS = [NOW - timedelta(days=d, hours=h) for d in (1, 2, 3, 4) for h in (2, 3, 4, 5)]


def small_bar_requests(count: int, offset_minutes: int = 0) -> list[BarRequest]:
    """``count`` distinct 5-second-bar requests over many symbols, each for one minute."""
    requests = []
    for i in range(count):
        end = SESSION_ENDS[(i // len(SYMBOLS)) % len(SESSION_ENDS)]
        end -= timedelta(minutes=offset_minutes + 2 * (i // (len(SYMBOLS) * len(SESSION_ENDS))))
        requests.append(BarRequest(SYMBOLS[i % len(SYMBOLS)], "5 secs", "60 S", end=end))
    return requests


def main(port: int, scale: float, offset: int, count: int, margin: float) -> dict:
    policy = PacingPolicy().scaled(scale)
    with IbFarm(port=port, pacing=policy, pacing_margin=margin, max_workers=2,
                request_timeout=60) as farm:
        futures = [farm.historical_bars(r) for r in small_bar_requests(count, offset)]
        rows = [f.result(120).num_rows for f in futures]
        return {"requests": len(rows), "empty": rows.count(0), "pacer": farm.status()["pacer"]}


if __name__ == "__main__":
    port, scale, offset, count, margin = sys.argv[1:6]
    summary = main(int(port), float(scale), int(offset), int(count), float(margin))
    print(json.dumps(summary, default=str))  # noqa: T201
