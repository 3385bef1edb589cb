"""ktrdr's timeframes, the IB bar sizes behind them, bar timestamps, and how ranges are cut
into requests.

Timestamps (every bar, in UTC):

* intraday bars (1m .. 4h): the bar's open (the first regular-hours hour bar of a US stock
  is 09:30);
* daily bars: midnight of the trading date on the exchange's wall clock, so
  ``stamp.tz_convert(zone).date()`` is the trading date (NYSE: 04:00 or 05:00 UTC; HKEX:
  16:00 UTC the evening before);
* weekly bars: midnight of the week's Monday on the exchange's wall clock (the start of the
  period), whatever date the source stamps the week with (IB: its last trading date).

For daily and weekly bars a range ``[start, end)`` selects by *label*: the bar's date on the
exchange's clock (``bar_labels``), so ``start="2024-06-03"`` includes June 3's bar in every
zone.

A range that fits in one request is asked for as one ``N D`` request ending at its end.
Longer ranges are cut on a fixed grid per timeframe (UTC days, weeks from Monday 00:00 UTC,
calendar months, calendar years, or 52-week blocks for weekly bars), so the same range always
produces the same requests: a whole grid cell is asked for with its natural duration ("1 W",
"1 M", "1 Y", "52 W": calendar spans), a part of a cell with ``N D`` (``N W`` for weekly
bars) ending at the part's end. ``N D`` means IB's last N *trading days* up to the end, so N
is counted from the instrument's calendar when one is given (else calendar days: never too
few). The grid steps down (year -> month -> week -> day) while one cell of the instrument
would hold more than ``MAX_BARS`` bars: a week of 1-minute forex is ~7,000 bars, which IB
takes over a minute to send, so it is asked day by day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo

import pandas as pd

UTC = timezone.utc

#: ktrdr timeframe -> IB bar size.
TIMEFRAMES: dict[str, str] = {
    "1m": "1 min", "5m": "5 mins", "15m": "15 mins", "30m": "30 mins",
    "1h": "1 hour", "4h": "4 hours", "1d": "1 day", "1w": "1 week",
}
#: Length of one bar in seconds (weeks nominal).
TIMEFRAME_SECONDS: dict[str, int] = {
    "1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400, "1d": 86400,
    "1w": 7 * 86400,
}
_ALIASES = {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60m": "1h",
            "1hour": "1h", "4hour": "4h", "1day": "1d", "d": "1d", "1week": "1w", "w": "1w"}

#: Grid a timeframe's segments lie on by default: weeks, months, years or 52-week blocks.
_GRID = {"1m": "week", "5m": "week", "15m": "week", "30m": "month", "1h": "month",
         "4h": "month", "1d": "year", "1w": "52weeks"}
#: The next smaller grid, when a cell holds too many bars.
_SMALLER = {"year": "month", "month": "week", "week": "day"}
#: Trading days in a cell of each grid (for sizing).
_CELL_DAYS = {"day": 1, "week": 5, "month": 21, "year": 252, "52weeks": 252}
_NATURAL = {"week": "1 W", "month": "1 M", "year": "1 Y", "52weeks": "52 W"}
#: Longest range asked as one "N D" request per grid (calendar days).
_MAX_DAYS = {"day": 1, "week": 7, "month": 31, "year": 365, "52weeks": 364}
#: Most bars one request should hold (IB's own guide says about 2,000; IB's answer time grows
#: faster than the bar count).
MAX_BARS = 1950
#: A Monday: the origin of the week grids.
_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)


class TimeframeError(ValueError):
    """A timeframe ktrdr does not support."""


def normalize_timeframe(timeframe: str) -> str:
    """``"1H"``, ``"60m"`` -> ``"1h"``.

    Raises:
        TimeframeError: unsupported; the message lists the supported ones.
    """
    text = (timeframe or "").strip().lower().replace(" ", "")
    text = _ALIASES.get(text, text)
    if text not in TIMEFRAMES:
        raise TimeframeError(f"unsupported timeframe {timeframe!r}; use one of "
                             f"{', '.join(TIMEFRAMES)}")
    return text


def bar_size(timeframe: str) -> str:
    """The IB bar size of ``timeframe``."""
    return TIMEFRAMES[normalize_timeframe(timeframe)]


def is_daily_or_longer(timeframe: str) -> bool:
    return TIMEFRAME_SECONDS[normalize_timeframe(timeframe)] >= 86400


def unit_floor(timeframe: str, moment: datetime) -> datetime:
    """``moment`` rounded down to a day (to a Monday for weekly bars), UTC."""
    moment = as_utc(moment)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if normalize_timeframe(timeframe) == "1w":
        day -= timedelta(days=day.weekday())
    return day


def unit_ceil(timeframe: str, moment: datetime) -> datetime:
    """``moment`` rounded up to a day (to a Monday for weekly bars), UTC."""
    moment = as_utc(moment)
    floor = unit_floor(timeframe, moment)
    if floor == moment:
        return floor
    step = 7 if normalize_timeframe(timeframe) == "1w" else 1
    return floor + timedelta(days=step)


def bar_labels(index: pd.DatetimeIndex, timeframe: str, zone: ZoneInfo | str
               ) -> pd.DatetimeIndex:
    """What ranges select bars by: intraday bars by their UTC time; daily and weekly bars by
    their date on the exchange's clock, as midnight UTC of that date."""
    index = pd.DatetimeIndex(index)
    if index.tz is None:
        index = index.tz_localize("UTC")
    if not is_daily_or_longer(timeframe) or len(index) == 0:
        return index.tz_convert("UTC")
    wall = index.tz_convert(zone).tz_localize(None).normalize()
    return wall.tz_localize("UTC")


def label_stamps(days: pd.DatetimeIndex, zone: ZoneInfo | str) -> pd.DatetimeIndex:
    """Dates (midnight, naive or UTC) -> the UTC instant of that midnight on the exchange's
    clock: the timestamp of a daily or weekly bar."""
    days = pd.DatetimeIndex(days)
    if days.tz is not None:
        days = days.tz_localize(None)
    return days.normalize().tz_localize(zone, nonexistent="shift_forward",
                                        ambiguous=False).tz_convert("UTC")


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive means UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class TradingDays(Protocol):
    """What segments need of an instrument's calendar (``gaps.SessionCalendar`` has it)."""

    def trading_dates(self, first: date, last: date) -> list[date]: ...

    def day_sessions(self, day: date) -> list[tuple[int, int]]: ...

    def bars_per_day(self, timeframe: str) -> float: ...


def _cell_start(grid: str, moment: datetime) -> datetime:
    if grid == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if grid == "week":
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday())
    if grid == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if grid == "year":
        return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    blocks = (moment - _MONDAY) // timedelta(weeks=52)
    return _MONDAY + blocks * timedelta(weeks=52)


def _cell_end(grid: str, start: datetime) -> datetime:
    if grid == "day":
        return start + timedelta(days=1)
    if grid == "week":
        return start + timedelta(weeks=1)
    if grid == "month":
        return (start.replace(year=start.year + 1, month=1) if start.month == 12
                else start.replace(month=start.month + 1))
    if grid == "year":
        return start.replace(year=start.year + 1)
    return start + timedelta(weeks=52)


@dataclass(frozen=True)
class Segment:
    """One provider request: bars in ``[start, end)``, asked as ``duration`` ending at ``end``.
    """

    start: datetime
    end: datetime
    duration: str


def grid_of(timeframe: str, calendar: TradingDays | None = None,
            max_bars: int = MAX_BARS) -> str:
    """The grid ``timeframe``'s requests lie on for an instrument (see the module docstring)."""
    timeframe = normalize_timeframe(timeframe)
    grid = _GRID[timeframe]
    if calendar is None:
        return grid
    per_day = calendar.bars_per_day(timeframe)
    while grid in _SMALLER and per_day * _CELL_DAYS[grid] > max_bars:
        grid = _SMALLER[grid]
    return grid


def duration_for(timeframe: str, start: datetime, end: datetime,
                 calendar: TradingDays | None = None) -> str:
    """IB's duration for bars of ``timeframe`` in ``[start, end)`` ending at ``end``: ``N D``
    with N the trading dates the range touches (``N W`` for weekly bars)."""
    timeframe = normalize_timeframe(timeframe)
    start, end = as_utc(start), as_utc(end)
    days = max(1, math.ceil((end - start) / timedelta(days=1)))
    if timeframe == "1w":
        return f"{min(52, math.ceil(days / 7) + 1)} W"
    if calendar is None:
        return f"{days} D"
    last = (end - timedelta(microseconds=1)).date()
    if is_daily_or_longer(timeframe):
        count = len(calendar.trading_dates(start.date(), last)) + 1  # see the module docstring
    else:
        s, e = int(start.timestamp()), int(end.timestamp())
        count = sum(1 for d in calendar.trading_dates(start.date() - timedelta(days=1),
                                                      last + timedelta(days=1))
                    if any(o < e and c > s for o, c in calendar.day_sessions(d)))
    return f"{min(max(1, count), 365)} D"


def segments(timeframe: str, start: datetime, end: datetime,
             calendar: TradingDays | None = None, max_bars: int = MAX_BARS) -> list[Segment]:
    """Cut ``[start, end)`` into requests on the timeframe's grid (see the module docstring).

    Args:
        timeframe: a ktrdr timeframe.
        start, end: the range (labels for daily and weekly bars).
        calendar: the instrument's calendar: sizes the grid and counts ``N D`` in trading
            days; without it, calendar days.
        max_bars: most bars a grid cell may hold.
    """
    timeframe = normalize_timeframe(timeframe)
    start, end = as_utc(start), as_utc(end)
    grid = grid_of(timeframe, calendar, max_bars)
    days = math.ceil((end - start) / timedelta(days=1))

    def part(a: datetime, b: datetime) -> Segment:
        if calendar is None and timeframe != "1w":  # calendar days, rounded out
            n = math.ceil((b - a) / timedelta(days=1))
            return Segment(b - timedelta(days=n), b, f"{n} D")
        return Segment(a, b, duration_for(timeframe, a, b, calendar))

    if 0 < days <= _MAX_DAYS[grid] and not (_cell_start(grid, start) == start
                                             and _cell_end(grid, start) == end):
        if calendar is not None and not _trades(timeframe, start, end, calendar):
            return []  # nothing trades there
        return [part(start, end)]  # one request will do
    out: list[Segment] = []
    cell = _cell_start(grid, start)
    while cell < end:
        cell_end = _cell_end(grid, cell)
        piece_start, piece_end = max(cell, start), min(cell_end, end)
        if piece_start == cell and piece_end == cell_end and grid in _NATURAL:
            out.append(Segment(cell, cell_end, _NATURAL[grid]))
        elif piece_start < piece_end and (calendar is None or _trades(timeframe, piece_start,
                                                                      piece_end, calendar)):
            out.append(part(piece_start, piece_end))
        cell = cell_end
    return out


def _trades(timeframe: str, start: datetime, end: datetime, calendar: TradingDays) -> bool:
    """Whether any session (daily: any trading date) falls in ``[start, end)``: a piece with
    none is not asked for."""
    last = (end - timedelta(microseconds=1)).date()
    if is_daily_or_longer(timeframe):
        return bool(calendar.trading_dates(start.date(), last))
    s, e = int(start.timestamp()), int(end.timestamp())
    return any(o < e and c > s for d in calendar.trading_dates(start.date() - timedelta(days=1),
                                                               last + timedelta(days=1))
               for o, c in calendar.day_sessions(d))
