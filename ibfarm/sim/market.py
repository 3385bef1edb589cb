"""Deterministic market model behind the simulated IB gateway.

Everything here is a pure function of ``(seed, instrument, trading day)``, so two processes
with the same seed serve byte-identical bars, and every bar size is an exact aggregate of
one base path.

Model, from slow to fast:

* **Daily anchors.** Per "walk" (SPY and the ES contracts follow SPX's walk, scaled; every
  other instrument has its own) one log price per calendar day from ``FIRST_DAY`` to
  ``LAST_DAY``: a log-linear trend from ``price_head`` at the instrument's head to
  ``price_ref`` at ``REF_DAY`` (flat afterwards), plus a mean-reverting (Ornstein-Uhlenbeck,
  about an eight-month half life) deviation with ``daily_vol`` innovations, damped on
  weekends, and pinned to zero at ``REF_DAY`` so recent prices are realistic for any seed.
  Futures add a cost-of-carry basis that decays to zero at expiry.
* **Minutes.** Trading date D's all-hours session is a Brownian bridge of 1-minute steps from
  the anchor of D-1 to the anchor of D, so a day opens where the previous calendar day closed.
  Per-minute volatility and volume follow an intraday profile (U-shaped regular hours, quiet
  extended hours; FX by time of day). Prices are integer tick counts (exact aggregation,
  exact ES quarter points); the minute high/low add random wicks to max/min(open, close).
  Each day's random numbers come from ``numpy.random.default_rng([seed, con_id, ordinal])``.
* **Seconds.** 1-second bars are derived from each minute with their own per-day generator:
  a bridge from the minute's open to its close that touches the minute's high and low
  exactly, with the volume and trade count split into integers that sum to the minute's.
* **Bars.** Intraday bars group minutes (or seconds) by the bar size on the wall clock of
  the instrument's zone, never across sessions, and are dated by their first element (so the
  first 1-hour regular-hours stock bar starts 09:30). Daily bars aggregate one session's
  minutes (regular or all hours); weekly/monthly bars aggregate daily bars per ISO week /
  calendar month. MIDPOINT is the trade path, BID/ASK are shifted by ``half_spread_ticks``.
* **Listing.** ES is listed as the next four quarterly contracts (third Friday of
  Mar/Jun/Sep/Dec) not expired at ``now()``; an ES contract has no sessions after expiry.

History begins at the regular-hours open of the first trading day whose regular session opens
at or after ``Instrument.head``; nothing before that is served. Calendars live in
:mod:`ibfarm.sim.sessions`.
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

from ibfarm.bars import WHAT_TO_SHOW, bar_seconds, normalize_bar_size
from ibfarm.sim import sessions as cal_mod
from ibfarm.sim.sessions import FIRST_DAY, LAST_DAY, Calendar, calendar, day_epoch

log = logging.getLogger(__name__)

#: Day the trend reaches ``Instrument.price_ref`` (recent, realistic levels).
REF_DAY = date(2024, 6, 28)

_UTC = timezone.utc
_N_DAYS = LAST_DAY.toordinal() - FIRST_DAY.toordinal() + 1


@dataclass(frozen=True)
class Instrument:
    """One simulated contract: IB's contract-details fields plus the model's parameters."""

    symbol: str
    sec_type: str
    exchange: str
    primary_exchange: str
    currency: str
    con_id: int
    local_symbol: str
    trading_class: str
    market_name: str
    long_name: str
    min_tick: float
    multiplier: str
    time_zone: str
    valid_exchanges: str
    last_trade_date: str
    head: datetime
    # --- model parameters ---
    price_head: float = 100.0     # trend level at the head
    price_ref: float = 100.0      # trend level at REF_DAY and later
    daily_vol: float = 0.02       # daily log-return volatility
    volume_scale: float = 1000.0  # mean TRADES volume per regular-hours minute
    trade_size: float = 3.0       # mean volume per trade: count ~ volume / trade_size
    walk: str = ""                # symbol whose daily walk this follows ("" = own walk)
    walk_scale: float = 1.0       # price multiple of that walk
    carry: float = 0.0            # futures basis: annual cost of carry
    half_spread_ticks: int = 1

    def what_to_show_ok(self, what: str) -> bool:
        """Whether IB serves ``what`` for this contract (forex has no TRADES)."""
        if what not in WHAT_TO_SHOW:
            return False
        return not (self.sec_type == "CASH" and what == "TRADES")

    @property
    def decimals(self) -> int:
        """Decimal places of the tick size (0.25 -> 2, 0.00005 -> 5)."""
        for d in range(10):
            if abs(round(self.min_tick * 10**d) - self.min_tick * 10**d) < 1e-9:
                return d
        return 10


@dataclass
class Bars:
    """Bars as numpy arrays, one element per bar, sorted by time, without duplicates.

    ``time`` is the bar start (epoch seconds, UTC); daily and longer bars are dated 00:00 UTC
    of their (first) trading date. For non-TRADES data ``volume``, ``wap`` and ``count`` are -1.
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
# Universe

def _dt(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=_UTC)


_STK_VENUES = ("SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,ISLAND,DRCTEDGE,BEX,BATS,EDGEA,BYX,"
               "IEX,EDGX,FOXRIVER,PEARL,NYSENAT,LTSE,MEMX,IBEOS,OVERNIGHT,TPLUS1,PSX")


def _stock(symbol: str, con_id: int, primary: str, long_name: str, head: datetime,
           price_head: float, price_ref: float, vol: float, volume: float, **kw) -> Instrument:
    nasdaq = primary == "NASDAQ"
    return Instrument(
        symbol=symbol, sec_type="STK", exchange="SMART", primary_exchange=primary,
        currency="USD", con_id=con_id, local_symbol=symbol,
        trading_class="NMS" if nasdaq else symbol, market_name="NMS" if nasdaq else symbol,
        long_name=long_name, min_tick=0.01, multiplier="", time_zone="US/Eastern",
        valid_exchanges=_STK_VENUES + ("," + primary if primary not in _STK_VENUES else ""),
        last_trade_date="", head=head, price_head=price_head, price_ref=price_ref,
        daily_vol=vol, volume_scale=volume, trade_size=2.5, **kw)


def _forex(base: str, quote: str, con_id: int, long_name: str, tick: float,
           price_head: float, price_ref: float) -> Instrument:
    pair = f"{base}.{quote}"
    return Instrument(
        symbol=base, sec_type="CASH", exchange="IDEALPRO", primary_exchange="", currency=quote,
        con_id=con_id, local_symbol=pair, trading_class=pair, market_name=pair,
        long_name=long_name, min_tick=tick, multiplier="", time_zone="US/Eastern",
        valid_exchanges="IDEALPRO", last_trade_date="", head=_dt(2005, 2, 28),
        price_head=price_head, price_ref=price_ref, daily_vol=0.006, volume_scale=0.0)


_SPX = Instrument(
    symbol="SPX", sec_type="IND", exchange="CBOE", primary_exchange="", currency="USD",
    con_id=416904, local_symbol="SPX", trading_class="SPX", market_name="SPX",
    long_name="S&P 500 Stock Index", min_tick=0.01, multiplier="", time_zone="US/Central",
    valid_exchanges="CBOE", last_trade_date="", head=_dt(1990, 1, 2, 14, 30),
    price_head=350.0, price_ref=5460.0, daily_vol=0.011, volume_scale=300.0, trade_size=1.0)

STATIC_INSTRUMENTS: tuple[Instrument, ...] = (
    _stock("AAPL", 265598, "NASDAQ", "APPLE INC", _dt(1980, 12, 12, 14, 30), 0.40, 210.0, 0.020,
           1500.0),
    _stock("MSFT", 272093, "NASDAQ", "MICROSOFT CORP", _dt(1986, 3, 13, 14, 30), 0.50, 450.0,
           0.018, 600.0),
    _stock("SPY", 756733, "ARCA", "SPDR S&P 500 ETF TRUST", _dt(1993, 1, 29, 14, 30), 0.0, 0.0,
           0.011, 1200.0, walk="SPX", walk_scale=0.1),
    _stock("IBM", 8314, "NYSE", "INTL BUSINESS MACHINES CORP", _dt(1980, 1, 2, 14, 30), 18.0,
           175.0, 0.014, 120.0),
    _stock("NVDA", 4815747, "NASDAQ", "NVIDIA CORP", _dt(1999, 1, 22, 14, 30), 0.35, 125.0, 0.030,
           4000.0),
    _stock("TSLA", 76792991, "NASDAQ", "TESLA INC", _dt(2010, 6, 29, 13, 30), 1.60, 195.0, 0.035,
           2500.0),
    _stock("AMZN", 3691937, "NASDAQ", "AMAZON.COM INC", _dt(1997, 5, 15, 13, 30), 0.10, 190.0,
           0.022, 1000.0),
    _stock("GOOGL", 208813719, "NASDAQ", "ALPHABET INC-CL A", _dt(2004, 8, 19, 13, 30), 2.50,
           180.0, 0.019, 700.0),
    _forex("EUR", "USD", 12087792, "European Monetary Union Euro", 0.00005, 1.30, 1.08),
    _forex("GBP", "USD", 12087797, "British pound", 0.00005, 1.90, 1.27),
    _forex("USD", "JPY", 15016059, "US dollar", 0.005, 105.0, 155.0),
    _SPX,
)

_MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}


def third_friday(year: int, month: int) -> date:
    """Third Friday of a month (quarterly equity futures expire then)."""
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def es_contract(year: int, month: int) -> Instrument:
    """The ES future expiring in ``year``/``month`` (a quarterly month)."""
    if month not in _MONTH_CODES:
        raise ValueError(f"ES trades quarterly; {month} is not Mar/Jun/Sep/Dec")
    expiry = third_friday(year, month)
    head = expiry - timedelta(days=2 * 365)
    return Instrument(
        symbol="ES", sec_type="FUT", exchange="CME", primary_exchange="", currency="USD",
        con_id=620000000 + year * 12 + month, local_symbol=f"ES{_MONTH_CODES[month]}{year % 10}",
        trading_class="ES", market_name="ES", long_name="E-mini S&P 500", min_tick=0.25,
        multiplier="50", time_zone="US/Central", valid_exchanges="CME",
        last_trade_date=f"{expiry:%Y%m%d}", head=_dt(head.year, head.month, head.day),
        volume_scale=2500.0, trade_size=4.0, walk="SPX", carry=0.04, daily_vol=0.011)


def listed_es(now: datetime, count: int = 4) -> list[Instrument]:
    """The next ``count`` quarterly ES contracts not expired at ``now``."""
    today = now.astimezone(_UTC).date()
    out: list[Instrument] = []
    year, month = today.year, 3 * ((today.month - 1) // 3) + 3
    while len(out) < count:
        if third_friday(year, month) >= today:
            out.append(es_contract(year, month))
        month += 3
        if month > 12:
            year, month = year + 1, 3
    return out


# ----------------------------------------------------------------------------------------------
# Per-day arrays

@dataclass(frozen=True)
class _Day:
    """One trading date's all-hours minutes (prices in ticks) and where regular hours are."""

    t0: int              # epoch of the first minute
    offset: np.ndarray   # UTC offset (seconds) per minute, or a 1-element array if constant
    rth: slice           # minutes inside regular hours
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray        # int64 TRADES volume
    n: np.ndarray        # int64 trade count
    w: np.ndarray        # float64 wap in ticks

    def __len__(self) -> int:
        return len(self.o)


@dataclass(frozen=True)
class _Series:
    """Concatenated base elements (minutes or seconds) ready for grouping."""

    t: np.ndarray
    local: np.ndarray    # wall-clock epoch (t + UTC offset)
    sess: np.ndarray     # session number, to never group across sessions
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
        now: clock used only to decide which futures are listed (default: the system clock).
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
        self._walk_owner = {i.symbol: i for i in STATIC_INSTRUMENTS}

    # ------------------------------------------------------------------ contracts
    @property
    def instruments(self) -> list[Instrument]:
        """Every contract currently known (the ES list depends on ``now()``)."""
        return list(STATIC_INSTRUMENTS) + listed_es(self._now())

    def resolve(self, *, symbol: str = "", sec_type: str = "", exchange: str = "",
                currency: str = "", con_id: int = 0, local_symbol: str = "",
                last_trade: str = "") -> list[Instrument]:
        """Contracts matching an IB contract description, the way IB matches them.

        ``con_id`` wins when non-zero. Otherwise ``sec_type`` is required and ``symbol`` (or
        ``local_symbol``) must match exactly; ``currency``, ``exchange`` and, for futures,
        ``last_trade`` ("YYYYMM" or "YYYYMMDD") narrow the match. Unknown -> ``[]``.
        """
        listed = self.instruments
        if con_id:
            return [i for i in listed if i.con_id == con_id]
        if not sec_type or not (symbol or local_symbol):
            return []
        out = []
        for inst in listed:
            if inst.sec_type != sec_type:
                continue
            if symbol and inst.symbol != symbol:
                continue
            if local_symbol and inst.local_symbol != local_symbol:
                continue
            if currency and inst.currency != currency:
                continue
            if exchange and not _exchange_ok(inst, exchange):
                continue
            if last_trade and not (inst.last_trade_date and
                                   inst.last_trade_date.startswith(last_trade)):
                continue
            out.append(inst)
        return sorted(out, key=lambda i: i.last_trade_date)

    # ------------------------------------------------------------------ calendar
    def sessions(self, inst: Instrument, start: datetime, end: datetime, use_rth: bool
                 ) -> list[tuple[datetime, datetime, date]]:
        """Sessions ``(open_utc, close_utc, trading_date)`` overlapping ``[start, end)``.

        Pure calendar: the head is ignored, but a future has no sessions after expiry.
        """
        cal = calendar(inst.sec_type)
        rows = self._limit(inst, cal, cal.overlapping(_epoch(start), _epoch(end), use_rth),
                           with_head=False)
        opens, closes = cal.bounds(use_rth)
        return [(_from_epoch(opens[i]), _from_epoch(closes[i]), cal.day(i)) for i in rows]

    def trading_hours(self, inst: Instrument, first_day: date, days: int, liquid: bool) -> str:
        """IB's ``tradingHours`` (``liquid=False``) or ``liquidHours`` string, local time."""
        cal = calendar(inst.sec_type)
        return cal_mod.trading_hours(cal, first_day, days, liquid, self._last_row(inst, cal))

    def head_timestamp(self, inst: Instrument, what_to_show: str, use_rth: bool) -> datetime:
        """Earliest data (UTC): the regular open of the first day opening at/after the head."""
        if not inst.what_to_show_ok(what_to_show):
            raise ValueError(f"{inst.local_symbol} has no {what_to_show} data")
        cal = calendar(inst.sec_type)
        return _from_epoch(self._head_epoch(inst, cal))

    # ------------------------------------------------------------------ bars
    def bars(self, inst: Instrument, bar_size: str, start: datetime, end: datetime,
             use_rth: bool, what_to_show: str) -> Bars:
        """Bars of ``bar_size`` for ``inst``.

        Intraday: bars whose (session-clipped) start lies in ``[start, end)``. Daily and
        longer: trading days whose session closes in ``(start, end]``, aggregated per ISO
        week or calendar month for weekly/monthly bars.

        Raises:
            ValueError: illegal bar size, or ``what_to_show`` not available for ``inst``.
        """
        size = normalize_bar_size(bar_size)
        if not inst.what_to_show_ok(what_to_show):
            raise ValueError(f"{inst.local_symbol} has no {what_to_show} data")
        seconds = bar_seconds(size)
        s, e = _epoch(start), _epoch(end)
        cal = calendar(inst.sec_type)
        if seconds >= 86400:
            t, agg = self._daily_bars(inst, cal, s, e, use_rth, size)
            return _finish(inst, t, agg, what_to_show, daily=True)
        rows = self._limit(inst, cal, cal.overlapping(s, e, use_rth))
        if seconds < 60:
            # Only the minutes that can hold a bar starting in [start, end) need seconds.
            series = self._series(inst, cal, rows, use_rth, seconds=True, window=(s, e))
        else:
            series = self._series(inst, cal, rows, use_rth, seconds=False)
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
        if not inst.last_trade_date:
            return None
        return cal.index(datetime.strptime(inst.last_trade_date, "%Y%m%d").date())

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
        with self._lock:
            cached = self._anchors.get(inst.con_id)
        if cached is not None:
            return cached
        owner = self._walk_owner[inst.walk] if inst.walk else inst
        anchor = self._walk(owner) + math.log(inst.walk_scale)
        if inst.carry and inst.last_trade_date:
            expiry = datetime.strptime(inst.last_trade_date, "%Y%m%d").date().toordinal()
            ords = np.arange(_N_DAYS) + FIRST_DAY.toordinal()
            anchor = anchor + inst.carry * np.maximum(expiry - ords, 0) / 365.0
        with self._lock:
            self._anchors[inst.con_id] = anchor
        return anchor

    def _day(self, inst: Instrument, cal: Calendar, row: int, store: bool = True) -> _Day:
        """The all-hours minutes of trading date ``row`` (cached, LRU)."""
        key = (inst.con_id, int(row))
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
        offset = _offsets(cal, row, t0, n)
        local_minute = ((t0 + offset) // 60 + np.arange(n)) % 1440
        var_w, vol_w = _profile(inst.sec_type, n, rth, local_minute)

        ordinal = FIRST_DAY.toordinal() + row
        rng = np.random.default_rng([self.seed, inst.con_id, ordinal])
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
        return _Day(t0=t0, offset=offset, rth=rth, o=o.astype(np.int32), h=h.astype(np.int32),
                    lo=lo.astype(np.int32), c=c.astype(np.int32), v=v, n=cnt, w=w)

    def _seconds_day(self, inst: Instrument, cal: Calendar, row: int) -> _Day:
        """1-second bars of a whole trading date, derived from (and summing to) its minutes."""
        key = (inst.con_id, int(row))
        with self._lock:
            cached = self._seconds.get(key)
            if cached is not None:
                self._seconds.move_to_end(key)
                return cached
        day = self._day(inst, cal, row)
        sec = _derive_seconds(day, np.random.default_rng(
            [self.seed, inst.con_id, FIRST_DAY.toordinal() + int(row), 1]))
        with self._lock:
            self._seconds[key] = sec
            while len(self._seconds) > 4:
                self._seconds.popitem(last=False)
        return sec

    # ------------------------------------------------------------------ internals: bars
    def _series(self, inst: Instrument, cal: Calendar, rows: np.ndarray, use_rth: bool,
                seconds: bool, window: tuple[int, int] | None = None) -> _Series:
        head = self._head_epoch(inst, cal)
        parts = []
        step = 1 if seconds else 60
        for k, row in enumerate(rows):
            day = self._seconds_day(inst, cal, row) if seconds else self._day(inst, cal, row)
            a, b = (day.rth.start * 60 // step, day.rth.stop * 60 // step) if use_rth \
                else (0, len(day))
            if window is not None:
                # Sub-minute bars never straddle a minute, so trimming to whole minutes
                # around [s, e) keeps every bar that starts inside the window intact.
                s, e = window
                a = max(a, (s - day.t0) // 60 * 60 - 60)
                b = min(b, (e - day.t0) // 60 * 60 + 120)
            # History starts at the head: drop earlier elements.
            a = max(a, min(b, -(-(head - day.t0) // step)))
            if b <= a:
                continue
            t = day.t0 + np.arange(a, b, dtype=np.int64) * step
            off = day.offset if len(day.offset) == 1 else day.offset[a:b]
            parts.append((t, t + off, np.full(b - a, k, np.int32), day.o[a:b], day.h[a:b],
                          day.lo[a:b], day.c[a:b], day.v[a:b], day.n[a:b], day.w[a:b]))
        if not parts:
            empty_i = np.empty(0, np.int64)
            return _Series(empty_i, empty_i, empty_i, empty_i, empty_i, empty_i, empty_i,
                           empty_i, empty_i, np.empty(0))
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        return _Series(*cols)

    def _daily_rows(self, inst: Instrument, cal: Calendar, rows: np.ndarray,
                    use_rth: bool) -> np.ndarray:
        """(len(rows), 7) array: o, h, l, c (ticks), volume, count, wap (ticks) per day."""
        head = self._head_epoch(inst, cal)
        out = np.empty((len(rows), 7))
        for k, row in enumerate(rows):
            key = (inst.con_id, int(row), use_rth)
            with self._lock:
                cached = self._daily.get(key)
            if cached is None:
                # Daily requests walk far back: don't let them flush the intraday cache.
                day = self._day(inst, cal, row, store=False)
                a, b = (day.rth.start, day.rth.stop) if use_rth else (0, len(day))
                a = max(a, min(b, -(-(head - day.t0) // 60)))
                v = day.v[a:b]
                vs = int(v.sum())
                cached = np.full(7, np.nan) if b <= a else np.array([
                    day.o[a], day.h[a:b].max(), day.lo[a:b].min(), day.c[b - 1], vs,
                    int(day.n[a:b].sum()), float(np.dot(v, day.w[a:b])) / vs])
                with self._lock:
                    if len(self._daily) > 500_000:
                        self._daily.clear()
                    self._daily[key] = cached
            out[k] = cached
        return out

    def _daily_bars(self, inst: Instrument, cal: Calendar, s: int, e: int, use_rth: bool,
                    size: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        rows = self._limit(inst, cal, cal.closing_in(s, e, use_rth))
        d = self._daily_rows(inst, cal, rows, use_rth)
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
        return _group(series, 1)


# ----------------------------------------------------------------------------------------------
# Helpers

def _exchange_ok(inst: Instrument, exchange: str) -> bool:
    if inst.sec_type == "STK":
        return exchange in ("SMART", inst.primary_exchange) or exchange in \
            inst.valid_exchanges.split(",")
    if inst.sec_type == "FUT":
        return exchange in ("CME", "GLOBEX")
    return exchange == inst.exchange


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
    return _Day(t0=day.t0, offset=off, rth=day.rth, o=so.ravel(), h=sh.ravel(), lo=sl.ravel(),
                c=sc.ravel(), v=sv.ravel(), n=sn.ravel(), w=sw.ravel())


def _group(s: _Series, seconds: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Aggregate base elements into bars: same session and same wall-clock bucket."""
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
    return s.t[starts], (s.o[starts], np.maximum.reduceat(s.h, starts),
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
