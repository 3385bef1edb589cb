"""DataManager against the simulated gateway: stored bars equal the market model exactly,
re-runs send nothing, tail fetches only the new part, bad input changes nothing."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from ktrdr.data.data_manager import DataManager, DataNotFoundError, InvalidRangeError
from ktrdr.data.external_data_interface import DataProviderNotFoundError
from ktrdr.data.store import DataCorruptError, InvalidSymbolError
from ktrdr.data.timeframes import TimeframeError

from .conftest import NOW, historical, model_bars

UTC = timezone.utc


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def assert_matches_model(frame: pd.DataFrame, bars) -> None:
    """Same bars, same order, same OHLCV: nothing missing, nothing extra, no duplicates."""
    assert frame.index.is_unique and frame.index.is_monotonic_increasing
    stamps = frame.index.as_unit("s").asi8
    assert len(frame) == len(bars), (len(frame), len(bars))
    np.testing.assert_array_equal(stamps, bars.time)
    for column in ("open", "high", "low", "close", "volume"):
        want = getattr(bars, column)
        if column == "volume":  # IB's -1 (no volume: forex MIDPOINT bars) is stored as null
            want = np.where(want < 0, np.nan, want)
        np.testing.assert_array_equal(frame[column].to_numpy(), want, err_msg=column)


CASES = [
    # symbol, sec type, timeframe, IB bar size, start, end: each crosses segment boundaries,
    # holidays, weekends and (where intraday) a daylight-saving change.
    ("AAPL", "STK", "1h", "1 hour", utc(2023, 11, 15), utc(2024, 3, 15)),
    ("MSFT", "STK", "5m", "5 mins", utc(2024, 2, 14), utc(2024, 3, 13)),
    ("EUR.USD", "CASH", "1h", "1 hour", utc(2023, 11, 20), utc(2024, 1, 10)),
    ("IBM", "STK", "1d", "1 day", utc(2021, 6, 1), utc(2024, 6, 7)),
    ("GBP.USD", "CASH", "4h", "4 hours", utc(2024, 2, 20), utc(2024, 4, 10)),
    ("SPX", "IND", "30m", "30 mins", utc(2024, 3, 1), NOW),
    ("ES", "FUT", "1h", "1 hour", utc(2024, 4, 15), NOW),
    ("IBM", "STK", "1w", "1 week", utc(2019, 1, 7), utc(2024, 6, 3)),  # whole weeks
    ("EUR.USD", "CASH", "1w", "1 week", utc(2021, 1, 4), NOW),
]


@pytest.mark.parametrize("symbol,sec_type,timeframe,bar_size,start,end", CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_stored_bars_equal_the_market_model(manager, sim, symbol, sec_type, timeframe,
                                            bar_size, start, end):
    frame = manager.load_data(symbol, timeframe, start, end, mode="full")
    assert_matches_model(frame, model_bars(sim, symbol, sec_type, bar_size, start, end))
    assert frame.attrs["gaps_left"] == 0
    assert frame.attrs["requests"] >= 2  # the range spans more than one segment
    # What is on disk is what was returned (and survives a new manager).
    # (the same source's dataset: the provider's source chooses it)
    again = DataManager(manager.data_dir, manager.provider).load_data(symbol, timeframe, start,
                                                                      end)
    pd.testing.assert_frame_equal(again, frame, check_freq=False)
    summary = manager.get_data_summary(symbol, timeframe)
    assert summary["source"] == "sim" and summary["fetched_at"]


def test_second_backfill_sends_no_requests(manager, sim):
    symbols = ["AAPL", "EUR.USD", "SPY"]
    first = manager.backfill(symbols, "1h", "2023-01-01", "2024-06-01")
    assert all(r.ok and r.rows > 0 and r.gaps_left == 0 for r in first), first
    assert sum(r.requests for r in first) == 3 * 17
    before = sim.stats()["requests"]
    again = manager.backfill(symbols, "1h", "2023-01-01", "2024-06-01")
    assert sim.stats()["requests"] == before  # not one request of any kind
    assert [r.requests for r in again] == [0, 0, 0]
    assert [r.rows for r in again] == [r.rows for r in first]
    # A new manager on the same directory knows the symbols from its cache.
    fresh = DataManager(manager.data_dir, manager.provider)
    try:
        fresh.backfill(symbols, "1h", "2023-06-01", "2024-01-01")
    finally:
        fresh.close()
    assert sim.stats()["requests"] == before


def test_backfill_report_and_one_failing_symbol(manager, sim):
    events = []
    reports = manager.backfill(["MSFT", "NOSUCH", "../etc/passwd", "USD.JPY"], "1d",
                               "2023-01-01", "2024-01-01", progress=events.append)
    by = {r.symbol: r for r in reports}
    assert by["MSFT"].ok and by["USD.JPY"].ok
    assert by["MSFT"].rows == 250 and by["MSFT"].requests == 1 and by["MSFT"].gaps_left == 0
    # daily bars are stamped at midnight of the trading date in New York
    assert by["MSFT"].start == utc(2023, 1, 3, 5) and by["MSFT"].end == utc(2023, 12, 29, 5)
    assert "NOSUCH" in by["NOSUCH"].error and "200" in by["NOSUCH"].error
    assert "invalid symbol" in by["../ETC/PASSWD"].error
    assert not list(manager.data_dir.rglob("*NOSUCH*"))
    done = [e for e in events if e.symbol == "MSFT"]
    assert done[0].requests_done == 0 and done[-1].requests_done == done[-1].requests_total


def test_tail_fetches_only_the_new_part(manager, sim, clock):
    start = utc(2024, 5, 1)
    manager.load_data("AAPL", "1h", start, mode="full")
    stats = sim.stats()
    # A week later, mid-session (13:00 New York): the partial day is fetched...
    clock.now = utc(2024, 6, 12, 17, 0)
    manager.load_data("AAPL", "1h", mode="tail")
    mid = sim.stats()
    assert mid["requests"]["historical"] - stats["requests"]["historical"] == 1
    new = model_bars(sim, "AAPL", "STK", "1 hour", NOW, clock.now)
    assert mid["bars_sent"] - stats["bars_sent"] == len(new)
    # ...and completed later; the bars before it are not asked again.
    clock.now = utc(2024, 6, 14, 21, 0)
    frame = manager.load_data("AAPL", "1h", start, mode="tail")
    end = sim.stats()
    assert end["requests"]["historical"] - mid["requests"]["historical"] == 1
    refetched = model_bars(sim, "AAPL", "STK", "1 hour", utc(2024, 6, 12), clock.now)
    assert end["bars_sent"] - mid["bars_sent"] == len(refetched)
    assert_matches_model(frame, model_bars(sim, "AAPL", "STK", "1 hour", start, clock.now))
    # Nothing new: nothing asked.
    manager.load_data("AAPL", "1h", mode="tail")
    assert historical(sim) == end["requests"]["historical"]


def test_tail_on_forex_over_a_weekend(manager, sim, clock):
    manager.load_data("EUR.USD", "15m", utc(2024, 6, 3), mode="full")
    clock.now = utc(2024, 6, 10, 12, 0)  # Monday noon UTC; the market reopened Sunday
    before = historical(sim)
    frame = manager.load_data("EUR.USD", "15m", utc(2024, 6, 3), mode="tail")
    assert historical(sim) - before == 1
    assert_matches_model(frame, model_bars(sim, "EUR.USD", "CASH", "15 mins", utc(2024, 6, 3),
                                           clock.now))


def test_backfill_mode_extends_to_the_front(manager, sim):
    manager.load_data("NVDA", "1d", "2023-01-01", mode="full")
    before = historical(sim)
    frame = manager.load_data("NVDA", "1d", "2021-01-01", mode="backfill")
    assert historical(sim) - before == 2  # 2021 and 2022, nothing after
    assert_matches_model(frame, model_bars(sim, "NVDA", "STK", "1 day", utc(2021, 1, 1), NOW))


def test_start_before_head_is_clamped_and_said(manager, sim, caplog):
    head = utc(2010, 6, 29, 13, 30)
    with caplog.at_level(logging.WARNING, logger="ktrdr.data.data_manager"):
        frame = manager.load_data("TSLA", "1d", "2009-01-01", "2011-01-01", mode="full")
    assert frame.attrs["clamped_start"] == head
    assert any("before the first available data" in r.message for r in caplog.records)
    assert frame.index[0] == pd.Timestamp("2010-06-29", tz="America/New_York")
    assert_matches_model(frame, model_bars(sim, "TSLA", "STK", "1 day", utc(2009, 1, 1),
                                           utc(2011, 1, 1)))
    [report] = manager.backfill(["TSLA"], "1d", "2005-01-01", "2011-01-01")
    assert report.clamped_start == head and report.requests == 0


def test_bad_input_changes_nothing(manager, sim, tmp_path):
    manager.load_data("AAPL", "1d", "2024-01-01", "2024-06-01", mode="full")
    files = _snapshot(manager.data_dir)
    before = sim.stats()["requests"]
    with pytest.raises(DataProviderNotFoundError) as err:
        manager.load_data("NOSUCH", "1h", "2024-01-01", mode="full")
    assert err.value.error_code == 200 and err.value.hint
    with pytest.raises(InvalidSymbolError):
        manager.load_data("../etc/passwd", "1h", mode="full")
    with pytest.raises(InvalidSymbolError):
        manager.load_data("../../AAPL", "1d", mode="local")
    with pytest.raises(TimeframeError, match="1m, 5m"):
        manager.load_data("AAPL", "2h", mode="full")
    with pytest.raises(InvalidRangeError, match="not after start"):
        manager.load_data("AAPL", "1d", "2024-03-01", "2024-02-01", mode="full")
    with pytest.raises(InvalidRangeError, match="unknown mode"):
        manager.load_data("AAPL", "1d", mode="everything")
    with pytest.raises(DataNotFoundError, match="mode='tail'"):
        manager.load_data("MSFT", "1d")
    assert _snapshot(manager.data_dir) == files
    assert not (tmp_path / "etc").exists()
    # Only the unknown symbol reached the gateway (contract look-ups, no bar requests).
    after = sim.stats()["requests"]
    assert after.get("historical") == before.get("historical")


def _snapshot(folder) -> dict:
    """Every file under ``folder`` (the store is a tree of partitions) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_corrupt_file_is_reported_and_left_alone(manager, sim):
    manager.load_data("AAPL", "1d", "2024-01-01", "2024-06-01", mode="full")
    [path] = manager.store.files("AAPL", "1d")
    path.write_bytes(path.read_bytes()[:200])  # a truncated file
    damaged = path.read_bytes()
    before = historical(sim)
    for mode in ("local", "tail", "full"):
        with pytest.raises(DataCorruptError) as err:
            manager.load_data("AAPL", "1d", "2024-01-01", mode=mode)
        assert str(path) in str(err.value) and "delete it" in str(err.value)
    reports = manager.backfill(["AAPL", "MSFT"], "1d", "2024-01-01", "2024-06-01")
    assert not reports[0].ok and str(path) in reports[0].error
    assert reports[1].ok and reports[1].rows > 0
    assert path.read_bytes() == damaged
    assert historical(sim) - before == 1  # MSFT only
