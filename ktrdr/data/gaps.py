"""When an instrument trades, and which stretches of its stored history are missing.

``SessionCalendar`` combines two sources into the sessions of any date::

    IB's trading hours (ContractInfo.sessions: about a week around the time it was asked)
        └─ win on the dates they list (sessions, lunch breaks, overnight sessions, CLOSED)
    the exchange's calendar (``calendars``: exchange_calendars by the instrument's exchange)
        └─ every other date: holidays, early closes, breaks, hours of past years
           where IB's hours agree with the calendar's, the calendar's sessions are used;
           where they differ (futures' regular hours inside CME's day, CBOT's two
           sessions), IB's sessions of that weekday, clipped to the calendar's day
    no calendar (forex: every weekday but Dec 25 / Jan 1; an exchange the table lacks:
        IB's weekdays, with a warning) ─ IB's sessions of that weekday

Gaps are found per unit of the timeframe: a *session* for intraday bars, a *trading date*
for daily bars, a *week* for weekly bars. Daily and weekly bars are compared by their label,
the date on the exchange's clock (``timeframes.bar_labels``), so a range ``[start, end)``
selects the trading dates ``start.date() <= D < end.date()`` whatever the zone.

A unit is present when a fetch already covered it (with or without bars: a "no data" answer
is not asked again) or when it holds stored bars and ends before the last stored bar (the
session of the last stored bar may have been fetched half-way). Nothing still in progress at
the provider's "now" is expected: an intraday range stops at now, and a trading date or week
counts once its last session has closed (``complete_before``) — the same rule the data layer
uses to drop partial bars, so a load and a gap report agree.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from ktrdr.data import calendars
from ktrdr.data.external_data_interface import ContractInfo
from ktrdr.data.timeframes import (
    TIMEFRAME_SECONDS,
    as_utc,
    bar_labels,
    is_daily_or_longer,
    normalize_timeframe,
    unit_ceil,
    unit_floor,
)

log = logging.getLogger(__name__)

UTC = timezone.utc
DAY = 86400

#: One session on the wall clock, relative to its trading date: open day offset (-1: the
#: evening before), open time, close time (on the trading date).
Piece = tuple[int, time, time]
Template = tuple[Piece, ...]

#: The calendar used when a contract names no exchange.
_DEFAULT_CALENDARS = {"stock": "XNYS", "index": "XNYS", "future": "CMES"}


@dataclass(frozen=True)
class Sessions:
    """Expected units, sorted: ``open``/``close`` epoch seconds (UTC; for daily and weekly
    units the label and the label of the next unit) and the trading date (or Monday)."""

    open: np.ndarray
    close: np.ndarray
    days: list[date]

    def __len__(self) -> int:
        return len(self.days)


def _empty() -> Sessions:
    return Sessions(np.empty(0, np.int64), np.empty(0, np.int64), [])


class SessionCalendar:
    """Sessions of one instrument for any date (see the module docstring)."""

    def __init__(self, info: ContractInfo):
        self.info = info
        self.instrument_type = info.instrument_type
        try:
            self.zone = ZoneInfo(info.time_zone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("%s: unknown time zone %r; using UTC", info.symbol, info.time_zone)
            self.zone = ZoneInfo("UTC")
        self.sample: dict[date, list[tuple[int, int]]] = {}
        for start, end, day in info.sessions:
            self.sample.setdefault(date.fromisoformat(day), []).append((int(start), int(end)))
        for pieces in self.sample.values():
            pieces.sort()
        self.closed = {date.fromisoformat(d) for d in info.closed_days} - set(self.sample)
        self.forex = info.instrument_type == "forex"
        name = None if self.forex else (
            calendars.calendar_name(info.exchange, info.primary_exchange, info.instrument_type)
            or (None if info.exchange.strip() else _DEFAULT_CALENDARS.get(info.instrument_type)))
        self.schedule = calendars.schedule(name) if name else None
        if self.schedule is None and not self.forex:
            log.warning("%s: no exchange calendar for %r; gaps follow IB's trading hours only "
                        "(weekdays, no holidays beyond the ones IB lists)", info.symbol,
                        info.exchange)
        self.templates, self.common = self._templates()
        self.use_calendar_hours = self.schedule is not None and self._agrees()
        self._cache: dict[date, list[tuple[int, int]]] = {}

    # ----------------------------------------------------------------- building

    def _template(self, day: date, pieces: list[tuple[int, int]]) -> Template:
        out = []
        for o, c in pieces:
            lo = datetime.fromtimestamp(o, UTC).astimezone(self.zone)
            hi = datetime.fromtimestamp(c, UTC).astimezone(self.zone)
            out.append(((lo.date() - day).days, lo.time(), hi.time()))
        return tuple(out)

    def _templates(self) -> tuple[dict[int, Template], Template]:
        found = {d: self._template(d, p) for d, p in self.sample.items()}
        common_list = Counter(found.values()).most_common(1)
        if common_list:
            common = common_list[0][0]
        else:  # nothing known: whole weekdays
            common = ((0, time(0, 0), time(23, 59)),)
        length = _template_seconds(common)
        by_weekday: dict[int, Template] = {}
        for day, template in sorted(found.items()):
            # an early close in the sample says nothing about other weeks
            if _template_seconds(template) >= length:
                by_weekday[day.weekday()] = template
        return by_weekday, common

    def _agrees(self) -> bool:
        """Whether IB's sample lists exactly the calendar's sessions (then the calendar's
        hours are used for every other date too)."""
        assert self.schedule is not None
        compared = [d for d in self.sample if self.schedule.knows(d)]
        return all(self.sample[d] == self.schedule.sessions(d) for d in compared)

    # ----------------------------------------------------------------- any date

    def day_sessions(self, day: date) -> list[tuple[int, int]]:
        """Sessions of trading date ``day`` as ``(open, close)`` epoch seconds; [] if closed."""
        cached = self._cache.get(day)
        if cached is None:
            cached = self._cache[day] = self._day_sessions(day)
        return cached

    def _day_sessions(self, day: date) -> list[tuple[int, int]]:
        if day in self.sample:
            return self.sample[day]
        if day in self.closed:
            return []
        sched = self.schedule
        if sched is not None and sched.knows(day):
            if not sched.trades(day):
                return []
            if self.use_calendar_hours:
                return sched.sessions(day)
            template = self.templates.get(day.weekday(), self.common)
            return _clip(self._on(day, template), sched.sessions(day))
        if self.forex and calendars.fx_closed(day):
            return []
        if self.forex or sched is None:
            # weekdays trade (a weekday IB listed as closed says nothing about other weeks);
            # a weekend day only if IB's sample has sessions on it
            template = self.templates.get(day.weekday())
            if template is None:
                if day.weekday() >= 5:
                    return []
                template = self.common
            return self._on(day, template)
        # a date the exchange calendar does not cover (long ago): weekdays, IB's hours
        if day.weekday() >= 5:
            return []
        return self._on(day, self.templates.get(day.weekday(), self.common))

    def _on(self, day: date, template: Template) -> list[tuple[int, int]]:
        out = []
        for offset, opens, closes in template:
            o = datetime.combine(day + timedelta(days=offset), opens, tzinfo=self.zone)
            c = datetime.combine(day, closes, tzinfo=self.zone)
            if c <= o:
                c += timedelta(days=1)
            out.append((int(o.timestamp()), int(c.timestamp())))
        return out

    def is_trading_day(self, day: date) -> bool:
        return bool(self.day_sessions(day))

    def session(self, day: date) -> tuple[int, int]:
        """``(first open, last close)`` of trading date ``day`` (assumed to trade)."""
        pieces = self.day_sessions(day)
        return pieces[0][0], pieces[-1][1]

    def trading_dates(self, first: date, last: date) -> list[date]:
        """Trading dates from ``first`` to ``last`` inclusive."""
        out, day = [], first
        while day <= last:
            if self.day_sessions(day):
                out.append(day)
            day += timedelta(days=1)
        return out

    def sessions(self, start: datetime, end: datetime, daily: bool = False) -> Sessions:
        """Sessions overlapping ``[start, end)``, one row each (several per trading date where
        the market breaks); with ``daily``, one row per trading date whose label lies in
        ``[start, end)``."""
        start, end = as_utc(start), as_utc(end)
        if daily:
            days = self.trading_dates(start.date() if start.time() == time(0) else
                                      start.date() + timedelta(days=1),
                                      (end - timedelta(microseconds=1)).date())
            opens = np.array([_label_epoch(d) for d in days], np.int64)
            return Sessions(opens, opens + DAY, days)
        s, e = int(start.timestamp()), int(end.timestamp())
        rows = []
        day, last = start.date() - timedelta(days=2), end.date() + timedelta(days=2)
        while day <= last:
            for o, c in self.day_sessions(day):
                if o < e and c > s:
                    rows.append((o, c, day))
            day += timedelta(days=1)
        return Sessions(np.array([r[0] for r in rows], np.int64),
                        np.array([r[1] for r in rows], np.int64), [r[2] for r in rows])

    def weeks(self, start: datetime, end: datetime) -> Sessions:
        """Weeks with at least one trading date whose Monday label lies in ``[start, end)``."""
        start, end = as_utc(start), as_utc(end)
        monday = unit_ceil("1w", start).date()
        rows = []
        while _label_epoch(monday) < end.timestamp():
            if self.trading_dates(monday, monday + timedelta(days=6)):
                rows.append(monday)
            monday += timedelta(days=7)
        opens = np.array([_label_epoch(d) for d in rows], np.int64)
        return Sessions(opens, opens + 7 * DAY, rows)

    # ----------------------------------------------------------------- "now"

    def complete_before(self, timeframe: str, now: datetime) -> datetime:
        """Where complete bars end at ``now`` (bars starting at or after it are still in
        progress): for intraday bars the start of the bar in progress when a session runs
        (bars start at the session's open and at every multiple of their length on the
        exchange's wall clock, as IB cuts them), else ``now``; for daily (weekly) bars the
        label of the first trading date (week) whose last session has not closed by ``now``.
        """
        timeframe = normalize_timeframe(timeframe)
        now = as_utc(now)
        stamp = int(now.timestamp())
        if not is_daily_or_longer(timeframe):
            return self._bar_in_progress(timeframe, now) or now
        day = now.astimezone(self.zone).date() - timedelta(days=3)
        for _ in range(60):
            pieces = self.day_sessions(day)
            if pieces and pieces[-1][1] > stamp:
                break
            day += timedelta(days=1)
        if timeframe == "1w":
            monday = day - timedelta(days=day.weekday())
            return datetime.fromtimestamp(_label_epoch(monday), UTC)
        return datetime.fromtimestamp(_label_epoch(day), UTC)

    def _bar_in_progress(self, timeframe: str, now: datetime) -> datetime | None:
        """Start of the intraday bar in progress at ``now``, or None outside sessions."""
        stamp = int(now.timestamp())
        local = now.astimezone(self.zone)
        for day in (local.date() - timedelta(days=1), local.date(), local.date() +
                    timedelta(days=1)):
            for o, c in self.day_sessions(day):
                if o <= stamp < c:
                    wall = local.replace(tzinfo=None)
                    midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
                    length = TIMEFRAME_SECONDS[timeframe]
                    step = int((wall - midnight).total_seconds()) // length * length
                    floor = (midnight + timedelta(seconds=step)).replace(tzinfo=self.zone)
                    return datetime.fromtimestamp(max(o, int(floor.timestamp())), UTC)
        return None

    def bars_per_day(self, timeframe: str) -> float:
        """Bars of ``timeframe`` in a usual trading date (for sizing requests)."""
        seconds = TIMEFRAME_SECONDS[normalize_timeframe(timeframe)]
        if seconds >= DAY:
            return 1.0
        days = sorted(self.sample) or self.trading_dates(date.today() - timedelta(days=14),
                                                         date.today())
        counts = [sum(-(-(c - o) // seconds) for o, c in self.day_sessions(d)) for d in days]
        counts = [n for n in counts if n]
        return float(np.median(counts)) if counts else 24 * 3600 / seconds


def _template_seconds(template: Template) -> int:
    total = 0
    for offset, opens, closes in template:
        o = datetime.combine(date(2000, 1, 3) + timedelta(days=offset), opens)
        c = datetime.combine(date(2000, 1, 3), closes)
        total += int((c - o).total_seconds()) % DAY or DAY
    return total


def _clip(pieces: list[tuple[int, int]], bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``pieces`` intersected with ``bounds`` (both sorted lists of intervals)."""
    out = []
    for o, c in pieces:
        for lo, hi in bounds:
            a, b = max(o, lo), min(c, hi)
            if a < b:
                out.append((a, b))
    return sorted(out)


def _label_epoch(day: date) -> int:
    return (day.toordinal() - date(1970, 1, 1).toordinal()) * DAY


# --------------------------------------------------------------------------- missing units


def _units(calendar: SessionCalendar, timeframe: str, start: datetime, end: datetime
           ) -> Sessions:
    if timeframe == "1w":
        return calendar.weeks(start, end)
    return calendar.sessions(start, end, daily=timeframe == "1d")


def _missing(calendar: SessionCalendar, timeframe: str, start: datetime, end: datetime,
             now: datetime, index: pd.DatetimeIndex, fetched: list[tuple[int, int]]
             ) -> tuple[Sessions, np.ndarray, int, int]:
    """Expected units of ``[start, min(end, complete_before(now)))``, which are missing, and
    that range as epochs."""
    timeframe = normalize_timeframe(timeframe)
    start = as_utc(start)
    end = min(as_utc(end), calendar.complete_before(timeframe, now))
    if end <= start:
        return _empty(), np.zeros(0, bool), 0, 0
    units = _units(calendar, timeframe, start, end)
    s, e = int(start.timestamp()), int(end.timestamp())
    if not len(units):
        return units, np.zeros(0, bool), s, e
    lo = np.maximum(units.open, s)
    hi = np.minimum(units.close, e)
    daily = is_daily_or_longer(timeframe)
    covered = np.zeros(len(units), bool)
    for a, b in fetched:
        covered |= ((a <= units.open) & (units.open < b)) if daily else ((a <= lo) & (hi <= b))
        if not daily:  # a session fetched part of the way: only the rest is missing
            part = (a <= lo) & (lo < b) & (b < hi)
            lo = np.where(part, b, lo)
    labels = bar_labels(index, timeframe, calendar.zone) if len(index) else None
    with_bars = np.zeros(len(units), bool)
    if labels is not None:
        stamps = labels.as_unit("s").asi8
        pos = np.searchsorted(stamps, units.open, side="left")
        nxt = stamps[np.minimum(pos, len(stamps) - 1)]
        with_bars = (pos < len(stamps)) & (nxt < units.close)
        if not daily:  # the session of the last stored bar may have been fetched half-way
            with_bars &= units.close <= stamps[-1]
    units = Sessions(lo, units.close, units.days) if not daily else units
    return units, ~(covered | with_bars), s, e


def missing_ranges(calendar: SessionCalendar, timeframe: str, start: datetime, end: datetime,
                   now: datetime, index: pd.DatetimeIndex, fetched: list[tuple[int, int]],
                   align: bool = True) -> list[tuple[datetime, datetime]]:
    """Ranges of ``[start, end)`` where complete bars should exist and are not stored.

    Args:
        calendar: the instrument's sessions.
        timeframe: a ktrdr timeframe.
        start, end: the range asked for (labels for daily and weekly bars).
        now: the provider's clock; nothing still in progress then is missing.
        index: timestamps of the stored bars (sorted).
        fetched: ranges (epoch seconds) already fetched, with or without bars.
        align: round intraday ranges out to whole UTC days (what is fetched, so a re-run
            asks the same requests); False gives the sessions' own bounds (what a gap report
            shows).
    """
    timeframe = normalize_timeframe(timeframe)
    units, missing, s, e = _missing(calendar, timeframe, start, end, now, index, fetched)
    out: list[tuple[datetime, datetime]] = []
    k, n = 0, len(units)
    while k < n:
        if not missing[k]:
            k += 1
            continue
        j = k
        while j + 1 < n and missing[j + 1]:
            j += 1
        a_epoch = max(int(units.open[k]), s)
        b_epoch = min(int(units.close[j]), e)
        a = datetime.fromtimestamp(a_epoch, UTC)
        b = datetime.fromtimestamp(b_epoch, UTC)
        if align and not is_daily_or_longer(timeframe):
            a = unit_floor(timeframe, a)
            b = unit_ceil(timeframe, b)
        b = min(b, datetime.fromtimestamp(e, UTC), as_utc(now))
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif a < b:
            out.append((a, b))
        k = j + 1
    return out


def count_missing_sessions(calendar: SessionCalendar, timeframe: str, start: datetime,
                           end: datetime, now: datetime, index: pd.DatetimeIndex,
                           fetched: list[tuple[int, int]]) -> int:
    """How many expected units of the range are neither stored nor known to be empty."""
    return int(_missing(calendar, timeframe, start, end, now, index, fetched)[1].sum())


__all__ = ["SessionCalendar", "Sessions", "count_missing_sessions", "missing_ranges"]
