"""Exchange calendars for ktrdr's gaps: which dates an exchange trades, and when.

An instrument's exchange (its primary exchange for a SMART-routed stock) picks a calendar of
the ``exchange_calendars`` package (``EXCHANGE_CALENDARS``)::

    ContractInfo(exchange="SEHK") ─► "XHKG" ─► ExchangeSchedule: per trading date
                                                (open, break start, break end, close), UTC

The package knows each exchange's holidays, early closes (NYSE's 13:00 days), lunch breaks
(HKEX 12:00-13:00) and changes of hours over the years. CME and CBOT products use its CME
Globex calendar ("CMES": the exchange's holidays and early closes; the product's own hours
come from IB's contract details, see ``gaps``). Forex on IDEALPRO has no exchange calendar:
it trades every weekday but Dec 25 and Jan 1 (``FX_CLOSED``). An exchange missing from the
table has no calendar; ``gaps`` then relies on IB's trading hours alone and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: IB exchange code -> ``exchange_calendars`` name.
EXCHANGE_CALENDARS: dict[str, str] = {
    # US equities, ETFs and Cboe indices trade NYSE's days and hours
    "NYSE": "XNYS", "NASDAQ": "XNYS", "ARCA": "XNYS", "AMEX": "XNYS", "BATS": "XNYS",
    "ISLAND": "XNYS", "IEX": "XNYS", "NYSENAT": "XNYS", "SMART": "XNYS", "CBOE": "XNYS",
    # CME group futures (product hours from IB; the exchange's holidays and early closes)
    "CME": "CMES", "GLOBEX": "CMES", "CBOT": "CMES", "ECBOT": "CMES", "NYMEX": "CMES",
    "COMEX": "CMES",
    "CFE": "XCBF",
    "LSE": "XLON", "LSEETF": "XLON",
    "SEHK": "XHKG",
    "TSEJ": "XTKS",
    "IBIS": "XETR", "XETRA": "XETR", "FWB": "XFRA", "EUREX": "XEUR",
    "SBF": "XPAR", "AEB": "XAMS", "EBS": "XSWX", "SWX": "XSWX",
    "ASX": "XASX", "TSE": "XTSE", "SGX": "XSES", "BVME": "XMIL", "BM": "XMAD",
    "ENEXT.BE": "XBRU", "SFB": "XSTO", "KSE": "XKRX",
}
#: Dates (month, day) forex on IDEALPRO does not trade, besides weekends.
FX_CLOSED = ((1, 1), (12, 25))
#: The first year calendars are built from (older history falls back to IB's hours).
FIRST_YEAR = 1980


def calendar_name(exchange: str, primary_exchange: str = "", instrument_type: str = ""
                  ) -> str | None:
    """The ``exchange_calendars`` name for an instrument, or None (forex, or unknown)."""
    if instrument_type == "forex":
        return None
    for code in (primary_exchange, exchange):
        code = (code or "").strip().upper()
        if code and code != "SMART" and code in EXCHANGE_CALENDARS:
            return EXCHANGE_CALENDARS[code]
    if (exchange or "").strip().upper() == "SMART" and not primary_exchange:
        return EXCHANGE_CALENDARS["SMART"]
    return None


def fx_closed(day: date) -> bool:
    """Whether forex does not trade on ``day`` (weekends, Dec 25, Jan 1)."""
    return day.weekday() >= 5 or (day.month, day.day) in FX_CLOSED


@dataclass(frozen=True)
class ExchangeSchedule:
    """One exchange's trading dates with their sessions (epoch seconds, UTC).

    ``first`` and ``last`` bound what the calendar knows; outside them it says nothing.
    """

    name: str
    zone: str
    first: date
    last: date
    days: dict[date, tuple[int, int, int | None, int | None]]  # open, close, break start/end

    def knows(self, day: date) -> bool:
        return self.first <= day <= self.last

    def trades(self, day: date) -> bool:
        return day in self.days

    def sessions(self, day: date) -> list[tuple[int, int]]:
        """The date's sessions: one, or two around a lunch break; none if closed."""
        entry = self.days.get(day)
        if entry is None:
            return []
        open_, close, break_start, break_end = entry
        if break_start is not None and break_end is not None and open_ < break_start < \
                break_end < close:
            return [(open_, break_start), (break_end, close)]
        return [(open_, close)]


@lru_cache(maxsize=32)
def schedule(name: str) -> ExchangeSchedule | None:
    """The schedule of calendar ``name`` from ``FIRST_YEAR`` to two years ahead (built once
    per process); None if the package cannot build it."""
    import exchange_calendars as xcals

    end = pd.Timestamp.now(tz="UTC").normalize().tz_localize(None) + pd.DateOffset(years=2)
    start = pd.Timestamp(FIRST_YEAR, 1, 1)
    try:
        try:
            cal = xcals.get_calendar(name, start=start, end=end)
        except (ValueError, xcals.errors.DateOutOfBounds):
            cal = xcals.get_calendar(name, end=end)
    except Exception as exc:  # an unknown name or a calendar that cannot be built
        log.warning("no exchange calendar %r (%s); using IB's trading hours only", name, exc)
        return None
    frame = cal.schedule

    def epochs(column: str) -> np.ndarray:
        values = pd.DatetimeIndex(frame[column]) if column in frame else None
        if values is None:
            return np.full(len(frame), -1, np.int64)
        out = values.as_unit("s").asi8.copy()
        out[values.isna()] = -1
        return out

    opens, closes = epochs("open"), epochs("close")
    starts, ends = epochs("break_start"), epochs("break_end")
    days = {}
    for k, stamp in enumerate(frame.index):
        bs, be = int(starts[k]), int(ends[k])
        days[stamp.date()] = (int(opens[k]), int(closes[k]), bs if bs >= 0 else None,
                              be if be >= 0 else None)
    first = frame.index[0].date()
    last = frame.index[-1].date()
    log.debug("exchange calendar %s: %d sessions %s .. %s", name, len(days), first, last)
    return ExchangeSchedule(name, str(cal.tz), first, last, days)


__all__ = ["EXCHANGE_CALENDARS", "FX_CLOSED", "ExchangeSchedule", "calendar_name",
           "fx_closed", "schedule"]
