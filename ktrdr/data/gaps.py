"""Which stretches of a symbol's history are missing, knowing when its market trades.

``SessionCalendar`` turns a provider's contract information (time zone, the sessions of the
week ahead, days listed as closed) into a calendar for any date: each weekday's session is
taken from the sample on the exchange's wall clock (so it follows daylight saving time) and
exchange holidays come from the ``holidays`` package (NYSE for stocks, futures and indices;
only New Year's Day and Christmas for forex).

``missing_ranges`` compares the expected sessions of a range with what is stored: a session
is present when a fetch already covered it (with or without bars: a "no data" answer is not
asked again) or when it holds bars and a later session does too (the session of the last
stored bar may be partial, so it is fetched again). Adjacent missing sessions form one range,
rounded out to whole days (Mondays for weekly bars) and never reaching past "now".
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import pandas as pd

from ktrdr.data.external_data_interface import ContractInfo
from ktrdr.data.timeframes import as_utc, is_daily_or_longer, unit_ceil, unit_floor

log = logging.getLogger(__name__)

UTC = timezone.utc

#: A weekday's session on the wall clock: open day offset (-1: the evening before), open, close.
Template = tuple[int, time, time]


@lru_cache(maxsize=8)
def _nyse(first_year: int, last_year: int) -> frozenset[date]:
    return frozenset(holidays.financial_holidays("NYSE", years=range(first_year, last_year + 1)))


def exchange_holidays(instrument_type: str, first_year: int, last_year: int) -> frozenset[date]:
    """Days the instrument's market is closed although it is a weekday."""
    if instrument_type == "forex":
        return frozenset(date(y, m, d) for y in range(first_year, last_year + 1)
                         for m, d in ((1, 1), (12, 25)))
    return _nyse(first_year, last_year)


@dataclass(frozen=True)
class Sessions:
    """Expected sessions, one per trading date, sorted: epoch seconds (UTC) and dates."""

    open: np.ndarray
    close: np.ndarray
    days: list[date]

    def __len__(self) -> int:
        return len(self.days)


class SessionCalendar:
    """Sessions of one instrument for any date range (see the module docstring)."""

    def __init__(self, info: ContractInfo):
        self.info = info
        self.instrument_type = info.instrument_type
        self.zone = ZoneInfo(info.time_zone or "UTC")
        self.known: dict[date, tuple[int, int]] = {}
        for start, end in info.sessions:
            trading_date = datetime.fromtimestamp(end, UTC).astimezone(self.zone).date()
            self.known[trading_date] = (int(start), int(end))
        self.closed = {date.fromisoformat(d) for d in info.closed_days} - set(self.known)
        self.templates = self._templates()

    def _templates(self) -> dict[int, Template]:
        by_day: dict[int, Template] = {}
        for trading_date, (start, end) in self.known.items():
            o = datetime.fromtimestamp(start, UTC).astimezone(self.zone)
            c = datetime.fromtimestamp(end, UTC).astimezone(self.zone)
            by_day[trading_date.weekday()] = ((o.date() - trading_date).days, o.time(), c.time())
        common = Counter(by_day.values()).most_common(1)
        if not common:  # nothing known: a plain weekday market, whole days
            fallback: Template = (0, time(0, 0), time(23, 59))
        else:
            fallback = common[0][0]
        for weekday in range(7):
            if weekday in by_day:
                continue
            closed_that_day = [d for d in self.closed if d.weekday() == weekday]
            if closed_that_day:
                # Closed in the sample: a holiday there says nothing about the weekday.
                if all(d in self._holidays(d.year, d.year) for d in closed_that_day):
                    by_day[weekday] = fallback
            elif weekday < 5:
                by_day[weekday] = fallback
        return by_day

    def _holidays(self, first_year: int, last_year: int) -> frozenset[date]:
        return exchange_holidays(self.instrument_type, first_year, last_year)

    def is_trading_day(self, day: date, closed: frozenset[date] | None = None) -> bool:
        if day in self.known:
            return True
        if day in self.closed or day.weekday() not in self.templates:
            return False
        closed = closed if closed is not None else self._holidays(day.year, day.year)
        return day not in closed

    def session(self, day: date) -> tuple[int, int]:
        """``(open, close)`` epoch seconds of trading date ``day`` (assumed to trade)."""
        if day in self.known:
            return self.known[day]
        offset, opens, closes = self.templates[day.weekday()]
        o = datetime.combine(day + timedelta(days=offset), opens, tzinfo=self.zone)
        c = datetime.combine(day, closes, tzinfo=self.zone)
        return int(o.timestamp()), int(c.timestamp())

    def sessions(self, start: datetime, end: datetime, daily: bool = False) -> Sessions:
        """Sessions overlapping ``[start, end)``; with ``daily``, those closing in
        ``(start, end]`` (how daily bars are selected)."""
        s, e = int(as_utc(start).timestamp()), int(as_utc(end).timestamp())
        first = as_utc(start).date() - timedelta(days=2)
        last = as_utc(end).date() + timedelta(days=2)
        closed = self._holidays(first.year, last.year)
        opens, closes, days = [], [], []
        day = first
        while day <= last:
            if self.is_trading_day(day, closed):
                o, c = self.session(day)
                keep = (s < c <= e) if daily else (o < e and c > s)
                if keep:
                    opens.append(o)
                    closes.append(c)
                    days.append(day)
            day += timedelta(days=1)
        return Sessions(np.array(opens, np.int64), np.array(closes, np.int64), days)


def _covered_by(ranges: list[tuple[int, int]], lo: np.ndarray, hi: np.ndarray,
                daily: bool) -> np.ndarray:
    """Per session: whether one fetched range covers it (``[lo, hi)``; daily: ``hi`` in it)."""
    out = np.zeros(len(lo), bool)
    for a, b in ranges:
        out |= ((a < hi) & (hi <= b)) if daily else ((a <= lo) & (hi <= b))
    return out


def _with_bars(sessions: Sessions, index: pd.DatetimeIndex, timeframe: str) -> np.ndarray:
    """Per session: whether stored bars fall in it."""
    if len(index) == 0 or len(sessions) == 0:
        return np.zeros(len(sessions), bool)
    stamps = index.as_unit("s").asi8
    if is_daily_or_longer(timeframe):
        # Daily bars are dated 00:00 UTC of their trading date; weekly ones by a day of the week.
        week = timeframe == "1w"
        keys = {(d - timedelta(days=d.weekday())) if week else d
                for d in pd.to_datetime(stamps, unit="s").date}
        return np.array([((d - timedelta(days=d.weekday())) if week else d) in keys
                         for d in sessions.days], bool)
    pos = np.searchsorted(stamps, sessions.open, side="left")
    nxt = stamps[np.minimum(pos, len(stamps) - 1)]
    return (pos < len(stamps)) & (nxt < sessions.close)


def _missing(calendar: SessionCalendar, timeframe: str, start: datetime, end: datetime,
             now: datetime, index: pd.DatetimeIndex, fetched: list[tuple[int, int]]
             ) -> tuple[Sessions, np.ndarray]:
    """Expected sessions of ``[start, min(end, now))`` and which of them are missing."""
    start, end = as_utc(start), min(as_utc(end), as_utc(now))
    if end <= start:
        return Sessions(np.empty(0, np.int64), np.empty(0, np.int64), []), np.zeros(0, bool)
    daily = is_daily_or_longer(timeframe)
    sessions = calendar.sessions(start, end, daily=daily)
    s, e = int(start.timestamp()), int(end.timestamp())
    lo = np.maximum(sessions.open, s)
    hi = np.minimum(sessions.close, e)
    present = _covered_by(fetched, lo, hi, daily)
    bars = _with_bars(sessions, index, timeframe)
    if bars.any():
        last = int(np.flatnonzero(bars)[-1])
        bars[last] = daily or _last_complete(int(sessions.close[last]), index, fetched)
    return sessions, ~(present | bars)


def missing_ranges(calendar: SessionCalendar, timeframe: str, start: datetime, end: datetime,
                   now: datetime, index: pd.DatetimeIndex, fetched: list[tuple[int, int]]
                   ) -> list[tuple[datetime, datetime]]:
    """Ranges of ``[start, min(end, now))`` where bars should exist and are not stored.

    Args:
        calendar: the instrument's sessions.
        timeframe: a ktrdr timeframe.
        start, end: the range asked for.
        now: the provider's clock; nothing at or after it is missing.
        index: timestamps of the stored bars (sorted).
        fetched: ranges (epoch seconds) already fetched, with or without bars.
    """
    sessions, missing = _missing(calendar, timeframe, start, end, now, index, fetched)
    daily = is_daily_or_longer(timeframe)
    s = int(as_utc(start).timestamp())
    out: list[tuple[datetime, datetime]] = []
    k, n = 0, len(sessions)
    while k < n:
        if not missing[k]:
            k += 1
            continue
        j = k
        while j + 1 < n and missing[j + 1]:
            j += 1
        first = int(sessions.close[k]) if daily else max(int(sessions.open[k]), s)
        a = unit_floor(timeframe, datetime.fromtimestamp(first, UTC))
        b = min(unit_ceil(timeframe, datetime.fromtimestamp(int(sessions.close[j]), UTC)),
                as_utc(now))
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif a < b:
            out.append((a, b))
        k = j + 1
    return out


def count_missing_sessions(calendar: SessionCalendar, timeframe: str, start: datetime,
                           end: datetime, now: datetime, index: pd.DatetimeIndex,
                           fetched: list[tuple[int, int]]) -> int:
    """How many expected sessions of the range are neither stored nor known to be empty."""
    return int(_missing(calendar, timeframe, start, end, now, index, fetched)[1].sum())


def _last_complete(close: int, index: pd.DatetimeIndex, fetched: list[tuple[int, int]]) -> bool:
    """Whether the session holding the last stored bar is complete: a fetch reached its close
    (otherwise that fetch ended mid-session and the rest is still to come)."""
    if len(index) and int(index[-1].timestamp()) >= close:
        return True
    return any(a < close <= b for a, b in fetched)
