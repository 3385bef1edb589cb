"""The data layer on the simulator's IB behaviours: partial periods at the gateway's clock,
weekly bars dated by their last trading date, N D in trading days, the latency model,
exchanges beyond the US, lunch breaks, holidays and early closes (real gateway over TCP, a
real farm, real files)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from ibfarm import IbFarm
from ktrdr.data.data_manager import DataManager, InvalidRangeError
from ktrdr.data.gaps import SessionCalendar
from ktrdr.data.ib_data_adapter import IbDataAdapter

from ..conftest import gateways
from .conftest import NOW, historical, model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ------------------------------------------------------------------------- partial periods


def test_partial_daily_and_weekly_bars_are_not_kept(manager, sim, clock):
    # Wednesday 2024-06-12, 13:00 in New York: the day and the week are in progress.
    clock.now = utc(2024, 6, 12, 17, 0)
    daily = manager.load_data("AAPL", "1d", "2024-05-01", mode="full")
    weekly = manager.load_data("AAPL", "1w", "2024-04-01", mode="full")
    days = {stamp.tz_convert(NY).date() for stamp in daily.index}
    assert date(2024, 6, 11) in days and date(2024, 6, 12) not in days
    assert weekly.index[-1].tz_convert(NY).date() == date(2024, 6, 3)  # last complete week
    # gaps and load agree: nothing in progress is missing
    for tf in ("1d", "1w"):
        assert manager.find_gaps("AAPL", tf, "2024-05-01") == [], tf
    assert daily.attrs["gaps_left"] == weekly.attrs["gaps_left"] == 0
    # Friday after the close: the complete day and week replace nothing, they are added
    clock.now = utc(2024, 6, 14, 21, 0)
    daily = manager.load_data("AAPL", "1d", "2024-05-01", mode="tail")
    weekly = manager.load_data("AAPL", "1w", "2024-04-01", mode="tail")
    assert_matches_model(daily, model_bars(sim, "AAPL", "STK", "1 day", utc(2024, 5, 1),
                                           clock.now))
    assert_matches_model(weekly, model_bars(sim, "AAPL", "STK", "1 week", utc(2024, 4, 1),
                                            clock.now))
    assert weekly.index[-1] == pd.Timestamp("2024-06-10", tz=NY)


def test_gaps_right_after_a_forex_load_are_empty(manager, clock):
    clock.now = utc(2024, 6, 12, 15, 37)  # mid-session, mid-bar
    frame = manager.load_data("EUR.USD", "1h", "2024-06-03", mode="full")
    assert frame.attrs["gaps_left"] == 0
    assert frame.index[-1] == pd.Timestamp("2024-06-12 14:00", tz=UTC)  # 15:00 is partial
    assert manager.find_gaps("EUR.USD", "1h") == []
    # minutes later no bar has completed: still nothing missing
    clock.now = utc(2024, 6, 12, 15, 59)
    assert manager.find_gaps("EUR.USD", "1h") == []
    # an hour later one new bar is complete: the gap is that bar, not the whole session
    clock.now = utc(2024, 6, 12, 16, 37)
    assert manager.find_gaps("EUR.USD", "1h") == [(utc(2024, 6, 12, 15), utc(2024, 6, 12, 16))]
    frame = manager.load_data("EUR.USD", "1h", "2024-06-03", mode="tail")
    assert frame.index[-1] == pd.Timestamp("2024-06-12 15:00", tz=UTC)
    assert manager.find_gaps("EUR.USD", "1h") == []


# ------------------------------------------------------------------------- weekly bars


@pytest.mark.parametrize("symbol,start,end,holiday_week,last_day", [
    ("AAPL", utc(2026, 5, 4), utc(2026, 7, 6), date(2026, 6, 15), date(2026, 6, 18)),  # Juneteenth
    ("IBM", utc(2024, 3, 4), utc(2024, 4, 22), date(2024, 3, 25), date(2024, 3, 28)),  # Good Friday
])
def test_one_weekly_row_per_week_across_a_holiday(manager, sim, clock, symbol, start, end,
                                                  holiday_week, last_day):
    clock.now = max(NOW, end + timedelta(days=3))
    frame = manager.load_data(symbol, "1w", start, end, mode="full")
    mondays = [stamp.tz_convert(NY).date() for stamp in frame.index]
    assert frame.index.is_unique and all(d.weekday() == 0 for d in mondays)
    assert mondays == sorted({start.date() + timedelta(weeks=k)
                              for k in range((end - start).days // 7)})
    assert all(stamp.tz_convert(NY).time() == datetime.min.time() for stamp in frame.index)
    bars = sim.market.bars(sim.market.resolve(symbol=symbol, sec_type="STK")[0], "1 week",
                           start, end, True, "TRADES")
    # the model dates the holiday week by its last trading date, ktrdr by its Monday
    dated = datetime.fromtimestamp(int(bars.time[mondays.index(holiday_week)]), UTC).date()
    assert dated == last_day
    assert_matches_model(frame, model_bars(sim, symbol, "STK", "1 week", start, end))
    assert manager.find_gaps(symbol, "1w", start, end) == []


# ------------------------------------------------------------------------- latency, splitting


def _farm_gateway(make, **knobs):
    clock_at = knobs.pop("now", lambda: NOW)
    gw = make(now=clock_at, pacing="off", **knobs)
    return gw


def test_a_week_of_forex_minutes_completes_by_splitting(tmp_path):
    # IB's answer times (a week of 1-minute forex would take minutes), scaled down 50 times;
    # requests planned a week at a time time out and are asked again in halves
    with gateways() as make:
        gw = _farm_gateway(make, latency="ib", latency_scale=50)
        farm = IbFarm(port=gw.port, max_workers=4, pacing="off", request_timeout=2.0)
        try:
            adapter = IbDataAdapter(farm=farm, source="sim", max_bars=100_000)
            start, end = utc(2024, 5, 27), utc(2024, 6, 3)
            with DataManager(tmp_path, adapter) as manager:
                [report] = manager.backfill(["EUR.USD"], "1m", start, end)
                assert report.ok, report.error
                assert report.requests > 1 and report.gaps_left == 0
                frame = manager.load_data("EUR.USD", "1m", start, end)
            assert_matches_model(frame, model_bars(gw, "EUR.USD", "CASH", "1 min", start, end))
            # it did have to split: requests that timed out were cancelled at the gateway
            assert gw.stats()["requests"]["cancel_historical"] >= 1
        finally:
            farm.shutdown(wait=True, cancel_futures=True)


def test_requests_are_sized_to_fit_the_latency_model(tmp_path):
    # with the default sizing the same week needs no split: one request per UTC day
    with gateways() as make:
        gw = _farm_gateway(make, latency="ib", latency_scale=50)
        farm = IbFarm(port=gw.port, max_workers=4, pacing="off", request_timeout=2.0)
        try:
            adapter = IbDataAdapter(farm=farm, source="sim")
            start, end = utc(2024, 5, 27), utc(2024, 6, 3)
            with DataManager(tmp_path, adapter) as manager:
                [report] = manager.backfill(["EUR.USD"], "1m", start, end)
                assert report.ok and report.gaps_left == 0, report.error
                assert report.requests == 6  # Mon..Fri and the Sunday-evening start
                [stock] = manager.backfill(["AAPL"], "1m", start, end)
                assert stock.ok and stock.requests == 1  # a week of stock minutes fits
            assert gw.stats()["requests"].get("cancel_historical", 0) == 0  # nothing timed out
        finally:
            farm.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------- other exchanges


@pytest.mark.parametrize("symbol,timeframe,bar_size,start,end", [
    ("VOD@LSE", "1h", "1 hour", utc(2024, 3, 18), utc(2024, 4, 8)),     # Good Friday, Easter Monday
    ("700@SEHK", "30m", "30 mins", utc(2024, 5, 27), NOW),  # lunch breaks; Tuen Ng is June 10
    ("700@SEHK", "1d", "1 day", utc(2024, 1, 2), NOW),      # Lunar New Year
    ("VOD@LSE", "1d", "1 day", utc(2023, 12, 1), utc(2024, 1, 31)),     # Christmas, Boxing Day
])
def test_listings_on_other_exchanges(manager, sim, symbol, timeframe, bar_size, start, end):
    frame = manager.load_data(symbol, timeframe, start, end, mode="full")
    assert_matches_model(frame, model_bars(sim, symbol, "STK", bar_size, start, end))
    assert frame.attrs["gaps_left"] == 0
    assert manager.find_gaps(symbol, timeframe, start, end) == []
    info = manager.cache.contract(symbol)
    assert info.currency == {"VOD@LSE": "GBP", "700@SEHK": "HKD"}[symbol]
    if timeframe == "1d":  # the trading date on the exchange's clock
        zone = ZoneInfo(info.time_zone)
        assert all(s.tz_convert(zone).time() == datetime.min.time() for s in frame.index)
    before = sim.stats()["requests"]
    again = DataManager(manager.data_dir, manager.provider)
    [report] = again.backfill([symbol], timeframe, start, end)
    assert report.ok and report.requests == 0 and report.gaps_left == 0
    assert sim.stats()["requests"] == before


def test_lunch_break_sessions(manager):
    info = manager.provider
    calendar = SessionCalendar(_contract(info, "700@SEHK"))
    morning, afternoon = calendar.day_sessions(date(2024, 6, 5))
    hk = ZoneInfo("Asia/Hong_Kong")
    wall = [datetime.fromtimestamp(t, hk).strftime("%H:%M") for t in (*morning, *afternoon)]
    assert wall == ["09:30", "12:00", "13:00", "16:00"]
    assert calendar.day_sessions(date(2024, 6, 10)) == []   # Tuen Ng
    assert calendar.day_sessions(date(2023, 1, 23)) == []   # Lunar New Year, from the calendar
    # a date far from IB's hours sample keeps the break
    assert len(calendar.day_sessions(date(2019, 3, 6))) == 2


def _contract(provider, symbol):
    from ktrdr.data.data_manager import run_sync

    return run_sync(provider.get_contract_details(symbol))


def test_futures_resolve_on_their_exchange(manager, sim):
    start, end = utc(2024, 5, 13), NOW
    frame = manager.load_data("ZC@CBOT", "1h", start, end, mode="full")
    assert_matches_model(frame, model_bars(sim, "ZC@CBOT", "FUT", "1 hour", start, end))
    assert manager.find_gaps("ZC@CBOT", "1h", start, end) == []
    assert manager.cache.contract("ZC@CBOT").instrument_type == "future"


# ------------------------------------------------------------------------- early closes


def test_no_gap_after_an_early_close(manager, sim, clock):
    clock.now = utc(2024, 7, 8, 21, 0)
    start, end = utc(2024, 7, 1), utc(2024, 7, 6)
    frame = manager.load_data("AAPL", "1h", start, end, mode="full")
    assert_matches_model(frame, model_bars(sim, "AAPL", "STK", "1 hour", start, end))
    early = frame[frame.index.tz_convert(NY).date == date(2024, 7, 3)]
    assert early.index[-1].tz_convert(NY).hour == 12  # the 12:00-13:00 bar ends the day
    assert manager.find_gaps("AAPL", "1h", start, end) == []
    # the calendar knows it for years IB's hours do not cover
    calendar = SessionCalendar(manager.cache.contract("AAPL"))
    [(_, close)] = calendar.day_sessions(date(2019, 11, 29))  # the day after Thanksgiving
    assert datetime.fromtimestamp(close, NY).hour == 13


# ------------------------------------------------------------------------- modes and ranges


def test_tail_refuses_a_start_it_would_not_fill(manager, sim):
    manager.load_data("MSFT", "1h", "2024-05-01", mode="full")
    before = historical(sim)
    with pytest.raises(InvalidRangeError, match="use mode 'full'"):
        manager.load_data("MSFT", "1h", "2024-04-01", mode="tail")
    # an end before the last stored bar fetches nothing and returns what is stored
    old = manager.load_data("MSFT", "1h", "2024-05-06", "2024-05-07", mode="tail")
    assert len(old) == 7 and historical(sim) == before
    # a start inside the stored span only bounds the frame
    recent = manager.load_data("MSFT", "1h", "2024-06-03", mode="tail")
    assert recent.index[0] == pd.Timestamp("2024-06-03 13:30", tz=UTC)


def test_daily_ranges_select_by_trading_date(manager):
    frame = manager.load_data("700@SEHK", "1d", "2024-06-03", "2024-06-06", mode="full")
    hk = ZoneInfo("Asia/Hong_Kong")
    assert [s.tz_convert(hk).date() for s in frame.index] == [date(2024, 6, 3),
                                                              date(2024, 6, 4),
                                                              date(2024, 6, 5)]
    assert (frame.index.tz_convert("UTC").hour == 16).all()  # midnight in Hong Kong


def test_the_blocking_twin_refuses_to_run_inside_a_loop(manager):
    async def inside():
        with pytest.raises(RuntimeError, match="_async twin"):
            manager.load_data("AAPL", "1d", mode="local")

    _run_new_loop(inside())


def _run_new_loop(coro):
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_progress_comes_per_request(manager):
    events = []
    [report] = manager.backfill(["SPY"], "1h", "2023-01-01", "2024-01-01",
                                progress=events.append)
    assert report.ok and report.requests == 12
    done = [e.requests_done for e in events if e.symbol == "SPY"]
    assert done == list(range(13))  # 0, then one event per landed request
    assert all(e.requests_total == 12 for e in events)
    assert sum(e.rows for e in events) == report.fetched_rows > 0
    assert events[1].eta is not None and events[-1].eta == 0
    assert np.all(np.diff([e.elapsed for e in events[1:]]) >= 0)
