"""Trading calendars of the simulated gateway: which days trade, and when.

A calendar (one per security type) is a table with one row per calendar day from
``FIRST_DAY`` to ``LAST_DAY``. A row is a *trading date* D and holds, as UTC epoch seconds,
the open and close of D's all-hours session and of its regular ("liquid") session. Times are
defined on the wall clock of the instrument's zone and converted with the tz database, so DST
is right on both sides of every change.

What is modelled (wall clock of the zone):

* ``STK`` (US/Eastern): regular 09:30-16:00, all hours 04:00-20:00, Mon-Fri; closed on NYSE
  holidays (including one-off closures the ``holidays`` package knows, e.g. 2012-10-29).
  NYSE early-close days: regular 09:30-13:00, all hours 04:00-17:00.
* ``CASH`` (US/Eastern): trading date D runs D-1 17:15 to D 17:00 (Sunday evening opens
  Monday), Mon-Fri, closed only on Dec 25 and Jan 1; regular hours = all hours.
* ``FUT`` (US/Central, CME equity futures): D-1 17:00 to D 16:00, Mon-Fri, closed on NYSE
  holidays; liquid hours 08:30-15:00. Early close: all hours end 12:15, liquid 12:00.
* ``IND`` (US/Central, Cboe index): 08:30-15:00 Mon-Fri, NYSE holidays; early close 12:00.

Not modelled: CME holiday sessions with abbreviated trading (the whole day is closed), FX
early closes on Dec 24/31, and the pre-2000 shorter extended-hours windows of stocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: First and last calendar day the simulated markets know about.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2041, 12, 31)

#: IB's time zone ids mapped to tz database names.
IB_ZONES = {
    "US/Eastern": "America/New_York",
    "US/Central": "America/Chicago",
    "Europe/London": "Europe/London",
    "UTC": "UTC",
}

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def zone_info(ib_zone: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IB time zone id such as ``"US/Eastern"``."""
    return ZoneInfo(IB_ZONES.get(ib_zone, ib_zone))


def day_epoch(d: date) -> int:
    """Epoch seconds of 00:00 UTC on ``d`` (how daily bars are dated)."""
    return (d.toordinal() - _EPOCH_ORDINAL) * 86400


@dataclass(frozen=True)
class _Hours:
    """One security type's session rules, as (day offset, "HH:MM") wall-clock points."""

    zone: str
    all_open: tuple[int, str]
    all_close: tuple[int, str]
    rth_open: tuple[int, str]
    rth_close: tuple[int, str]
    all_close_early: tuple[int, str] | None  # on NYSE early-close days; None = not modelled
    rth_close_early: tuple[int, str] | None
    nyse_holidays: bool  # False: only Dec 25 and Jan 1 are closed


_RULES: dict[str, _Hours] = {
    "STK": _Hours("US/Eastern", (0, "04:00"), (0, "20:00"), (0, "09:30"), (0, "16:00"),
                  (0, "17:00"), (0, "13:00"), True),
    "CASH": _Hours("US/Eastern", (-1, "17:15"), (0, "17:00"), (-1, "17:15"), (0, "17:00"),
                   None, None, False),
    "FUT": _Hours("US/Central", (-1, "17:00"), (0, "16:00"), (0, "08:30"), (0, "15:00"),
                  (0, "12:15"), (0, "12:00"), True),
    "IND": _Hours("US/Central", (0, "08:30"), (0, "15:00"), (0, "08:30"), (0, "15:00"),
                  (0, "12:00"), (0, "12:00"), True),
}


@dataclass(frozen=True)
class Calendar:
    """Session table of one security type; row ``i`` is the calendar day ``FIRST_DAY + i``.

    Epoch arrays hold 0 on days that do not trade. ``offset`` is the zone's UTC offset in
    seconds at the all-hours open; ``offset_close`` at the close (they differ only if a session
    spanned a DST change, which none of the modelled schedules does).
    """

    sec_type: str
    zone: ZoneInfo
    ib_zone: str
    trading: np.ndarray
    all_open: np.ndarray
    all_close: np.ndarray
    rth_open: np.ndarray
    rth_close: np.ndarray
    offset: np.ndarray
    offset_close: np.ndarray

    def index(self, d: date) -> int:
        """Row of calendar day ``d`` (may be out of range)."""
        return d.toordinal() - FIRST_DAY.toordinal()

    def day(self, i: int) -> date:
        """Calendar day of row ``i``."""
        return date.fromordinal(FIRST_DAY.toordinal() + int(i))

    def __len__(self) -> int:
        return len(self.trading)

    def overlapping(self, start: int, end: int, use_rth: bool) -> np.ndarray:
        """Rows of trading dates whose session overlaps ``[start, end)`` (epoch seconds)."""
        lo, hi = self._rows_near(start, end)
        opens, closes = self.bounds(use_rth)
        sl = slice(lo, hi)
        ok = self.trading[sl] & (opens[sl] < end) & (closes[sl] > start)
        return np.flatnonzero(ok) + lo

    def closing_in(self, start: int, end: int, use_rth: bool) -> np.ndarray:
        """Rows of trading dates whose session closes in ``(start, end]`` (epoch seconds)."""
        lo, hi = self._rows_near(start, end)
        closes = self.bounds(use_rth)[1]
        sl = slice(lo, hi)
        ok = self.trading[sl] & (closes[sl] > start) & (closes[sl] <= end)
        return np.flatnonzero(ok) + lo

    def bounds(self, use_rth: bool) -> tuple[np.ndarray, np.ndarray]:
        """(open, close) epoch arrays for regular or all hours."""
        return (self.rth_open, self.rth_close) if use_rth else (self.all_open, self.all_close)

    def _rows_near(self, start: int, end: int) -> tuple[int, int]:
        # A session opens at most one day before its trading date, so two days of margin
        # on each side cover every overlapping row.
        first = FIRST_DAY.toordinal() - _EPOCH_ORDINAL
        lo = max(0, start // 86400 - first - 2)
        hi = min(len(self.trading), max(0, end // 86400 - first + 3))
        return int(lo), int(max(lo, hi))

    def local(self, epoch: int) -> datetime:
        """Wall-clock time of ``epoch`` in this calendar's zone."""
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc).astimezone(self.zone)


def _wall_epochs(days: pd.DatetimeIndex, point: tuple[int, str], zone: str) -> tuple[np.ndarray,
                                                                                     np.ndarray]:
    """UTC epochs and UTC offsets of a wall-clock point relative to each trading date."""
    hours, minutes = (int(x) for x in point[1].split(":"))
    wall = days + pd.Timedelta(days=point[0], hours=hours, minutes=minutes)
    utc = wall.tz_localize(zone).as_unit("s").asi8
    naive = wall.as_unit("s").asi8
    return utc, naive - utc


@cache
def calendar(sec_type: str) -> Calendar:
    """The session table for ``sec_type`` (STK, CASH, FUT, IND); built once per process."""
    rules = _RULES[sec_type]
    days = pd.date_range(FIRST_DAY, LAST_DAY, freq="D")
    years = range(FIRST_DAY.year, LAST_DAY.year + 1)
    weekday = days.day_of_week.to_numpy() < 5
    if rules.nyse_holidays:
        closed = set(holidays.financial_holidays("NYSE", years=years))
    else:
        closed = {date(y, m, 1 if m == 1 else 25) for y in years for m in (1, 12)}
    early = set(holidays.financial_holidays("NYSE", years=years, categories=("half_day",)))
    early -= closed
    pydays = [d.date() for d in days]
    trading = weekday & ~np.fromiter((d in closed for d in pydays), bool, len(pydays))
    is_early = np.fromiter((d in early for d in pydays), bool, len(pydays)) & trading

    zone = IB_ZONES[rules.zone]
    all_open, offset = _wall_epochs(days, rules.all_open, zone)
    all_close, offset_close = _wall_epochs(days, rules.all_close, zone)
    rth_open, _ = _wall_epochs(days, rules.rth_open, zone)
    rth_close, _ = _wall_epochs(days, rules.rth_close, zone)
    if rules.all_close_early is not None:
        early_all, early_off = _wall_epochs(days, rules.all_close_early, zone)
        all_close = np.where(is_early, early_all, all_close)
        offset_close = np.where(is_early, early_off, offset_close)
    if rules.rth_close_early is not None:
        rth_close = np.where(is_early, _wall_epochs(days, rules.rth_close_early, zone)[0],
                             rth_close)
    cal = Calendar(
        sec_type=sec_type, zone=ZoneInfo(zone), ib_zone=rules.zone, trading=trading,
        all_open=np.where(trading, all_open, 0), all_close=np.where(trading, all_close, 0),
        rth_open=np.where(trading, rth_open, 0), rth_close=np.where(trading, rth_close, 0),
        offset=offset, offset_close=offset_close,
    )
    log.debug("built %s calendar: %d trading days", sec_type, int(trading.sum()))
    return cal


def trading_hours(cal: Calendar, first_day: date, days: int, liquid: bool,
                  last_row: int | None = None) -> str:
    """IB's ``tradingHours`` / ``liquidHours`` string: one entry per calendar day.

    A trading day reads ``"20241125:0400-20241125:2000"`` (overnight sessions start on the
    previous date), a closed one ``"20241128:CLOSED"``. Rows after ``last_row`` (an expired
    future) are closed.
    """
    opens, closes = cal.bounds(liquid)
    parts = []
    for k in range(days):
        d = first_day + timedelta(days=k)
        i = cal.index(d)
        in_range = 0 <= i < len(cal) and (last_row is None or i <= last_row)
        if not in_range or not cal.trading[i]:
            parts.append(f"{d:%Y%m%d}:CLOSED")
            continue
        o, c = cal.local(opens[i]), cal.local(closes[i])
        parts.append(f"{o:%Y%m%d:%H%M}-{c:%Y%m%d:%H%M}")
    return ";".join(parts)
