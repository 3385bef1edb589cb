"""Trading calendars of the simulated gateway: which days trade, when, and with which breaks.

Each calendar is a table with one row per calendar day from ``FIRST_DAY`` to ``LAST_DAY``. A row
is a *trading date* D and holds, as UTC epoch seconds, the open and close of D's all-hours
session, of its regular ("liquid") session, and of a break inside them (0 when there is none)::

    exchange_calendars / pandas_market_calendars      the simulator's own wall-clock rules
    (holidays, early closes, breaks, history)         (extended stock hours, forex)
                 │                                               │
                 └──────────────► build(key) ◄───────────────────┘
                                     │  Calendar: trading, all_open/close, rth_open/close,
                                     ▼  brk_start/end, UTC offsets      (cached per process)
                     MarketModel (minutes per row)   trading_hours() (IB's tradingHours text)

Calendars by key (wall clock of the zone in brackets):

* ``US-STK`` (US/Eastern): NYSE's sessions from ``exchange_calendars`` ("XNYS": holidays,
  one-off closures, early closes at 13:00 on the day after Thanksgiving and Christmas Eve);
  all hours 04:00-20:00, 04:00-17:00 on early-close days.
* ``US-IND`` (US/Central): the same NYSE sessions, regular hours only (08:30-15:00 CT).
* ``LSE-STK`` (GB-Eire): London's sessions ("XLON": 08:00-16:30, 12:30 early closes, UK
  holidays); all hours = regular hours.
* ``SEHK-STK`` (Hongkong): Hong Kong's sessions ("XHKG": 09:30-12:00 and 13:00-16:00, the
  lunch break as the row's break, half days without an afternoon, HK holidays).
* ``CME-EQ`` (US/Central): CME equity futures from ``pandas_market_calendars`` ("CME_Equity":
  D-1 17:00 to D 16:00, CME's holiday sessions and early closes); liquid hours 08:30-15:00.
* ``CBOT-GRAIN`` (US/Central): CBOT grain futures ("CBOT_Agriculture": D-1 19:00 to D 07:45,
  a break, then 08:30-13:20); liquid hours are the day session 08:30-13:20.
* ``FX`` (US/Eastern): IDEALPRO, the simulator's own rule: D-1 17:15 to D 17:00, Monday to
  Friday, closed on 25 December and 1 January (no exchange calendar covers IB's forex hours).

Not modelled: the pre-2000 shorter extended hours of US stocks, forex early closes on 24 and
31 December, LSE's and SEHK's auctions (the continuous session is the whole session).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ibfarm.contracts import iana_zone

log = logging.getLogger(__name__)

#: First and last calendar day the simulated markets know about.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2041, 12, 31)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_epoch(d: date) -> int:
    """Epoch seconds of 00:00 UTC on ``d`` (how daily bars are dated)."""
    return (d.toordinal() - _EPOCH_ORDINAL) * 86400


@dataclass(frozen=True)
class Calendar:
    """Session table of one market; row ``i`` is the calendar day ``FIRST_DAY + i``.

    Epoch arrays hold 0 on days that do not trade; ``brk_start``/``brk_end`` hold 0 on days
    without a break. ``offset`` is the zone's UTC offset in seconds at the all-hours open,
    ``offset_close`` at the close (they differ only if a session spans a DST change).
    """

    key: str
    zone: ZoneInfo
    ib_zone: str
    trading: np.ndarray
    all_open: np.ndarray
    all_close: np.ndarray
    rth_open: np.ndarray
    rth_close: np.ndarray
    brk_start: np.ndarray
    brk_end: np.ndarray
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

    def opened_before(self, end: int, count: int, use_rth: bool,
                      last_row: int | None = None) -> np.ndarray:
        """The last ``count`` rows whose session opened before ``end`` (IB's ``N D``)."""
        opens = self.bounds(use_rth)[0]
        hi = min(len(self), max(0, self._rows_near(end, end)[1]))
        if last_row is not None:
            hi = min(hi, last_row + 1)
        lo = max(0, hi - 2 * count - 10)
        while True:
            sl = slice(lo, hi)
            rows = np.flatnonzero(self.trading[sl] & (opens[sl] < end)) + lo
            if len(rows) >= count or lo == 0:
                return rows[-count:]
            lo = max(0, lo - 4 * count - 30)

    def bounds(self, use_rth: bool) -> tuple[np.ndarray, np.ndarray]:
        """(open, close) epoch arrays for regular or all hours."""
        return (self.rth_open, self.rth_close) if use_rth else (self.all_open, self.all_close)

    def pieces(self, row: int, use_rth: bool) -> list[tuple[int, int]]:
        """The row's session as (open, close) epochs, split at its break."""
        opens, closes = self.bounds(use_rth)
        o, c = int(opens[row]), int(closes[row])
        bs, be = int(self.brk_start[row]), int(self.brk_end[row])
        if bs and be > bs and o < bs and be < c:
            return [(o, bs), (be, c)]
        return [(o, c)]

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


# ----------------------------------------------------------------------------------------------
# Building

@dataclass(frozen=True)
class _Spec:
    """Where a calendar's sessions come from and how all/regular hours derive from them."""

    ib_zone: str
    exchange: str
    source: str                 # "xc:XNYS", "pmc:CME_Equity" or "fx"
    all_hours: tuple[str, str] | None = None  # wall-clock all-hours open/close, None = session
    early_all_close: str | None = None        # all-hours close on early-close days
    rth: tuple[str, str] | None = None        # liquid hours inside the session, None = session
    rth_after_break: bool = False             # liquid hours = the part after the break


_SPECS: dict[str, _Spec] = {
    "US-STK": _Spec("US/Eastern", "NYSE", "xc:XNYS", all_hours=("04:00", "20:00"),
                    early_all_close="17:00"),
    "US-IND": _Spec("US/Central", "CBOE", "xc:XNYS"),
    "LSE-STK": _Spec("GB-Eire", "LSE", "xc:XLON"),
    "SEHK-STK": _Spec("Hongkong", "SEHK", "xc:XHKG"),
    "CME-EQ": _Spec("US/Central", "CME", "pmc:CME_Equity", rth=("08:30", "15:00")),
    "CBOT-GRAIN": _Spec("US/Central", "CBOT", "pmc:CBOT_Agriculture", rth_after_break=True),
    "FX": _Spec("US/Eastern", "IDEALPRO", "fx"),
}

#: The calendar keys the market model knows.
CALENDARS = tuple(_SPECS)


def _schedule(source: str) -> pd.DataFrame:
    """Sessions from the calendar library: index = trading date (naive), UTC columns
    ``open``, ``close``, ``break_start``, ``break_end`` (NaT without a break)."""
    kind, name = source.split(":")
    start, end = pd.Timestamp(FIRST_DAY), pd.Timestamp(LAST_DAY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both libraries warn about far-future holiday rules
        if kind == "xc":
            import exchange_calendars

            cal = exchange_calendars.get_calendar(name, start=start, end=end)
            frame = cal.schedule.loc[:, ["open", "close", "break_start", "break_end"]]
        else:
            import pandas_market_calendars

            cal = pandas_market_calendars.get_calendar(name)
            frame = cal.schedule(start, end).rename(
                columns={"market_open": "open", "market_close": "close"})
            for column in ("break_start", "break_end"):
                if column not in frame:
                    frame[column] = pd.NaT
            frame = frame.loc[:, ["open", "close", "break_start", "break_end"]]
    frame.index = pd.DatetimeIndex(frame.index).tz_localize(None).normalize()
    return frame


def _epochs(column: pd.Series) -> np.ndarray:
    seconds = (pd.to_datetime(column, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.fillna(0).to_numpy().astype(np.int64)


def _wall(days: pd.DatetimeIndex, clock: str, zone: str, day_offset: int = 0) -> np.ndarray:
    """UTC epochs of a wall-clock time (``"HH:MM"``) on each day (``day_offset`` days later)."""
    hours, minutes = (int(x) for x in clock.split(":"))
    wall = days + pd.Timedelta(days=day_offset, hours=hours, minutes=minutes)
    return wall.tz_localize(zone, ambiguous=False, nonexistent="shift_forward").as_unit("s").asi8


def _offsets(epochs: np.ndarray, zone: str) -> np.ndarray:
    stamps = pd.to_datetime(epochs, unit="s", utc=True).tz_convert(zone)
    return stamps.tz_localize(None).as_unit("s").asi8 - epochs


def _fx_sessions(zone: str) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    days = pd.date_range(FIRST_DAY, LAST_DAY, freq="D")
    weekday = days.day_of_week < 5
    holiday = ((days.month == 12) & (days.day == 25)) | ((days.month == 1) & (days.day == 1))
    days = days[weekday & ~holiday]
    opens = _wall(days, "17:15", zone, -1)
    closes = _wall(days, "17:00", zone)
    none = np.zeros(len(days), np.int64)
    return days, {"open": opens, "close": closes, "break_start": none, "break_end": none}


@cache
def build(key: str) -> Calendar:
    """The calendar for ``key`` (one of ``CALENDARS``); built once per process."""
    spec = _SPECS[key]
    zone = iana_zone(spec.ib_zone, spec.exchange)
    if spec.source == "fx":
        days, cols = _fx_sessions(zone)
    else:
        frame = _schedule(spec.source)
        days = frame.index
        cols = {c: _epochs(frame[c]) for c in frame.columns}
    opens, closes = cols["open"], cols["close"]
    brk_s, brk_e = cols["break_start"], cols["break_end"]
    no_break = (brk_s == 0) | (brk_e <= brk_s)
    brk_s, brk_e = np.where(no_break, 0, brk_s), np.where(no_break, 0, brk_e)

    rth_open, rth_close = opens.copy(), closes.copy()
    all_open, all_close = opens.copy(), closes.copy()
    if spec.all_hours is not None:
        regular_close = _wall(days, "16:00", zone)
        early = closes < regular_close
        all_open = _wall(days, spec.all_hours[0], zone)
        all_close = np.where(early, _wall(days, spec.early_all_close, zone),
                             _wall(days, spec.all_hours[1], zone))
    if spec.rth is not None:
        rth_open = np.clip(_wall(days, spec.rth[0], zone), opens, closes)
        rth_close = np.clip(_wall(days, spec.rth[1], zone), opens, closes)
    if spec.rth_after_break:
        has = brk_e > 0
        rth_open = np.where(has, brk_e, rth_open)

    n = LAST_DAY.toordinal() - FIRST_DAY.toordinal() + 1
    rows = ((days - pd.Timestamp(FIRST_DAY)).days).to_numpy()
    ok = (rows >= 0) & (rows < n) & (rth_close > rth_open)

    def place(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n, np.int64)
        out[rows[ok]] = values[ok]
        return out

    trading = np.zeros(n, bool)
    trading[rows[ok]] = True
    a_open, a_close = place(all_open), place(all_close)
    cal = Calendar(
        key=key, zone=ZoneInfo(zone), ib_zone=spec.ib_zone, trading=trading,
        all_open=a_open, all_close=a_close, rth_open=place(rth_open), rth_close=place(rth_close),
        brk_start=place(brk_s), brk_end=place(brk_e),
        offset=np.where(trading, _offsets(a_open, zone), 0),
        offset_close=np.where(trading, _offsets(a_close, zone), 0),
    )
    log.debug("built the %s calendar: %d trading days", key, int(trading.sum()))
    return cal


# ----------------------------------------------------------------------------------------------
# IB's tradingHours / liquidHours text

def trading_hours(cal: Calendar, first_day: date, days: int, liquid: bool,
                  last_row: int | None = None) -> str:
    """IB's ``tradingHours`` / ``liquidHours`` string for ``days`` calendar days.

    A trading date lists its sessions (``"20231205:1900-20231206:0745;20231206:0830-
    20231206:1320"``: an overnight session starts on the previous date, a break splits the
    day); a day without trading reads ``"20241128:CLOSED"``, except a day on which the next
    trading date's session opens (the Sunday evening of futures and forex), which has no
    entry of its own. Rows after ``last_row`` (an expired future) are closed.
    """
    opens = cal.bounds(liquid)[0]

    def trades(i: int) -> bool:
        return 0 <= i < len(cal) and bool(cal.trading[i]) and (last_row is None or i <= last_row)

    parts = []
    for k in range(days):
        d = first_day + timedelta(days=k)
        i = cal.index(d)
        if trades(i):
            parts += [f"{cal.local(o):%Y%m%d:%H%M}-{cal.local(c):%Y%m%d:%H%M}"
                      for o, c in cal.pieces(i, liquid)]
        elif trades(i + 1) and cal.local(opens[i + 1]).date() == d:
            continue
        else:
            parts.append(f"{d:%Y%m%d}:CLOSED")
    return ";".join(parts)
