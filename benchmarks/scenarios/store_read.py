"""Reading stored bars: ``DataManager.load_data(mode="local")`` against ``pyarrow.dataset``
reading the same files directly, side by side (``benchmarks.store_read.measure``).

Ten years of 1-minute bars of one symbol (about a million bars, ten yearly Parquet files,
written once through ``BarStore.write`` in ``setup``)::

    every repeat: measure(root, reads) ─► each reader's median over `reads` reads,
                  the readers in turn (one machine moment lands on all)
        load_data            DataManager(root).load_data(symbol, "1m", mode="local")
        load_data_async      its async twin on an event loop that stays up
        pyarrow_table        pyarrow.dataset.dataset(partition).to_table()
        pyarrow_table_ohlcv  ... to_table(columns=[timestamp, open..volume])
        pyarrow_pandas       ... .to_pandas().set_index("timestamp"): load_data's frame

``load_data speed`` of a row is its time over load_data's: 1.0 as fast, 0.8 means load_data
takes 1.25 times as long.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import store_read
from benchmarks.contenders import Contender, in_thread
from benchmarks.scenarios.base import Context, Metric, Row, Scenario

LABELS = {
    "load_data": "DataManager.load_data(mode='local')",
    "load_data_async": "load_data_async, one event loop",
    "pyarrow_table": "pyarrow.dataset to_table()",
    "pyarrow_table_ohlcv": "pyarrow.dataset to_table(OHLCV)",
    "pyarrow_pandas": "pyarrow.dataset OHLCV to_pandas()",
}


@dataclass(frozen=True)
class StoreReadParams:
    reads: int  # reads of each reader per repeat
    symbol: str = store_read.SYMBOL
    timeframe: str = store_read.TIMEFRAME
    years: tuple[int, int] = store_read.YEARS


class StoreRead(Scenario):
    name = "store_read"
    title = "Store read: DataManager.load_data(local) vs pyarrow.dataset, ten years of 1-min bars"
    metrics = [Metric("load_data_speed", "load_data speed", "{:.2f}x", True),
               Metric("median_ms", "median ms", "{:.1f}", False),
               Metric("best_ms", "best ms", "{:.1f}", False),
               Metric("rows", "bars", "{:,d}", False)]
    optional = True
    shared_contenders = False

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.root: str | None = None
        self.files = self.bytes = 0

    def make_params(self, ctx: Context) -> StoreReadParams:
        return StoreReadParams(ctx.sizes.store_read_reads)

    def describe(self) -> list[str]:
        p = self.p
        return [f"{p.symbol} {p.timeframe} bars, {p.years[0]}-{p.years[1] - 1}, weekday "
                f"sessions of 390 bars: {self.files} yearly files, {self.bytes / 1e6:.1f} MB, "
                "written once through BarStore.write (as a backfill writes them), in the page "
                "cache (every reader reads once before timing)",
                f"per repeat every reader reads {p.reads} times, the readers in turn; a row's "
                "figures are the medians over the repeats of its median (best: fastest read)",
                "load_data speed = this row's time / load_data's (1.0: as fast; the target is "
                "at least 0.8 against pyarrow.dataset to_table()); load_data_async shows what "
                "the blocking twin's new event loop per call costs"]

    def rows(self, contenders: list[Contender]) -> list[Row]:
        return [Row(name, LABELS[name]) for name in store_read.READERS]

    def setup(self, contenders: list[Contender]) -> None:
        self.root = tempfile.mkdtemp(prefix="bench-store-read-")
        files = store_read.ensure_dataset(self.root)
        self.files = len(files)
        self.bytes = sum(Path(f).stat().st_size for f in files)

    def run(self, contenders: list[Contender]) -> dict[str, dict]:
        # in a thread: load_data's asyncio.run would leave this one without an event loop
        figures = in_thread(lambda: store_read.measure(self.root, self.p.reads))
        base = figures["load_data_s"]
        return {name: {"median_ms": figures[f"{name}_s"] * 1e3,
                       "best_ms": figures[f"best_{name}_s"] * 1e3,
                       "load_data_speed": figures[f"{name}_s"] / base,
                       "rows": figures["rows"]}
                for name in store_read.READERS}

    def teardown(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
