"""ktrdr's timeframes, the IB bar sizes behind them, and how ranges are cut into segments.

A range that fits in one request is asked for as a whole number of days ("N D") ending at
its end. Longer ranges are cut on a fixed grid per timeframe (weeks from Monday 00:00 UTC,
calendar months, calendar years, or 52-week blocks for weekly bars), so the same range always
produces the same requests: a whole grid cell is asked for with its natural duration ("1 W",
"1 M", "1 Y", "52 W"), a part of a cell with "N D" ending at the part's end. Every duration
stays within the bar size's maximum (``ibfarm.bars.MAX_DURATION``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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

#: Grid a timeframe's segments lie on: weeks, months, years or 52-week blocks.
_GRID = {"1m": "week", "5m": "week", "15m": "week", "30m": "month", "1h": "month",
         "4h": "month", "1d": "year", "1w": "52weeks"}
_NATURAL = {"week": "1 W", "month": "1 M", "year": "1 Y", "52weeks": "52 W"}
#: Longest "N D" request per grid (within the bar size's maximum duration).
_MAX_DAYS = {"week": 7, "month": 31, "year": 365, "52weeks": 364}
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


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive means UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _cell_start(grid: str, moment: datetime) -> datetime:
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

    ``start`` is what the request covers (``end`` minus ``duration``, calendar-wise).
    """

    start: datetime
    end: datetime
    duration: str


def segments(timeframe: str, start: datetime, end: datetime) -> list[Segment]:
    """Cut ``[start, end)`` into requests on the timeframe's grid (see the module docstring)."""
    timeframe = normalize_timeframe(timeframe)
    start, end = as_utc(start), as_utc(end)
    grid = _GRID[timeframe]
    days = math.ceil((end - start) / timedelta(days=1))
    if 0 < days <= _MAX_DAYS[grid] and not (_cell_start(grid, start) == start
                                             and _cell_end(grid, start) == end):
        return [Segment(end - timedelta(days=days), end, f"{days} D")]  # one request will do
    out: list[Segment] = []
    cell = _cell_start(grid, start)
    while cell < end:
        cell_end = _cell_end(grid, cell)
        piece_start, piece_end = max(cell, start), min(cell_end, end)
        if piece_start == cell and piece_end == cell_end:
            out.append(Segment(cell, cell_end, _NATURAL[grid]))
        elif piece_start < piece_end:
            days = math.ceil((piece_end - piece_start) / timedelta(days=1))
            out.append(Segment(piece_end - timedelta(days=days), piece_end, f"{days} D"))
        cell = cell_end
    return out
