"""Deterministic market model behind the simulated IB gateway.

Everything here is a pure function of ``(seed, instrument, trading day)``, so two processes
with the same seed serve byte-identical bars, and every bar size is an exact aggregate of
one base path::

    daily walk (per walk owner) ─► daily anchors (+ futures basis) ─► minutes of trading date D
        (Brownian bridge between anchors, intraday profile, integer ticks) ─► seconds (derived)
    minutes/seconds up to the clock ─► bars: wall-clock buckets, daily, weekly, monthly

Model, from slow to fast:

* **Daily anchors.** Per "walk" (SPY and the ES contracts follow SPX's walk, scaled; ZC has
  one of its own; every other instrument has its own) one log price per calendar day from
  ``FIRST_DAY`` to ``LAST_DAY``: a log-linear trend from ``price_head`` at the instrument's head
  to ``price_ref`` at ``REF_DAY`` (flat afterwards), plus a mean-reverting (Ornstein-Uhlenbeck,
  about an eight-month half life) deviation with ``daily_vol`` innovations, damped on
  weekends, and pinned to zero at ``REF_DAY`` so recent prices are realistic for any seed.
  Futures add a cost-of-carry basis that decays to zero at expiry; a CONTFUT carries the
  basis of the front contract of each day (so it jumps at each roll, as an unadjusted
  continuous series does).
* **Minutes.** Trading date D's all-hours session is a Brownian bridge of 1-minute steps from
  the anchor of D-1 to the anchor of D, so a day opens where the previous calendar day closed.
  Minutes inside the session's break (SEHK's lunch, CBOT's 07:45-08:30 halt) exist in the
  path but are never served. Per-minute volatility and volume follow an intraday profile
  (U-shaped regular hours, quiet extended hours; FX by time of day). Prices are integer tick
  counts (exact aggregation, exact ES quarter points); the minute high/low add random wicks to
  max/min(open, close). Each day's random numbers come from
  ``numpy.random.default_rng([seed, series_key, ordinal])``.
* **Seconds.** 1-second bars are derived from each minute with their own per-day generator:
  a bridge from the minute's open to its close that touches the minute's high and low
  exactly, with the volume and trade count split into integers that sum to the minute's.
* **The clock.** Nothing after ``now()`` exists: a minute (a second, for bars under a
  minute) appears once it is complete, so the intraday bar in progress holds the minutes up to
  now, today's daily bar the session so far, and the current week and month their days so
  far (IB returns periods in progress partial, too).
* **Bars.** Intraday bars group minutes (or seconds) by the bar size on the wall clock of
  the instrument's zone, never across trading dates, and are dated by their first element (so
  the first 1-hour regular-hours stock bar starts 09:30). Daily bars aggregate one session's
  minutes (regular or all hours) and are dated by the trading date; weekly/monthly bars
  aggregate daily bars per ISO week / calendar month (whole periods, even when the range
  starts inside one) and are dated by the **last** trading date in them (Friday; Thursday
  before a Friday holiday; the latest day so far for the period in progress), as IB dates
  them. MIDPOINT is the trade path, BID/ASK are shifted by
  ``half_spread_ticks``.
* **Durations.** ``N D`` is the last N trading days up to the end (IB's meaning), S, W, M and
  Y are calendar spans (``range_start``).

History begins at the regular-hours open of the first trading day whose regular session opens
at or after ``Instrument.head``; nothing before that is served. Contracts live in
:mod:`ibfarm.sim.instruments`, calendars in :mod:`ibfarm.sim.calendar`.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
from dateutil.relativedelta import relativedelta

from ibfarm.bars import BAR_SIZES, parse_duration
from ibfarm.sim import calendar as cal_mod
from ibfarm.sim import instruments as universe
from ibfarm.sim.calendar import FIRST_DAY, LAST_DAY, Calendar, day_epoch
from ibfarm.sim.instruments import WALK_OWNERS, Instrument

log = logging.getLogger(__name__)

#: Day the trend reaches ``Instrument.price_ref`` (recent, realistic levels).
REF_DAY = date(2024, 6, 28)

_UTC = timezone.utc
_N_DAYS = LAST_DAY.toordinal() - FIRST_DAY.toordinal() + 1
#: IB's two spellings of weekly and monthly bars, one meaning each.
_SAME_SIZE = {"1W": "1 week", "1M": "1 month"}


def bar_size_name(bar_size: str) -> str:
    """The model's name for one of IB's bar sizes (``"1W"`` is ``"1 week"``).

    Raises:
        ValueError: not literally one of IB's sizes (``ibfarm.bars.BAR_SIZES``).
    """
    if bar_size not in BAR_SIZES:
        raise ValueError(f"not one of IB's bar sizes: {bar_size!r}")
    return _SAME_SIZE.get(bar_size, bar_size)


@dataclass
class Bars:
    """Bars as numpy arrays, one element per bar, sorted by time, without duplicates.

    ``time`` is the bar start (epoch seconds, UTC); daily bars are dated 00:00 UTC of their
    trading date, weekly and monthly bars of the last trading date in them. For non-TRADES data
    ``volume``, ``wap`` and ``count`` are -1.
    """

    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    wap: np.ndarray
    volume: np.ndarray
    count: np.ndarray
    daily: bool

    def __len__(self) -> int:
        return len(self.time)


# ----------------------------------------------------------------------------------------------
# Per-day arrays

@dataclass(frozen=True)
class _Day:
    """One trading date's all-hours elements (prices in ticks), its regular hours and break."""

    t0: int              # epoch of the first element
    step: int            # seconds per element (60 for minutes, 1 for seconds)
    offset: np.ndarray   # UTC offset (seconds) per element, or a 1-element array if constant
    rth: slice           # elements inside regular hours
    gap: slice           # elements inside the session's break (never served; may be empty)
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray        # int64 TRADES volume
    n: np.ndarray        # int64 trade count
    w: np.ndarray        # float64 wap in ticks

    def __len__(self) -> int:
        return len(self.o)

    def served(self, a: int, b: int) -> np.ndarray:
        """Indices of elements in ``[a, b)`` outside the break."""
        idx = np.arange(max(a, 0), max(a, b), dtype=np.int64)
        if self.gap.stop > self.gap.start:
            idx = idx[(idx < self.gap.start) | (idx >= self.gap.stop)]
        return idx


@dataclass(frozen=True)
class _Series:
    """Concatenated base elements (minutes or seconds) ready for grouping."""

    t: np.ndarray
    local: np.ndarray    # wall-clock epoch (t + UTC offset)
    sess: np.ndarray     # session number, to never group across trading dates
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray
    n: np.ndarray
    w: np.ndarray


def _stable_key(text: str) -> int:
    return zlib.crc32(text.encode())


def _profile(sec_type: str, n: int, rth: slice, local_minute: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(variance weight, volume weight) per minute of a session."""
    if sec_type == "CASH":
        # FX: London and the New York overlap are busy, the Asian evening is quiet.
        hour = local_minute // 60
        w = np.where((hour >= 2) & (hour < 12), 1.6, np.where((hour >= 12) & (hour < 17), 0.9, 0.5))
        return w, w
    var_w = np.full(n, 0.35 if sec_type == "STK" else 0.4)
    vol_w = np.full(n, 0.03 if sec_type == "STK" else 0.12)
    k = rth.stop - rth.start
    if k > 0:
        u = (np.arange(k) + 0.5) / k
        shape = 0.7 + 1.8 * (2 * u - 1) ** 4   # busy open and close, quiet lunch
        var_w[rth] = shape
        vol_w[rth] = shape
    return var_w, vol_w


class MarketModel:
    """Deterministic prices, sessions and contracts of the simulated gateway.

    Args:
        seed: non-negative seed; equal seeds give identical markets in every process.
        now: the clock (default: the system clock). It decides which futures are listed, and
            nothing after it is served: the period in progress comes partial.
        cache_days: how many per-day minute arrays to keep (about 45 KB each).
    """

    def __init__(self, seed: int = 0, now: Callable[[], datetime] | None = None,
                 cache_days: int = 2048) -> None:
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.seed = seed
        self._now = now or (lambda: datetime.now(_UTC))
        self._cache_days = cache_days
        self._days: OrderedDict[tuple[int, int], _Day] = OrderedDict()
        self._seconds: OrderedDict[tuple[int, int], _Day] = OrderedDict()
        self._daily: dict[tuple[int, int, bool], np.ndarray] = {}
        self._walks: dict[str, np.ndarray] = {}
        self._anchors: dict[int, np.ndarray] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ contracts
    @property
    def instruments(self) -> list[Instrument]:
        """Every contract listed now (the futures list depends on ``now()``)."""
        return universe.listed(self._now())

    def resolve(self, *, symbol: str = "", sec_type: str = "", exchange: str = "",
                currency: str = "", con_id: int = 0, local_symbol: str = "",
                last_trade: str = "", include_expired: bool = False) -> list[Instrument]:
        """Contracts matching an IB contract description (``instruments.resolve`` at now)."""
        return universe.resolve(self._now(), symbol=symbol, sec_type=sec_type,
                                exchange=exchange, currency=currency, con_id=con_id,
                                local_symbol=local_symbol, last_trade=last_trade,
                                include_expired=include_expired)

    # ------------------------------------------------------------------ calendar
    @staticmethod
    def calendar(inst: Instrument) -> Calendar:
        """The trading calendar ``inst`` trades on."""
        return cal_mod.build(inst.calendar)

    def sessions(self, inst: Instrument, start: datetime, end: datetime, use_rth: bool
                 ) -> list[tuple[datetime, datetime, date]]:
        """Sessions ``(open_utc, close_utc, trading_date)`` overlapping ``[start, end)``.

        Pure calendar: the head and the clock are ignored, but a future has no sessions after
        expiry (a delisted stock none after delisting). A break does not split a session here.
        """
        cal = self.calendar(inst)
        rows = self._limit(inst, cal, cal.overlapping(_epoch(start), _epoch(end), use_rth),
                           with_head=False)
        opens, closes = cal.bounds(use_rth)
        return [(_from_epoch(opens[i]), _from_epoch(closes[i]), cal.day(i)) for i in rows]

    def trading_hours(self, inst: Instrument, first_day: date, days: int, liquid: bool) -> str:
        """IB's ``tradingHours`` (``liquid=False``) or ``liquidHours`` string, local time."""
        cal = self.calendar(inst)
        return cal_mod.trading_hours(cal, first_day, days, liquid, self._last_row(inst, cal))

    def head_timestamp(self, inst: Instrument, what_to_show: str, use_rth: bool) -> datetime:
        """Earliest data (UTC): the regular open of the first day opening at/after the head."""
        if not inst.what_to_show_ok(what_to_show):
            raise ValueError(f"{inst.local_symbol} has no {what_to_show} data")
        return _from_epoch(self._head_epoch(inst, self.calendar(inst)))

    def range_start(self, inst: Instrument, end: datetime, duration: str,
                    use_rth: bool) -> datetime:
        """Where a request for ``duration`` ending at ``end`` starts, as IB counts it.

        ``N D`` is the last N trading days whose session (regular or all hours) opened
        before ``end``: the range starts at the open of the earliest. ``S``, ``W``, ``M`` and
        ``Y`` are calendar spans back from ``end``.
        """
        count, unit = parse_duration(duration)
        if unit == "D":
            cal = self.calendar(inst)
            rows = cal.opened_before(_epoch(end), count, use_rth, self._last_row(inst, cal))
            if len(rows) == 0:
                return end
            return min(end, _from_epoch(cal.bounds(use_rth)[0][rows[0]]))
        if unit == "S":
            return end - timedelta(seconds=count)
        if unit == "W":
            return end - timedelta(weeks=count)
        if unit == "M":
            return end - relativedelta(months=count)
        return end - relativedelta(years=count)

    # ------------------------------------------------------------------ bars
    def bars(self, inst: Instrument, bar_size: str, start: datetime, end: datetime,
             use_rth: bool, what_to_show: str) -> Bars:
        """Bars of ``bar_size`` (one of IB's spellings) for ``inst``, up to the clock.

        Intraday: bars whose (session-clipped) start lies in ``[start, end)``. Daily and
        longer: trading days whose session closes in ``(start, end]``, plus the session in
        progress when ``end`` is at or after now; weekly/monthly bars aggregate those per ISO
        week or calendar month, each period whole from its first trading day (only the end of
        the range, or now, cuts one short).

        Raises:
            ValueError: not one of IB's bar sizes, or ``what_to_show`` not available.
        """
        size = bar_size_name(bar_size)
        if not inst.what_to_show_ok(what_to_show):
            raise ValueError(f"{inst.local_symbol} has no {what_to_show} data")
        seconds = BAR_SIZES[size]
        s, e = _epoch(start), _epoch(end)
        cut = _epoch(self._now())
        cal = self.calendar(inst)
        if seconds >= 86400:
            t, agg = self._daily_bars(inst, cal, s, e, use_rth, size, cut)
            return _finish(inst, t, agg, what_to_show, daily=True)
        rows = self._limit(inst, cal, cal.overlapping(s, min(e, cut), use_rth))
        if seconds < 60:
            # Only the minutes that can hold a bar starting in [start, end) need seconds.
            series = self._series(inst, cal, rows, use_rth, True, cut, window=(s, e))
        else:
            series = self._series(inst, cal, rows, use_rth, False, cut)
        t, agg = _group(series, seconds)
        keep = (t >= s) & (t < e)
        return _finish(inst, t[keep], tuple(a[keep] for a in agg), what_to_show, daily=False)

    # ------------------------------------------------------------------ internals: rows
    def _head_epoch(self, inst: Instrument, cal: Calendar) -> int:
        head = _epoch(inst.head)
        lo = max(0, cal.index(inst.head.astimezone(_UTC).date()) - 2)
        rows = np.flatnonzero(cal.trading[lo:] & (cal.rth_open[lo:] >= head))
        if len(rows) == 0:
            return day_epoch(LAST_DAY) + 86400
        return int(cal.rth_open[lo + rows[0]])

    def _last_row(self, inst: Instrument, cal: Calendar) -> int | None:
        last = inst.last_day
        return None if last is None else cal.index(last)

    def _limit(self, inst: Instrument, cal: Calendar, rows: np.ndarray,
               with_head: bool = True) -> np.ndarray:
        last = self._last_row(inst, cal)
        if last is not None:
            rows = rows[rows <= last]
        if with_head:
            head = self._head_epoch(inst, cal)
            rows = rows[cal.all_close[rows] > head]
        return rows

    # ------------------------------------------------------------------ internals: prices
    def _walk(self, owner: Instrument) -> np.ndarray:
        """Log price per calendar day of a walk (trend + mean-reverting deviation)."""
        with self._lock:
            cached = self._walks.get(owner.symbol)
        if cached is not None:
            return cached
        rng = np.random.default_rng([self.seed, _stable_key("walk:" + owner.symbol)])
        ords = np.arange(_N_DAYS) + FIRST_DAY.toordinal()
        head_ord = owner.head.astimezone(_UTC).date().toordinal()
        ref_ord = REF_DAY.toordinal()
        slope = (math.log(owner.price_ref) - math.log(owner.price_head)) / (ref_ord - head_ord)
        trend = math.log(owner.price_ref) + slope * (np.minimum(ords, ref_ord) - ref_ord)
        weekday = (ords + 6) % 7  # date.weekday() from the ordinal (ordinal 1 is a Monday)
        shocks = rng.standard_normal(_N_DAYS) * owner.daily_vol
        shocks *= np.where(weekday >= 5, 0.3, 1.0)  # little news on weekends
        shocks[0] = 0.0
        alpha = 1.0 / 365.0  # mean reversion per day: a half life of about eight months
        # AR(1) y_t = (1 - alpha) y_{t-1} + e_t, as an exponentially weighted mean of e / alpha.
        dev = pd.Series(shocks / alpha).ewm(alpha=alpha, adjust=False).mean().to_numpy(copy=True)
        # Pin the deviation to zero at REF_DAY (fading with the same time scale), so recent
        # prices sit at realistic levels whatever the seed.
        ref = ref_ord - FIRST_DAY.toordinal()
        dev -= dev[ref] * np.exp(-alpha * np.abs(np.arange(_N_DAYS) - ref))
        walk = trend + dev
        with self._lock:
            self._walks[owner.symbol] = walk
        return walk

    def _anchor(self, inst: Instrument) -> np.ndarray:
        key = inst.series_key
        with self._lock:
            cached = self._anchors.get(key)
        if cached is not None:
            return cached
        owner = WALK_OWNERS[inst.walk] if inst.walk else inst
        anchor = self._walk(owner) + math.log(inst.walk_scale)
        if inst.carry and (inst.sec_type == "CONTFUT" or inst.last_trade_date):
            ords = np.arange(_N_DAYS) + FIRST_DAY.toordinal()
            if inst.sec_type == "CONTFUT":
                expiry = _front_expiries(inst.chain, ords)
            else:
                expiry = datetime.strptime(inst.last_trade_date, "%Y%m%d").date().toordinal()
            anchor = anchor + inst.carry * np.maximum(expiry - ords, 0) / 365.0
        with self._lock:
            self._anchors[key] = anchor
        return anchor

    def _day(self, inst: Instrument, cal: Calendar, row: int, store: bool = True) -> _Day:
        """The all-hours minutes of trading date ``row`` (cached, LRU)."""
        key = (inst.series_key, int(row))
        with self._lock:
            day = self._days.get(key)
            if day is not None:
                self._days.move_to_end(key)
                return day
        day = self._make_day(inst, cal, int(row))
        if store:
            with self._lock:
                self._days[key] = day
                while len(self._days) > self._cache_days:
                    self._days.popitem(last=False)
        return day

    def _make_day(self, inst: Instrument, cal: Calendar, row: int) -> _Day:
        t0, t1 = int(cal.all_open[row]), int(cal.all_close[row])
        n = (t1 - t0) // 60
        rth = slice(int(cal.rth_open[row] - t0) // 60, int(cal.rth_close[row] - t0) // 60)
        gap = slice(0, 0)
        if cal.brk_start[row]:
            gap = slice(int(cal.brk_start[row] - t0) // 60, int(cal.brk_end[row] - t0) // 60)
        offset = _offsets(cal, row, t0, n)
        local_minute = ((t0 + offset) // 60 + np.arange(n)) % 1440
        var_w, vol_w = _profile(inst.sec_type, n, rth, local_minute)

        ordinal = FIRST_DAY.toordinal() + row
        rng = np.random.default_rng([self.seed, inst.series_key, ordinal])
        anchor = self._anchor(inst)
        a0, a1 = anchor[row - 1], anchor[row]
        sig = inst.daily_vol * np.sqrt(var_w / var_w.sum())
        z = rng.standard_normal(n)
        walk = np.cumsum(sig * z)
        frac = np.cumsum(sig * sig)
        frac /= frac[-1]
        # Brownian bridge: pinned to the previous anchor at the open and this one at the close.
        logp = np.empty(n + 1)
        logp[0] = a0
        logp[1:] = a0 + walk - frac * (walk[-1] - (a1 - a0))
        price = np.exp(logp)
        floor = 1 + inst.half_spread_ticks  # keeps bid prices positive
        ticks = np.maximum(np.rint(price / inst.min_tick), floor).astype(np.int64)
        o, c = ticks[:-1], ticks[1:]
        sig_ticks = price[1:] * sig / inst.min_tick
        # Wicks: the minute's excursion beyond open/close, randomly rounded so that even
        # slow instruments get an occasional one-tick wick.
        wick_h = np.floor(np.abs(rng.standard_normal(n)) * 0.5 * sig_ticks + rng.random(n))
        wick_l = np.floor(np.abs(rng.standard_normal(n)) * 0.5 * sig_ticks + rng.random(n))
        h = np.maximum(o, c) + wick_h.astype(np.int64)
        lo = np.maximum(np.minimum(o, c) - wick_l.astype(np.int64), floor)
        mean = max(inst.volume_scale, 1.0) * vol_w * (1.0 + 0.5 * np.abs(z))
        v = np.maximum(np.rint(mean * rng.lognormal(-0.18, 0.6, n)), 1).astype(np.int64)
        cnt = np.rint(v / inst.trade_size * rng.uniform(0.7, 1.3, n)).astype(np.int64)
        cnt = np.clip(cnt, 1, v)
        w = (h + lo + 2.0 * c) / 4.0
        return _Day(t0=t0, step=60, offset=offset, rth=rth, gap=gap, o=o.astype(np.int32),
                    h=h.astype(np.int32), lo=lo.astype(np.int32), c=c.astype(np.int32), v=v,
                    n=cnt, w=w)

    def _seconds_day(self, inst: Instrument, cal: Calendar, row: int) -> _Day:
        """1-second bars of a whole trading date, derived from (and summing to) its minutes."""
        key = (inst.series_key, int(row))
        with self._lock:
            cached = self._seconds.get(key)
            if cached is not None:
                self._seconds.move_to_end(key)
                return cached
        day = self._day(inst, cal, row)
        sec = _derive_seconds(day, np.random.default_rng(
            [self.seed, inst.series_key, FIRST_DAY.toordinal() + int(row), 1]))
        with self._lock:
            self._seconds[key] = sec
            while len(self._seconds) > 4:
                self._seconds.popitem(last=False)
        return sec

    # ------------------------------------------------------------------ internals: bars
    def _span(self, day: _Day, use_rth: bool, head: int, cut: int) -> tuple[int, int]:
        """Element range of a day: regular or all hours, from the head, up to the clock."""
        scale = 60 // day.step
        a, b = (day.rth.start * scale, day.rth.stop * scale) if use_rth else (0, len(day))
        a = max(a, min(b, -(-(head - day.t0) // day.step)))   # history starts at the head
        b = min(b, (cut - day.t0) // day.step)                 # complete elements only
        return a, b

    def _series(self, inst: Instrument, cal: Calendar, rows: np.ndarray, use_rth: bool,
                seconds: bool, cut: int, window: tuple[int, int] | None = None) -> _Series:
        head = self._head_epoch(inst, cal)
        parts = []
        for k, row in enumerate(rows):
            day = self._seconds_day(inst, cal, row) if seconds else self._day(inst, cal, row)
            a, b = self._span(day, use_rth, head, cut)
            if window is not None:
                # Sub-minute bars never straddle a minute, so trimming to whole minutes
                # around [s, e) keeps every bar that starts inside the window intact.
                s, e = window
                a = max(a, (s - day.t0) // 60 * 60 - 60)
                b = min(b, (e - day.t0) // 60 * 60 + 120)
            idx = day.served(a, b)
            if len(idx) == 0:
                continue
            t = day.t0 + idx * day.step
            off = day.offset if len(day.offset) == 1 else day.offset[idx]
            parts.append((t, t + off, np.full(len(idx), k, np.int32), day.o[idx], day.h[idx],
                          day.lo[idx], day.c[idx], day.v[idx], day.n[idx], day.w[idx]))
        if not parts:
            empty_i = np.empty(0, np.int64)
            return _Series(empty_i, empty_i, empty_i, empty_i, empty_i, empty_i, empty_i,
                           empty_i, empty_i, np.empty(0))
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        return _Series(*cols)

    def _daily_rows(self, inst: Instrument, cal: Calendar, rows: np.ndarray,
                    use_rth: bool, cut: int) -> np.ndarray:
        """(len(rows), 7) array: o, h, l, c (ticks), volume, count, wap (ticks) per day; the
        session in progress at ``cut`` aggregates its minutes so far (and is not cached)."""
        head = self._head_epoch(inst, cal)
        closes = cal.bounds(use_rth)[1]
        out = np.empty((len(rows), 7))
        for k, row in enumerate(rows):
            key = (inst.series_key, int(row), use_rth)
            partial = closes[row] > cut
            with self._lock:
                cached = None if partial else self._daily.get(key)
            if cached is None:
                # Daily requests walk far back: don't let them flush the intraday cache.
                day = self._day(inst, cal, row, store=partial)
                idx = day.served(*self._span(day, use_rth, head, cut))
                v = day.v[idx]
                vs = int(v.sum())
                cached = np.full(7, np.nan) if len(idx) == 0 else np.array([
                    day.o[idx[0]], day.h[idx].max(), day.lo[idx].min(), day.c[idx[-1]], vs,
                    int(day.n[idx].sum()), float(np.dot(v, day.w[idx])) / vs])
                if not partial:
                    with self._lock:
                        if len(self._daily) > 500_000:
                            self._daily.clear()
                        self._daily[key] = cached
            out[k] = cached
        return out

    def _daily_bars(self, inst: Instrument, cal: Calendar, s: int, e: int, use_rth: bool,
                    size: str, cut: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        opens, closes = cal.bounds(use_rth)
        rows = cal.closing_in(s, e, use_rth)
        if e >= cut:  # the session in progress counts, with its minutes so far
            live = cal.overlapping(cut - 1, cut, use_rth)
            rows = np.union1d(rows, live[(closes[live] > cut) & (closes[live] > s)])
        rows = rows[opens[rows] < cut]
        if size != "1 day" and len(rows):
            # Weeks and months are whole periods: the first one starts at its first trading
            # day even when the range starts later (only the end, or now, cuts a period).
            first = cal.day(rows[0])
            begin = first - timedelta(days=first.weekday()) if size == "1 week" \
                else first.replace(day=1)
            lo = cal.index(begin)
            rows = np.concatenate([np.flatnonzero(cal.trading[lo:rows[0]]) + lo, rows])
        rows = self._limit(inst, cal, rows)
        d = self._daily_rows(inst, cal, rows, use_rth, cut)
        present = ~np.isnan(d[:, 0])  # a day can lie wholly before the head
        rows, d = rows[present], d[present]
        ords = rows.astype(np.int64) + FIRST_DAY.toordinal()
        t = (ords - date(1970, 1, 1).toordinal()) * 86400
        o, h, lo, c = (d[:, i].astype(np.int64) for i in range(4))
        v, n, w = d[:, 4].astype(np.int64), d[:, 5].astype(np.int64), d[:, 6]
        if size == "1 day":
            return t, (o, h, lo, c, v, n, w)
        if size == "1 week":
            key = ords - (ords - 1) % 7            # Monday of the ISO week
        else:
            days = (ords - date(1970, 1, 1).toordinal()).astype("datetime64[D]")
            key = days.astype("datetime64[M]").astype(np.int64)
        zeros = np.zeros(len(t), np.int64)
        series = _Series(t, key, zeros, o, h, lo, c, v, n, w)
        return _group(series, 1, stamp_last=True)


# ----------------------------------------------------------------------------------------------
# Helpers

def _front_expiries(root: str, ords: np.ndarray) -> np.ndarray:
    """Per day ordinal, the expiry ordinal of the chain's front contract that day."""
    chain = universe.FUTURES[root]
    expiries = np.array([chain.expiry(y, m).toordinal()
                         for y, m in _months(chain, FIRST_DAY.year, LAST_DAY.year + 1)])
    pick = np.minimum(np.searchsorted(expiries, ords), len(expiries) - 1)
    return expiries[pick]


def _months(chain, first_year: int, last_year: int):
    for year in range(first_year, last_year + 1):
        for month in sorted(chain.months):
            yield year, month


def _epoch(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_UTC)
    return math.floor(t.timestamp())


def _from_epoch(t: int) -> datetime:
    return datetime.fromtimestamp(int(t), tz=_UTC)


def _offsets(cal: Calendar, row: int, t0: int, n: int) -> np.ndarray:
    """UTC offset per minute; a single value unless the session spans a DST change."""
    if cal.offset[row] == cal.offset_close[row]:
        return np.array([int(cal.offset[row])], dtype=np.int64)
    times = pd.to_datetime(t0 + 60 * np.arange(n), unit="s", utc=True).tz_convert(cal.zone)
    naive = times.tz_localize(None).as_unit("s").asi8
    return naive - (t0 + 60 * np.arange(n))


def _derive_seconds(day: _Day, rng: np.random.Generator) -> _Day:
    """Sixty 1-second bars per minute that aggregate back exactly to the minute."""
    n = len(day)
    o, h, lo, c = (x.astype(np.int64)[:, None] for x in (day.o, day.h, day.lo, day.c))
    # Path p[0..60]: p[0] = open, p[60] = close, a bridge in between, clipped to [low, high],
    # and touching high and low at two distinct interior points.
    steps = rng.standard_normal((n, 60))
    bridge = np.cumsum(steps, axis=1)
    k = np.arange(1, 61) / 60.0
    bridge -= k * bridge[:, -1:]
    spread = np.maximum(h - lo, 1) / 4.0
    path = np.empty((n, 61), np.int64)
    path[:, 0] = o[:, 0]
    path[:, 1:] = np.rint(o + (c - o) * k + bridge * spread / 3.0)
    path[:, 1:60] = np.clip(path[:, 1:60], lo, h)
    path[:, 60] = c[:, 0]
    at_high = rng.integers(1, 60, n)
    at_low = 1 + (at_high - 1 + rng.integers(1, 59, n)) % 59   # different interior point
    rows = np.arange(n)
    path[rows, at_high] = h[:, 0]
    path[rows, at_low] = lo[:, 0]
    so, sc = path[:, :60], path[:, 1:]
    wick = rng.random((n, 60)) < 0.1
    sh = np.minimum(np.maximum(so, sc) + wick, h)
    sl = np.maximum(np.minimum(so, sc) - (rng.random((n, 60)) < 0.1), lo)

    # Volume: bursty weights, split into integers by largest remainder so rows sum exactly.
    weights = rng.exponential(1.0, (n, 60)) * (rng.random((n, 60)) < 0.6)
    weights[rows, at_high] += 0.5  # at least one positive weight per minute
    v = day.v[:, None]
    share = v * weights / weights.sum(axis=1, keepdims=True)
    sv = np.floor(share).astype(np.int64)
    short = v[:, 0] - sv.sum(axis=1)
    order = np.argsort(-(share - sv), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(60)[None, :].repeat(n, 0), axis=1)
    sv += rank < short[:, None]
    # Trade counts follow cumulative volume, so a second without volume has no trades.
    cum = np.cumsum(sv, axis=1)
    ccum = (day.n[:, None] * cum) // v
    sn = np.diff(ccum, axis=1, prepend=0)
    # Wap: the second's mid, shifted so the volume-weighted mean is the minute's wap.
    mid = (sh + sl) / 2.0
    adj = day.w - (sv * mid).sum(axis=1) / day.v
    sw = mid + adj[:, None]

    off = day.offset if len(day.offset) == 1 else np.repeat(day.offset, 60)
    return _Day(t0=day.t0, step=1, offset=off, rth=day.rth,
                gap=slice(day.gap.start * 60, day.gap.stop * 60), o=so.ravel(), h=sh.ravel(),
                lo=sl.ravel(), c=sc.ravel(), v=sv.ravel(), n=sn.ravel(), w=sw.ravel())


def _group(s: _Series, seconds: int, stamp_last: bool = False
           ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Aggregate base elements into bars: same session and same wall-clock bucket.

    A bar is dated by its first element, or by its last with ``stamp_last`` (weekly and
    monthly bars carry their last trading date)."""
    if len(s.t) == 0:
        e = np.empty(0, np.int64)
        return e, (e, e, e, e, e, e, np.empty(0))
    key = s.local // seconds
    new = np.empty(len(key), bool)
    new[0] = True
    new[1:] = (key[1:] != key[:-1]) | (s.sess[1:] != s.sess[:-1])
    starts = np.flatnonzero(new)
    if len(starts) == len(key):
        return s.t, (s.o, s.h, s.lo, s.c, s.v, s.n, s.w)
    last = np.append(starts[1:], len(key)) - 1
    v = np.add.reduceat(s.v, starts)
    vw = np.add.reduceat(s.v * s.w, starts)
    c = s.c[last]
    w = np.divide(vw, v, out=c.astype(np.float64), where=v > 0)
    stamps = s.t[last] if stamp_last else s.t[starts]
    return stamps, (s.o[starts], np.maximum.reduceat(s.h, starts),
                         np.minimum.reduceat(s.lo, starts), c, v,
                         np.add.reduceat(s.n, starts), w)


def _finish(inst: Instrument, t: np.ndarray, agg: tuple[np.ndarray, ...], what: str,
            daily: bool) -> Bars:
    """Ticks to prices for ``what``; volume, wap and count only for TRADES."""
    o, h, lo, c, v, n, w = agg
    hs = inst.half_spread_ticks
    shift = {"TRADES": (0, 0, 0, 0), "MIDPOINT": (0, 0, 0, 0), "BID": (-hs,) * 4,
             "ASK": (hs,) * 4, "BID_ASK": (-hs, hs, -hs, hs)}[what]
    dec, tick = inst.decimals, inst.min_tick

    def price(x: np.ndarray, d: int) -> np.ndarray:
        return np.round((x.astype(np.int64) + d) * tick, dec)

    size = len(t)
    if what == "TRADES":
        wap = np.round(w * tick, dec + 2)
        vol, cnt = v.astype(np.float64), n.astype(np.int64)
    else:
        wap, vol, cnt = np.full(size, -1.0), np.full(size, -1.0), np.full(size, -1, np.int64)
    return Bars(time=np.asarray(t, np.int64), open=price(o, shift[0]), high=price(h, shift[1]),
                low=price(lo, shift[2]), close=price(c, shift[3]), wap=wap, volume=vol,
                count=cnt, daily=daily)
