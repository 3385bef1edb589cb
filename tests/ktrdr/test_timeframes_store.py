"""Segments (IB-legal, on a fixed grid, covering the range) and the Parquet store (safe names,
atomic writes, corrupt files reported and left alone; more in test_store*.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ibfarm.bars import duration_allowed
from ibfarm.sim.hmds import range_start
from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.store import BarStore, DataCorruptError, InvalidSymbolError, normalize_symbol
from ktrdr.data.timeframes import (
    TIMEFRAMES,
    TimeframeError,
    bar_size,
    normalize_timeframe,
    segments,
)

UTC = timezone.utc


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
@pytest.mark.parametrize("start,end", [
    (datetime(2022, 3, 17, 9, tzinfo=UTC), datetime(2024, 6, 7, 21, tzinfo=UTC)),
    (datetime(2023, 12, 30, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)),
    (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)),
])
def test_segments_are_legal_and_cover_the_range(timeframe, start, end):
    plan = segments(timeframe, start, end)
    assert plan
    for seg in plan:
        assert duration_allowed(bar_size(timeframe), seg.duration), seg
        # The gateway's idea of where the segment starts is never after ours.
        assert range_start(seg.end, seg.duration) <= seg.start + timedelta(seconds=1), seg
    assert plan[0].start <= start and plan[-1].end == end
    for a, b in zip(plan, plan[1:], strict=False):
        assert b.start <= a.end < b.end  # contiguous, no holes


def test_segments_lie_on_a_grid():
    long = segments("1h", datetime(2022, 1, 10, tzinfo=UTC), datetime(2024, 6, 7, tzinfo=UTC))
    shorter = segments("1h", datetime(2023, 5, 3, tzinfo=UTC), datetime(2024, 6, 7, tzinfo=UTC))
    whole = [s for s in shorter if s.duration == "1 M"]
    assert whole and all(s in long for s in whole)
    assert all(s.end.day == 1 and s.end.hour == 0 for s in whole)
    weeks = segments("5m", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC))
    assert all(s.duration == "1 W" and s.end.weekday() == 0 for s in weeks)


def test_timeframe_names():
    assert normalize_timeframe("1H") == "1h" and normalize_timeframe("60m") == "1h"
    assert bar_size("1d") == "1 day" and bar_size("5m") == "5 mins"
    with pytest.raises(TimeframeError, match="unsupported timeframe '2h'"):
        normalize_timeframe("2h")


@pytest.mark.parametrize("bad", ["../etc/passwd", "..", "A/B", "AAPL/../../x", "", " ",
                                 "X" * 21, "-AAPL", ".HIDDEN", "A\x00B", "AAPL;rm"])
def test_bad_symbols_never_name_a_path(tmp_path, bad):
    store = BarStore(tmp_path)
    with pytest.raises(InvalidSymbolError):
        store.path(bad, "1h")


def test_good_symbols(tmp_path):
    store = BarStore(tmp_path)
    assert normalize_symbol("brk-b") == "BRK-B"
    assert store.path("eur.usd", "1H") == \
        (tmp_path / "source=ib" / "timeframe=1h" / "symbol=EUR.USD").resolve()
    assert store.path("vod@lse", "1d").name == "symbol=VOD@LSE"


def _frame(n: int = 5) -> pd.DataFrame:
    index = pd.date_range("2024-01-02 14:30", periods=n, freq="h", tz="UTC",
                          name="timestamp").as_unit("ns")
    return pd.DataFrame({c: [float(i) for i in range(n)] for c in
                         ("open", "high", "low", "close", "volume")}, index=index)


def test_write_read_round_trip_with_metadata(tmp_path):
    store = BarStore(tmp_path, source="sim")
    store.write("AAPL", "1h", _frame(), [(10, 20), (20, 30), (50, 60)],
                {"source": "sim", "fetched_at": "now"})
    stored = store.read("AAPL", "1h")
    pd.testing.assert_frame_equal(stored.frame[list(OHLCV_COLUMNS)], _frame(), check_freq=False)
    assert stored.frame["wap"].isna().all() and stored.frame["bar_count"].isna().all()
    assert stored.fetched == [(10, 30), (50, 60)]
    assert stored.meta["source"] == "sim" and stored.meta["rows"] == 5
    assert store.list() == [("AAPL", "1h")]


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    store = BarStore(tmp_path)
    part = store.write("AAPL", "1h", _frame(3), [])
    before = {p.name: p.read_bytes() for p in part.iterdir()}
    assert list(before) == ["2024.parquet"]

    def dies_half_way(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.write("AAPL", "1h", _frame(10), [])
    assert {p.name: p.read_bytes() for p in part.iterdir()} == before  # no temporary left


def test_stray_temporary_files_are_ignored_and_cleaned(tmp_path):
    store = BarStore(tmp_path)
    part = store.write("AAPL", "1h", _frame(), [])
    (part / ".tmp-2024.parquet.abc").write_bytes(b"half")
    assert store.list() == [("AAPL", "1h")]
    assert len(store.read("AAPL", "1h").frame) == 5
    assert store.clean_temporary() == 1
    assert sorted(p.name for p in part.iterdir()) == ["2024.parquet"]


@pytest.mark.parametrize("content", [b"", b"not parquet at all", b"PAR1\x00\x00PAR1"])
def test_corrupt_files_are_reported_with_their_path(tmp_path, content):
    store = BarStore(tmp_path)
    path = store.path("AAPL", "1h") / "2024.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DataCorruptError) as err:
        store.read("AAPL", "1h")
    assert err.value.path == path and str(path) in str(err.value)
    assert path.read_bytes() == content
