"""The simulator's market model: contracts, calendars and exactly consistent bars."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from ibfarm.sim.instruments import Instrument, third_friday
from ibfarm.sim.market import Bars, MarketModel

UTC = timezone.utc
ET = ZoneInfo("America/New_York")
CT = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def et(*args: int) -> datetime:
    return datetime(*args, tzinfo=ET)


def local(ts: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(int(ts), tz=UTC).astimezone(zone)


@pytest.fixture(scope="module")
def model() -> MarketModel:
    return MarketModel(seed=7, now=lambda: NOW)


def one(model: MarketModel, **kw: str) -> Instrument:
    found = model.resolve(**kw)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def aapl(model: MarketModel) -> Instrument:
    return one(model, symbol="AAPL", sec_type="STK", exchange="SMART", currency="USD")


@pytest.fixture(scope="module")
def eurusd(model: MarketModel) -> Instrument:
    return one(model, symbol="EUR", sec_type="CASH", exchange="IDEALPRO", currency="USD")


@pytest.fixture(scope="module")
def esz6(model: MarketModel) -> Instrument:
    return one(model, symbol="ES", sec_type="FUT", exchange="CME", last_trade="202612")


def regroup(coarse: Bars, fine: Bars, by_end: bool = False) -> Bars:
    """Aggregate ``fine`` into the bars of ``coarse`` by start time (or, ``by_end``, by the
    last element's date, as weekly and monthly bars are dated), independently of the model."""
    assert len(coarse) and len(fine)
    if by_end:
        assert fine.time[-1] == coarse.time[-1]
        idx = np.searchsorted(coarse.time, fine.time, side="left")
    else:
        assert fine.time[0] == coarse.time[0]
        idx = np.searchsorted(coarse.time, fine.time, side="right") - 1
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(idx)] - 1
    vol = np.add.reduceat(fine.volume, starts)
    return Bars(
        time=fine.time[starts], open=fine.open[starts], close=fine.close[ends],
        high=np.maximum.reduceat(fine.high, starts), low=np.minimum.reduceat(fine.low, starts),
        volume=vol, count=np.add.reduceat(fine.count, starts),
        wap=np.add.reduceat(fine.volume * fine.wap, starts) / np.where(vol > 0, vol, 1),
        daily=coarse.daily)


def assert_aggregates(coarse: Bars, fine: Bars, wap_tol: float = 1e-3,
                      by_end: bool = False) -> None:
    got = regroup(coarse, fine, by_end)
    assert len(got) == len(coarse)
    if not coarse.daily:
        np.testing.assert_array_equal(got.time, coarse.time)
    for field in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(got, field), getattr(coarse, field), err_msg=field)
    if np.all(fine.volume == -1):   # not TRADES: no volume, wap or count at any size
        assert np.all(coarse.volume == -1) and np.all(coarse.wap == -1)
        assert np.all(coarse.count == -1)
        return
    np.testing.assert_array_equal(got.volume, coarse.volume)
    np.testing.assert_array_equal(got.count, coarse.count)
    traded = coarse.volume > 0      # an empty 5-second bar has no volume-weighted price
    np.testing.assert_allclose(got.wap[traded], coarse.wap[traded], rtol=0, atol=wap_tol)


# ------------------------------------------------------------------------------ contracts

def test_resolve_stocks(model: MarketModel, aapl: Instrument) -> None:
    assert aapl.con_id == 265598 and aapl.primary_exchange == "NASDAQ"
    assert aapl.trading_class == "NMS" and aapl.time_zone == "US/Eastern"
    assert one(model, symbol="AAPL", sec_type="STK", exchange="NASDAQ") == aapl
    assert one(model, con_id=265598) == aapl
    ibm = one(model, symbol="IBM", sec_type="STK", exchange="NYSE")
    assert (ibm.con_id, ibm.trading_class) == (8314, "IBM")
    assert one(model, symbol="SPY", sec_type="STK").primary_exchange == "ARCA"
    assert model.resolve(symbol="AAPL", sec_type="STK", exchange="IDEALPRO") == []
    assert model.resolve(symbol="AAPL", sec_type="STK", currency="EUR") == []
    assert model.resolve(symbol="AAPL", sec_type="CASH") == []
    assert model.resolve(symbol="AAPL") == []            # sec_type is required
    assert model.resolve(symbol="aapl", sec_type="STK") == []
    assert model.resolve(symbol="XYZQ", sec_type="STK") == []
    assert model.resolve(con_id=1) == []


def test_resolve_forex_index(model: MarketModel, eurusd: Instrument) -> None:
    assert (eurusd.con_id, eurusd.local_symbol, eurusd.min_tick) == (12087792, "EUR.USD", 5e-05)
    assert one(model, local_symbol="EUR.USD", sec_type="CASH") == eurusd
    jpy = one(model, symbol="USD", sec_type="CASH", currency="JPY")
    assert (jpy.con_id, jpy.min_tick) == (15016059, 0.005)
    assert model.resolve(symbol="EUR", sec_type="CASH", exchange="SMART") == []
    spx = one(model, symbol="SPX", sec_type="IND", exchange="CBOE")
    assert (spx.con_id, spx.time_zone) == (416904, "US/Central")


def test_resolve_futures(model: MarketModel, esz6: Instrument) -> None:
    listed = model.resolve(symbol="ES", sec_type="FUT", exchange="GLOBEX")
    assert [i.local_symbol for i in listed] == ["ESZ6", "ESH7", "ESM7", "ESU7"]
    assert len({i.con_id for i in model.instruments}) == len(model.instruments)
    for inst in listed:
        expiry = datetime.strptime(inst.last_trade_date, "%Y%m%d").date()
        assert expiry == third_friday(expiry.year, expiry.month) and expiry.weekday() == 4
        assert inst.multiplier == "50" and inst.min_tick == 0.25
    assert esz6.last_trade_date == "20261218"
    assert one(model, symbol="ES", sec_type="FUT", last_trade="20261218") == esz6
    assert one(model, local_symbol="ESZ6", sec_type="FUT") == esz6
    assert model.resolve(symbol="ES", sec_type="FUT", last_trade="202609") == []  # expired
    later = MarketModel(seed=7, now=lambda: utc(2026, 12, 19))
    assert [i.local_symbol for i in later.resolve(symbol="ES", sec_type="FUT")][0] == "ESH7"


def test_what_to_show(model: MarketModel, aapl: Instrument, eurusd: Instrument) -> None:
    assert not eurusd.what_to_show_ok("TRADES") and eurusd.what_to_show_ok("MIDPOINT")
    assert all(aapl.what_to_show_ok(w) for w in ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK"))
    assert not aapl.what_to_show_ok("OPTION_IMPLIED_VOLATILITY_X")
    with pytest.raises(ValueError):
        model.bars(eurusd, "1 min", utc(2024, 11, 26), utc(2024, 11, 27), False, "TRADES")


# ------------------------------------------------------------------------------ aggregation

def test_minutes_aggregate_to_5_min_and_1_hour(model: MarketModel, aapl: Instrument) -> None:
    start, end = utc(2024, 11, 25), utc(2024, 11, 28)
    for rth in (False, True):
        m1 = model.bars(aapl, "1 min", start, end, rth, "TRADES")
        assert_aggregates(model.bars(aapl, "5 mins", start, end, rth, "TRADES"), m1)
        hourly = model.bars(aapl, "1 hour", start, end, rth, "TRADES")
        assert_aggregates(hourly, m1)
    first = [local(t, ET).strftime("%H:%M") for t in hourly.time[:3]]
    assert first == ["09:30", "10:00", "11:00"]      # clipped to the session, then on the hour


def test_fx_4_hour_bars_align_and_aggregate(model: MarketModel, eurusd: Instrument) -> None:
    start, end = utc(2024, 11, 24), utc(2024, 11, 27, 1)   # 20:00 New York: a 4-hour edge
    h4 = model.bars(eurusd, "4 hours", start, end, False, "MIDPOINT")
    m1 = model.bars(eurusd, "1 min", start, end, False, "MIDPOINT")
    assert_aggregates(h4, m1)
    hours = [local(t, ET).strftime("%a %H:%M") for t in h4.time[:4]]
    assert hours == ["Sun 17:15", "Sun 20:00", "Mon 00:00", "Mon 04:00"]
    assert np.all(h4.volume == -1) and np.all(h4.count == -1) and np.all(h4.wap == -1)


def test_daily_bars_aggregate_minutes(model: MarketModel, aapl: Instrument,
                                      esz6: Instrument) -> None:
    for inst in (aapl, esz6):
        for rth in (False, True):
            daily = model.bars(inst, "1 day", utc(2025, 4, 7), utc(2025, 4, 12), rth, "TRADES")
            assert len(daily) == 5 and daily.daily
            for k, t in enumerate(daily.time):
                day = datetime.fromtimestamp(int(t), UTC).date()
                midnight = utc(day.year, day.month, day.day)
                (o, c, d), = [x for x in model.sessions(inst, midnight - timedelta(days=1),
                                                        midnight + timedelta(days=2), rth)
                              if x[2] == day]
                m1 = model.bars(inst, "1 min", o, c, rth, "TRADES")
                one_day = Bars(daily.time[k:k + 1], *(getattr(daily, f)[k:k + 1] for f in
                               ("open", "high", "low", "close", "wap", "volume", "count")),
                               daily=True)
                one_day.time = m1.time[:1]       # compare by content, not by dating convention
                assert_aggregates(one_day, m1)


def test_weekly_monthly_aggregate_daily(model: MarketModel, aapl: Instrument) -> None:
    start, end = utc(2024, 1, 1), utc(2024, 7, 1)
    daily = model.bars(aapl, "1 day", start, end, True, "TRADES")
    weekly = model.bars(aapl, "1 week", start, end, True, "TRADES")
    monthly = model.bars(aapl, "1 month", start, end, True, "TRADES")
    assert_aggregates(weekly, daily, by_end=True)
    assert_aggregates(monthly, daily, by_end=True)
    assert len(monthly) == 6
    # Dated by the last trading day of the period, as IB dates them: Friday, or Thursday
    # 2024-03-28 before Good Friday; months by their last trading day.
    weeks = [datetime.fromtimestamp(int(t), UTC).date() for t in weekly.time]
    assert weeks[:3] == [date(2024, 1, 5), date(2024, 1, 12), date(2024, 1, 19)]
    assert date(2024, 3, 28) in weeks and date(2024, 3, 29) not in weeks
    assert [datetime.fromtimestamp(int(t), UTC).date() for t in monthly.time[:3]] == [
        date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 28)]


def test_weeks_and_months_are_whole_whatever_the_range_start(model: MarketModel,
                                                            aapl: Instrument) -> None:
    end = utc(2024, 7, 1)
    whole = model.bars(aapl, "1 week", utc(2024, 5, 27), end, True, "TRADES")
    cut = model.bars(aapl, "1 week", utc(2024, 5, 30), end, True, "TRADES")   # a Thursday
    for f in ("time", "open", "high", "low", "close", "volume", "count", "wap"):
        np.testing.assert_array_equal(getattr(cut, f), getattr(whole, f))
    months = model.bars(aapl, "1 month", utc(2024, 5, 20), end, True, "TRADES")
    may = model.bars(aapl, "1 day", utc(2024, 5, 1), utc(2024, 6, 1), True, "TRADES")
    assert months.open[0] == may.open[0] and months.volume[0] == may.volume.sum()


def test_seconds_aggregate_to_5_secs_and_minutes(model: MarketModel, aapl: Instrument,
                                                 esz6: Instrument) -> None:
    for inst, start in ((aapl, utc(2024, 11, 26, 14, 40)), (esz6, utc(2025, 3, 4, 2, 10))):
        end = start + timedelta(minutes=30)
        s1 = model.bars(inst, "1 secs", start, end, False, "TRADES")
        s5 = model.bars(inst, "5 secs", start, end, False, "TRADES")
        m1 = model.bars(inst, "1 min", start, end, False, "TRADES")
        assert len(s1) == 1800 and len(s5) == 360 and len(m1) == 30
        assert_aggregates(s5, s1)
        assert_aggregates(m1, s1)
        assert_aggregates(m1, s5)
        assert np.all(s1.volume == np.round(s1.volume)) and np.all(s1.count <= s1.volume)
        assert np.all(s1.count[s1.volume == 0] == 0)


def test_bid_ask_are_fixed_shifts(model: MarketModel, esz6: Instrument) -> None:
    args = (utc(2025, 6, 2), utc(2025, 6, 3), False)
    mid = model.bars(esz6, "15 mins", *args, "MIDPOINT")
    trades = model.bars(esz6, "15 mins", *args, "TRADES")
    bid = model.bars(esz6, "15 mins", *args, "BID")
    ask = model.bars(esz6, "15 mins", *args, "ASK")
    both = model.bars(esz6, "15 mins", *args, "BID_ASK")
    for f in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(mid, f), getattr(trades, f))
        np.testing.assert_array_equal(getattr(bid, f), getattr(mid, f) - 0.25)
        np.testing.assert_array_equal(getattr(ask, f), getattr(mid, f) + 0.25)
    np.testing.assert_array_equal(both.open, bid.open)
    np.testing.assert_array_equal(both.high, ask.high)
    np.testing.assert_array_equal(both.low, bid.low)
    np.testing.assert_array_equal(both.close, ask.close)


# ------------------------------------------------------------------------------ determinism

def test_deterministic_across_instances(aapl: Instrument, eurusd: Instrument) -> None:
    a, b = MarketModel(seed=3), MarketModel(seed=3)
    for inst, what in ((aapl, "TRADES"), (eurusd, "BID_ASK")):
        for size, span in (("1 min", 2), ("1 secs", 0), ("1 day", 30)):
            start = utc(2023, 5, 16, 15)
            end = start + (timedelta(days=span) if span else timedelta(minutes=10))
            x = a.bars(inst, size, start, end, False, what)
            y = b.bars(inst, size, start, end, False, what)
            assert len(x) > 0
            for f in ("time", "open", "high", "low", "close", "wap", "volume", "count"):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    other = MarketModel(seed=4).bars(aapl, "1 min", utc(2023, 5, 16), utc(2023, 5, 17), False,
                                     "TRADES")
    same = a.bars(aapl, "1 min", utc(2023, 5, 16), utc(2023, 5, 17), False, "TRADES")
    assert not np.array_equal(other.close, same.close)


# ------------------------------------------------------------------------------ sessions

def test_stock_closed_on_weekends_and_holidays(model: MarketModel, aapl: Instrument) -> None:
    for day in (date(2024, 11, 23), date(2024, 11, 24), date(2024, 11, 28), date(2024, 7, 4)):
        start = et(day.year, day.month, day.day)
        assert len(model.bars(aapl, "1 min", start, start + timedelta(days=1), False,
                              "TRADES")) == 0
    week = model.bars(aapl, "1 day", utc(2024, 11, 24), utc(2024, 11, 30, 23), True, "TRADES")
    days = [datetime.fromtimestamp(int(t), UTC).date().day for t in week.time]
    assert days == [25, 26, 27, 29]
    # Day after Thanksgiving closes early at 13:00 (regular) and 17:00 (all hours).
    fri = model.bars(aapl, "1 min", utc(2024, 11, 29), utc(2024, 11, 30), True, "TRADES")
    assert local(fri.time[-1], ET).strftime("%H:%M") == "12:59" and len(fri) == 210
    fri_all = model.bars(aapl, "1 min", utc(2024, 11, 29), utc(2024, 11, 30), False, "TRADES")
    assert local(fri_all.time[-1], ET).strftime("%H:%M") == "16:59"


def test_rth_is_subset_of_all_hours(model: MarketModel, aapl: Instrument) -> None:
    all_hours = model.bars(aapl, "1 min", et(2024, 11, 25), et(2024, 11, 26), False, "TRADES")
    rth = model.bars(aapl, "1 min", et(2024, 11, 25), et(2024, 11, 26), True, "TRADES")
    assert len(all_hours) == 960 and len(rth) == 390
    inside = (all_hours.time >= et(2024, 11, 25, 9, 30).timestamp()) & \
        (all_hours.time < et(2024, 11, 25, 16).timestamp())
    for f in ("time", "open", "high", "low", "close", "volume", "count", "wap"):
        np.testing.assert_array_equal(getattr(all_hours, f)[inside], getattr(rth, f))
    # Regular hours carry more volume per minute than the extended session.
    assert rth.volume.mean() > 5 * all_hours.volume[~inside].mean()


def test_fx_trades_on_us_holidays_but_not_christmas(model: MarketModel,
                                                    eurusd: Instrument) -> None:
    thanksgiving = model.bars(eurusd, "1 hour", utc(2024, 11, 28, 5), utc(2024, 11, 28, 21),
                              False, "MIDPOINT")
    assert len(thanksgiving) == 16
    xmas = model.sessions(eurusd, utc(2024, 12, 24, 23), utc(2024, 12, 26, 0), False)
    assert [d for _, _, d in xmas] == [date(2024, 12, 26)]
    assert xmas[0][0] == utc(2024, 12, 25, 22, 15)   # opens Christmas evening for the 26th
    assert len(model.bars(eurusd, "1 min", utc(2024, 12, 25), utc(2024, 12, 25, 22, 15), False,
                          "MIDPOINT")) == 0


def test_fx_sunday_open_across_dst(model: MarketModel, eurusd: Instrument) -> None:
    # 17:15 New York time, whether the Sunday is before or after a DST change.
    for sunday, hour in ((date(2024, 3, 3), 22), (date(2024, 3, 10), 21),
                         (date(2024, 11, 3), 22), (date(2024, 10, 27), 21)):
        start = utc(sunday.year, sunday.month, sunday.day)
        bars = model.bars(eurusd, "1 min", start, start + timedelta(days=1), False, "BID")
        assert bars.time[0] == utc(sunday.year, sunday.month, sunday.day, hour, 15).timestamp()
        assert len(model.bars(eurusd, "1 min", start - timedelta(days=1), start, False,
                              "BID")) == 0   # Saturday is closed


def test_stock_sessions_across_dst(model: MarketModel, aapl: Instrument) -> None:
    opens = {d: model.sessions(aapl, utc(2024, d[0], d[1]), utc(2024, d[0], d[1], 23), True)[0][0]
             for d in ((3, 8), (3, 11), (11, 1), (11, 4))}
    assert [o.hour * 60 + o.minute for o in opens.values()] == [870, 810, 810, 870]
    bars = model.bars(aapl, "1 hour", utc(2024, 3, 8), utc(2024, 3, 12), True, "TRADES")
    assert {local(t, ET).strftime("%H:%M") for t in bars.time} == {
        "09:30", "10:00", "11:00", "12:00", "13:00", "14:00", "15:00"}
    assert len(bars) == 14


def test_futures_sessions_and_expiry(model: MarketModel, esz6: Instrument) -> None:
    sess = model.sessions(esz6, utc(2025, 11, 10), utc(2025, 11, 11, 23), False)
    assert [(local(o.timestamp(), CT).strftime("%a %H:%M"), local(c.timestamp(), CT)
             .strftime("%a %H:%M"), d) for o, c, d in sess] == [
        ("Sun 17:00", "Mon 16:00", date(2025, 11, 10)),
        ("Mon 17:00", "Tue 16:00", date(2025, 11, 11))]
    liquid = model.sessions(esz6, utc(2025, 11, 10), utc(2025, 11, 11), True)
    assert [local(o.timestamp(), CT).strftime("%H:%M") for o, _, _ in liquid] == ["08:30"]
    assert model.sessions(esz6, utc(2026, 12, 19), utc(2027, 1, 5), False) == []
    assert model.sessions(esz6, utc(2026, 12, 18), utc(2026, 12, 19), False)[-1][2] == \
        date(2026, 12, 18)


def test_trading_hours_strings(model: MarketModel, aapl: Instrument, eurusd: Instrument,
                               esz6: Instrument) -> None:
    entry = re.compile(r"^(\d{8}):(?:CLOSED|(\d{4})-(\d{8}):(\d{4}))$")
    text = model.trading_hours(aapl, date(2024, 11, 23), 9, liquid=False)
    parts = text.split(";")
    assert len(parts) == 9 and all(entry.match(p) for p in parts)
    assert parts[:3] == ["20241123:CLOSED", "20241124:CLOSED", "20241125:0400-20241125:2000"]
    assert "20241128:CLOSED" in parts and "20241129:0400-20241129:1700" in parts
    assert model.trading_hours(aapl, date(2024, 11, 25), 1, liquid=True) == \
        "20241125:0930-20241125:1600"
    fx = model.trading_hours(eurusd, date(2024, 11, 24), 2, liquid=False)
    assert fx == "20241124:1715-20241125:1700"  # no Sunday CLOSED where the session opens
    assert model.trading_hours(eurusd, date(2024, 11, 25), 1, liquid=True) == \
        "20241124:1715-20241125:1700"
    es = model.trading_hours(esz6, date(2025, 3, 7), 4, liquid=False)
    assert es == "20250306:1700-20250307:1600;20250308:CLOSED;20250309:1700-20250310:1600"
    assert model.trading_hours(esz6, date(2025, 3, 10), 1, liquid=True) == \
        "20250310:0830-20250310:1500"


# ------------------------------------------------------------------------------ head, prices

def test_head_timestamp_respected(model: MarketModel, aapl: Instrument, esz6: Instrument) -> None:
    head = utc(1980, 12, 12, 14, 30)
    assert model.head_timestamp(aapl, "TRADES", True) == head
    assert model.head_timestamp(aapl, "MIDPOINT", False) == head
    for rth in (True, False):
        bars = model.bars(aapl, "1 min", utc(1980, 12, 1), utc(1980, 12, 13), rth, "TRADES")
        assert bars.time[0] == head.timestamp()
        daily = model.bars(aapl, "1 day", utc(1980, 1, 1), utc(1980, 12, 20), rth, "TRADES")
        assert datetime.fromtimestamp(int(daily.time[0]), UTC).date() == date(1980, 12, 12)
    es_head = model.head_timestamp(esz6, "TRADES", False)
    assert es_head.date() == date(2024, 12, 18) and local(es_head.timestamp(), CT).hour == 8
    assert len(model.bars(esz6, "1 hour", utc(2024, 12, 1), es_head, False, "TRADES")) == 0


def test_prices_are_sane_and_on_tick(model: MarketModel) -> None:
    for inst in model.instruments:
        if inst.delisted:
            continue
        what = "MIDPOINT" if inst.sec_type == "CASH" else "TRADES"
        start = max(utc(2025, 3, 3), model.head_timestamp(inst, what, False))
        bars = model.bars(inst, "1 min", start, start + timedelta(days=3), False, what)
        assert len(bars) >= 990, inst.local_symbol   # 3 x 330: SEHK's short day
        assert np.all(bars.high >= np.maximum(bars.open, bars.close))
        assert np.all(bars.low <= np.minimum(bars.open, bars.close))
        assert np.all(bars.low > 0)
        ticks = bars.close / inst.min_tick
        np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)
        np.testing.assert_array_equal(bars.close, np.round(bars.close, inst.decimals))
        assert np.all(np.diff(bars.time) > 0)
        if what == "TRADES":
            assert np.all(bars.volume >= 1) and np.all(bars.volume == np.round(bars.volume))
            assert np.all((bars.wap >= bars.low - 1e-9) & (bars.wap <= bars.high + 1e-9))
    es = [i for i in model.instruments if i.sec_type == "FUT"][0]
    closes = model.bars(es, "1 hour", utc(2025, 6, 2), utc(2025, 6, 6), False, "TRADES").close
    assert np.all(closes * 4 == np.floor(closes * 4))   # exact quarter points


def test_price_levels_and_continuity(model: MarketModel, aapl: Instrument,
                                     eurusd: Instrument) -> None:
    levels = {"AAPL": (150, 300), "EUR.USD": (0.95, 1.25), "SPX": (4000, 7000),
              "USD.JPY": (120, 190)}
    for inst in model.instruments:
        if inst.local_symbol in levels:
            lo, hi = levels[inst.local_symbol]
            what = "TRADES" if inst.sec_type == "IND" else "MIDPOINT"  # an index has no quotes
            close = model.bars(inst, "1 day", utc(2024, 6, 1), utc(2024, 7, 1), True,
                               what).close
            assert np.all((close > lo) & (close < hi)), inst.local_symbol
    # The all-hours path is continuous from one weekday to the next.
    days = model.bars(aapl, "1 day", utc(2024, 11, 25), utc(2024, 11, 28), False, "TRADES")
    np.testing.assert_array_equal(days.open[1:], days.close[:-1])
    fx = model.bars(eurusd, "1 day", utc(2024, 11, 25), utc(2024, 11, 28), False, "MIDPOINT")
    np.testing.assert_array_equal(fx.open[1:], fx.close[:-1])


def test_large_requests_are_fast(model: MarketModel) -> None:
    nvda = MarketModel(seed=1).resolve(symbol="NVDA", sec_type="STK")[0]
    fresh = MarketModel(seed=1)
    t0 = datetime.now()
    hourly = fresh.bars(nvda, "1 hour", utc(2023, 1, 1), utc(2025, 1, 1), False, "TRADES")
    assert (datetime.now() - t0).total_seconds() < 2.0   # typically ~0.15 s
    assert 7500 < len(hourly) < 8500
