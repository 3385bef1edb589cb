"""Session calendars from contract details and gap detection, without a gateway; and "no data"
answers remembered by DataManager (a scripted provider)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ktrdr.data.data_manager import DataManager
from ktrdr.data.external_data_interface import ContractInfo, ExternalDataProvider
from ktrdr.data.gaps import SessionCalendar, missing_ranges
from ktrdr.data.timeframes import as_utc

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
# IB's liquid hours for a US stock, as contract details list them the week of 2024-07-01.
STOCK_HOURS = ("20240701:0930-20240701:1600;20240702:0930-20240702:1600;"
               "20240703:0930-20240703:1300;20240704:CLOSED;20240705:0930-20240705:1600;"
               "20240706:CLOSED;20240707:CLOSED")
FX_HOURS = ("20240630:1715-20240701:1700;20240701:1715-20240702:1700;"
            "20240702:1715-20240703:1700;20240703:1715-20240704:1700;"
            "20240704:1715-20240705:1700;20240706:CLOSED;20240707:CLOSED")


def info(hours: str, kind: str = "stock", exchange: str | None = None,
         zone: str = "America/New_York") -> ContractInfo:
    """Contract information as the IB adapter builds it from contract details."""
    from ibfarm.contracts import parse_hours

    exchange = exchange or ("IDEALPRO" if kind == "forex" else "NYSE")
    parsed = parse_hours(hours, zone, exchange)
    sessions = tuple((int(s.start.timestamp()), int(s.end.timestamp()),
                      s.trading_date.isoformat()) for s in parsed.sessions)
    return ContractInfo("X", kind, exchange=exchange, time_zone=parsed.zone,
                        liquid_hours=hours, sessions=sessions,
                        closed_days=tuple(d.isoformat() for d in parsed.closed))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_calendar_knows_weekends_holidays_and_daylight_saving():
    cal = SessionCalendar(info(STOCK_HOURS))
    assert not cal.is_trading_day(date(2024, 7, 4))   # listed as closed
    assert not cal.is_trading_day(date(2024, 7, 6))   # a Saturday
    assert not cal.is_trading_day(date(2023, 11, 23))  # Thanksgiving, from the holiday calendar
    assert not cal.is_trading_day(date(2024, 3, 29))  # Good Friday
    assert cal.is_trading_day(date(2023, 7, 4 - 1))   # an ordinary Monday long ago
    # Thursdays come from the other weekdays' sessions (the sample's Thursday was a holiday).
    assert cal.is_trading_day(date(2024, 7, 11))
    winter = cal.session(date(2024, 1, 10))
    summer = cal.session(date(2024, 6, 10))
    assert datetime.fromtimestamp(winter[0], UTC).hour == 14  # 09:30 EST
    assert datetime.fromtimestamp(summer[0], UTC).hour == 13  # 09:30 EDT
    # 2024-01: 21 NYSE trading days (New Year's Day and MLK day off).
    assert len(cal.sessions(utc(2024, 1, 1), utc(2024, 2, 1))) == 21


def test_forex_sessions_open_the_evening_before():
    cal = SessionCalendar(info(FX_HOURS, "forex"))
    assert cal.is_trading_day(date(2024, 7, 4))  # FX trades on US holidays
    assert not cal.is_trading_day(date(2024, 12, 25))
    o, c = cal.session(date(2024, 1, 8))  # a Monday: opens Sunday 17:15 New York
    assert datetime.fromtimestamp(o, NY) == datetime(2024, 1, 7, 17, 15, tzinfo=NY)
    assert datetime.fromtimestamp(c, NY) == datetime(2024, 1, 8, 17, 0, tzinfo=NY)


def _index(*stamps: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(stamps), utc=True))


def test_missing_ranges_by_trading_day():
    cal = SessionCalendar(info(STOCK_HOURS))
    now = utc(2024, 6, 30)
    # Nothing stored: one range, whole days.
    assert missing_ranges(cal, "1h", utc(2024, 6, 3), utc(2024, 6, 8), now, _index(), []) == \
        [(utc(2024, 6, 3), utc(2024, 6, 8))]
    # Bars on Mon, Tue, Thu, Fri (Wed missing), last day complete (a later fetch reached it).
    stored = _index("2024-06-03 14:00", "2024-06-04 14:00", "2024-06-06 14:00",
                    "2024-06-07 19:00")
    fetched = [(int(utc(2024, 6, 7).timestamp()), int(utc(2024, 6, 8).timestamp()))]
    assert missing_ranges(cal, "1h", utc(2024, 6, 3), utc(2024, 6, 8), now, stored,
                          fetched) == [(utc(2024, 6, 5), utc(2024, 6, 6))]
    # Ranges known to hold nothing are not missing; neither is the future.
    everything = [(int(utc(2024, 6, 1).timestamp()), int(utc(2024, 7, 1).timestamp()))]
    assert missing_ranges(cal, "1h", utc(2024, 6, 3), utc(2024, 9, 1), now, _index(),
                          everything) == []
    # The day of the last stored bar is fetched again when no fetch reached its close.
    assert missing_ranges(cal, "1h", utc(2024, 6, 3), utc(2024, 6, 8), now, stored, []) == \
        [(utc(2024, 6, 5), utc(2024, 6, 6)), (utc(2024, 6, 7), utc(2024, 6, 8))]
    # Daily bars: today's bar does not exist before the close.
    mid_day = utc(2024, 6, 7, 15)
    assert missing_ranges(cal, "1d", utc(2024, 6, 3), utc(2024, 6, 10), mid_day, _index(),
                          []) == [(utc(2024, 6, 3), utc(2024, 6, 7))]


class ScriptedProvider(ExternalDataProvider):
    """Hourly bars for every session, except the days in ``empty``; counts calls."""

    name = "scripted"

    def __init__(self, empty: set[date]):
        self.empty = empty
        self.calls: list[tuple[datetime, datetime]] = []
        self.info = info(STOCK_HOURS)
        self.cal = SessionCalendar(self.info)

    async def fetch_historical_data(self, symbol, timeframe, start, end, instrument_type=None):
        self.calls.append((start, end))
        sessions = self.cal.sessions(start, end)
        stamps = [t for o, c, d in zip(sessions.open, sessions.close, sessions.days,
                                       strict=True)
                  if d not in self.empty for t in range(int(o), int(c), 3600)]
        stamps = [t for t in stamps if as_utc(start).timestamp() <= t < end.timestamp()]
        index = pd.DatetimeIndex(pd.to_datetime(stamps, unit="s", utc=True), name="timestamp")
        values = np.arange(len(stamps), dtype=float)
        frame = pd.DataFrame({c: values for c in ("open", "high", "low", "close", "volume")},
                             index=index)
        frame.attrs["requests"] = 1
        return frame

    async def validate_symbol(self, symbol, instrument_type=None):
        return True

    async def get_head_timestamp(self, symbol, timeframe=None, instrument_type=None):
        return utc(2000, 1, 3)

    async def get_contract_details(self, symbol, instrument_type=None):
        return self.info

    async def get_current_time(self):
        return utc(2024, 6, 30)

    async def health_check(self):
        return {"healthy": True}


def test_no_data_answers_are_remembered(tmp_path):
    outage = {date(2024, 6, 5), date(2024, 6, 12)}
    provider = ScriptedProvider(outage)
    with DataManager(tmp_path, provider) as manager:
        frame = manager.load_data("X", "1h", "2024-06-03", "2024-06-15", mode="full")
        assert len(provider.calls) == 1
        assert set(frame.index.date) & outage == set()
        assert frame.attrs["gaps_left"] == 0
        manager.load_data("X", "1h", "2024-06-03", "2024-06-15", mode="full")
        [report] = manager.backfill(["X"], "1h", "2024-06-01", "2024-06-15")
    assert len(provider.calls) == 1 and report.requests == 0
    with DataManager(tmp_path, provider) as manager:  # remembered on disk too
        manager.load_data("X", "1h", "2024-06-03", "2024-06-15", mode="full")
    assert len(provider.calls) == 1


HK_HOURS = ("20240605:0930-20240605:1200;20240605:1300-20240605:1600;"
            "20240606:0930-20240606:1200;20240606:1300-20240606:1600;"
            "20240607:0930-20240607:1200;20240607:1300-20240607:1600;"
            "20240608:CLOSED;20240609:CLOSED;20240610:CLOSED")
ZC_HOURS = ("20231204:1900-20231205:0745;20231205:0830-20231205:1320;"
            "20231205:1900-20231206:0745;20231206:0830-20231206:1320")


def test_trading_hours_are_parsed_once_with_their_trading_dates():
    from ibfarm.contracts import parse_hours

    hours = parse_hours(ZC_HOURS, "US/Central", "CBOT")
    assert hours.zone == "America/Chicago"
    assert [s.trading_date for s in hours.sessions] == [date(2023, 12, 5)] * 2 + \
        [date(2023, 12, 6)] * 2
    hk = parse_hours(HK_HOURS, "Hongkong", "SEHK")
    assert hk.closed == (date(2024, 6, 8), date(2024, 6, 9), date(2024, 6, 10))
    assert len(hk.sessions) == 6


def test_every_session_of_a_day_is_kept():
    cal = SessionCalendar(info(HK_HOURS, exchange="SEHK", zone="Asia/Hong_Kong"))
    assert len(cal.day_sessions(date(2024, 6, 6))) == 2  # morning and afternoon
    assert cal.day_sessions(date(2024, 6, 10)) == []     # listed as closed (Tuen Ng)
    assert not cal.is_trading_day(date(2024, 2, 12))     # Lunar New Year, from the calendar
    # a lunch break is not a gap: bars in both halves, nothing missing
    hk = ZoneInfo("Asia/Hong_Kong")
    stamps = [datetime(2024, 6, 6, h, m, tzinfo=hk) for h, m in
              ((9, 30), (10, 30), (11, 30), (13, 0), (14, 0), (15, 0))]
    index = pd.DatetimeIndex(stamps).tz_convert("UTC")
    fetched = [(int(utc(2024, 6, 6).timestamp()), int(utc(2024, 6, 7).timestamp()))]
    assert missing_ranges(cal, "1h", utc(2024, 6, 6), utc(2024, 6, 7), utc(2024, 6, 8),
                          index, fetched) == []
    # overnight and day sessions of CBOT corn on one trading date
    zc = SessionCalendar(info(ZC_HOURS, "future", exchange="CBOT", zone="America/Chicago"))
    night, day = zc.day_sessions(date(2023, 12, 12))  # a date outside IB's sample
    chicago = ZoneInfo("America/Chicago")
    assert datetime.fromtimestamp(night[0], chicago) == datetime(2023, 12, 11, 19, 0,
                                                                 tzinfo=chicago)
    assert datetime.fromtimestamp(day[1], chicago).strftime("%H:%M") == "13:20"
    assert zc.day_sessions(date(2023, 12, 25)) == []  # CME's Christmas


def test_odd_zones_never_crash():
    from ibfarm.contracts import iana_zone, parse_hours

    assert iana_zone("IST", "NSE") == "Asia/Kolkata"
    assert iana_zone("", "LSE") == "Europe/London"
    assert iana_zone("Mars/Olympus", "SEHK") == "Asia/Hong_Kong"
    assert parse_hours(STOCK_HOURS, "EST", "NYSE").zone == "America/New_York"
    odd = ContractInfo("X", "stock", exchange="NOWHERE", time_zone="Not/AZone")
    cal = SessionCalendar(odd)  # unknown zone and exchange: UTC and weekdays, with warnings
    assert cal.is_trading_day(date(2024, 6, 3)) and not cal.is_trading_day(date(2024, 6, 8))


def test_an_exchange_without_calendar_follows_ibs_hours(caplog):
    with caplog.at_level("WARNING", logger="ktrdr.data.gaps"):
        cal = SessionCalendar(info(STOCK_HOURS, exchange="NOWHERE"))
    assert any("no exchange calendar" in r.message for r in caplog.records)
    assert cal.is_trading_day(date(2023, 11, 23))  # no holidays beyond what IB listed
    assert not cal.is_trading_day(date(2024, 7, 4))  # the one IB listed


def test_durations_count_trading_days():
    from ktrdr.data.timeframes import duration_for, segments

    cal = SessionCalendar(info(STOCK_HOURS))
    # Thu 2024-03-28 .. Tue 2024-04-02: Good Friday and a weekend in between
    assert duration_for("1h", utc(2024, 3, 28), utc(2024, 4, 3), cal) == "3 D"
    assert duration_for("1h", utc(2024, 3, 28), utc(2024, 4, 3)) == "6 D"  # calendar days
    plan = segments("1h", utc(2024, 3, 20), utc(2024, 5, 1), cal)
    assert [s.duration for s in plan] == ["7 D", "1 M"]  # Mar 20-28 has 7 trading days
    # a piece without a session is not asked for
    assert segments("1m", utc(2024, 6, 1), utc(2024, 6, 3), cal) == []
