"""Reading stored bars: ``DataManager.load_data(mode="local")`` vs ``pyarrow.dataset`` reading
the same files directly.

``measure(root, repeats)`` stores ten years of 1-minute bars of one symbol under ``root``
(once, through ``BarStore.write`` as a backfill would: ten yearly files), then times, in
alternation so that both see the same machine:

* ``load_data``: ``DataManager(root).load_data(SYMBOL, "1m", mode="local")``, a pandas frame
  (UTC index; open, high, low, close, volume);
* ``load_data_async``: the same call's async twin awaited on one event loop that stays up
  (what the blocking twin costs on top: a new event loop per call);
* ``pyarrow_table``: ``pyarrow.dataset.dataset(<partition>).to_table()``, every column;
* ``pyarrow_table_ohlcv``: the same, reading timestamp and open..volume only (what
  ``load_data`` reads);
* ``pyarrow_pandas``: ``to_table(columns=...).to_pandas()`` with the timestamp as the index
  (the same frame ``load_data`` returns).

Each ``ratio_*`` is the baseline's median time over ``load_data``'s: 1.0 means as fast,
0.8 means ``load_data`` takes 1.25 times as long.

    python -m benchmarks.store_read [--root DIR] [--repeats 15] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

SYMBOL = "AAPL"
TIMEFRAME = "1m"
YEARS = (2014, 2024)  # [first, last): ten years
OHLCV = ["open", "high", "low", "close", "volume"]
#: The readers ``measure`` times, in its order.
READERS = ("load_data", "load_data_async", "pyarrow_table", "pyarrow_table_ohlcv",
           "pyarrow_pandas")


def ten_years_of_minutes(seed: int = 7) -> pd.DataFrame:
    """Weekday sessions of 390 one-minute bars (14:30-21:00 UTC), prices in cents."""
    days = pd.bdate_range(f"{YEARS[0]}-01-01", f"{YEARS[1] - 1}-12-31", tz="UTC")
    minutes = np.arange(390, dtype=np.int64) * 60_000_000
    stamps = (days.as_unit("us").asi8[:, None] + (14 * 3600 + 1800) * 1_000_000
              + minutes[None, :]).ravel()
    rng = np.random.default_rng(seed)
    close = np.round(100 + np.cumsum(rng.standard_normal(len(stamps))) * 0.02, 2)
    spread = np.round(np.abs(rng.standard_normal(len(stamps))) * 0.05, 2)
    frame = pd.DataFrame({
        "open": np.round(close + rng.standard_normal(len(stamps)) * 0.01, 2),
        "high": close + spread, "low": close - spread, "close": close,
        "volume": rng.integers(100, 50_000, len(stamps)).astype(float),
        "wap": close, "bar_count": rng.integers(1, 500, len(stamps)),
    }, index=pd.DatetimeIndex(stamps.astype("datetime64[us]"), name="timestamp"
                              ).tz_localize("UTC").as_unit("ns"))
    return frame


def ensure_dataset(root: str) -> list[str]:
    """Store the bars under ``root`` unless they are there; the partition's files."""
    from ktrdr.data.store import BarStore, dataset_for

    store = BarStore(root, dataset_for(None))  # the dataset DataManager(root) reads
    files = store.files(SYMBOL, TIMEFRAME)
    if len(files) != YEARS[1] - YEARS[0]:
        frame = ten_years_of_minutes()
        span = (int(datetime(YEARS[0], 1, 1, tzinfo=timezone.utc).timestamp()),
                int(datetime(YEARS[1], 1, 1, tzinfo=timezone.utc).timestamp()))
        store.write(SYMBOL, TIMEFRAME, frame, [span], {"gateway": "bench"})
        files = store.files(SYMBOL, TIMEFRAME)
    return [str(f) for f in files]


def measure(root: str, repeats: int = 15) -> dict:
    """Median seconds of each reader (module docstring) and the ratios; ``root`` is a data
    directory (created and filled on first use)."""
    from ktrdr.data.data_manager import DataManager

    files = ensure_dataset(root)
    partition = str(Path(files[0]).parent)
    manager = DataManager(root, provider=None)
    loop = asyncio.new_event_loop()

    def load_data():
        return manager.load_data(SYMBOL, TIMEFRAME, mode="local")

    def load_data_async():
        return loop.run_until_complete(manager.load_data_async(SYMBOL, TIMEFRAME, mode="local"))

    def pyarrow_table():
        return ds.dataset(partition, format="parquet").to_table()

    def pyarrow_table_ohlcv():
        return ds.dataset(partition, format="parquet").to_table(columns=["timestamp", *OHLCV])

    def pyarrow_pandas():
        table = ds.dataset(partition, format="parquet").to_table(columns=["timestamp", *OHLCV])
        return table.to_pandas().set_index("timestamp")

    readers = {"load_data": load_data, "load_data_async": load_data_async,
               "pyarrow_table": pyarrow_table, "pyarrow_table_ohlcv": pyarrow_table_ohlcv,
               "pyarrow_pandas": pyarrow_pandas}
    times: dict[str, list[float]] = {name: [] for name in readers}
    try:
        rows = len(load_data())
        for read in readers.values():  # warm the page cache and the imports
            read()
        for _ in range(max(1, repeats)):
            for name, read in readers.items():
                began = time.perf_counter()
                read()
                times[name].append(time.perf_counter() - began)
    finally:
        loop.close()
        manager.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    out: dict = {"rows": rows, "files": len(files),
                 "bytes": sum(Path(f).stat().st_size for f in files), "repeats": repeats}
    out.update({f"{name}_s": round(value, 5) for name, value in median.items()})
    out.update({f"best_{name}_s": round(min(times[name]), 5) for name in readers})
    for name in READERS[1:]:
        out[f"ratio_{name}"] = round(median[name] / median["load_data"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="data directory (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.root:
        result = measure(args.root, args.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="ktrdr-store-read-") as root:
            result = measure(root, args.repeats)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['rows']:,} one-minute bars in {result['files']} files "
          f"({result['bytes'] / 1e6:.1f} MB), median of {result['repeats']}")
    for name in READERS:
        ratio = result.get(f"ratio_{name}")
        print(f"  {name:<20} {result[name + '_s'] * 1000:8.1f} ms"
              + (f"   ratio {ratio:.2f}" if ratio is not None else ""))


if __name__ == "__main__":
    main()
