"""The simulated gateway's contracts: what IB's contract details say, and how IB finds them.

::

    REQ_CONTRACT_DATA / a bar request's contract block
        │  symbol, secType, exchange, currency, conId, localSymbol, expiry, includeExpired
        ▼
    Universe.resolve ──► STATIC (stocks, forex, index, a delisted stock)
                    ├──► FUTURES chains (ES quarterly on CME, ZC on CBOT): listed, or
                    │    expired too with includeExpired
                    └──► CONTFUT: the continuous contract of a chain (front contract's conId)

An ``Instrument`` carries IB's contract-details fields and the market model's parameters
(price levels, volatility, volume, which daily walk it follows, which calendar it trades on).
Con ids of real listings are IB's where they are public (AAPL 265598, EUR.USD 12087792, SPX
416904, ...); the others are the simulator's own.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from functools import cache

from ibfarm.sim import calendar as cal_mod

_UTC = timezone.utc

#: What IB's historical service can show in bars (ADJUSTED_LAST: trades adjusted for splits
#: and dividends; the model has none, so it equals TRADES).
BAR_DATA = ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK", "ADJUSTED_LAST")

#: Expired futures stay listed (with includeExpired) and keep their data this long.
EXPIRED_KEPT = timedelta(days=2 * 365)


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
    calendar: str                 # key of ibfarm.sim.calendar
    head: datetime
    last_trade_date: str = ""     # YYYYMMDD (futures)
    last_trade_time: str = ""     # HH:MM:SS UTC, as IB appends it on the wire
    delisted: str = ""            # YYYYMMDD: no sessions after it, no data at all
    exchange_aliases: tuple[str, ...] = ()
    # --- model parameters ---
    price_head: float = 100.0     # trend level at the head
    price_ref: float = 100.0      # trend level at REF_DAY and later
    daily_vol: float = 0.02       # daily log-return volatility
    volume_scale: float = 1000.0  # mean TRADES volume per regular-hours minute
    trade_size: float = 3.0       # mean volume per trade: count ~ volume / trade_size
    walk: str = ""                # walk this follows ("" = its own, keyed by symbol)
    walk_scale: float = 1.0       # price multiple of that walk
    carry: float = 0.0            # futures basis: annual cost of carry
    half_spread_ticks: int = 1
    chain: str = field(default="", compare=False)  # futures root of a CONTFUT

    def what_to_show_ok(self, what: str) -> bool:
        """Whether IB serves ``what`` for this contract.

        Forex has no TRADES (nor ADJUSTED_LAST), an index only TRADES, adjusted data exists
        for stocks only.
        """
        if what not in BAR_DATA:
            return False
        if self.sec_type == "CASH":
            return what not in ("TRADES", "ADJUSTED_LAST")
        if self.sec_type == "IND":
            return what == "TRADES"
        return what != "ADJUSTED_LAST" or self.sec_type == "STK"

    @property
    def series_key(self) -> int:
        """Key of this contract's price path (a CONTFUT's differs from its front contract)."""
        if self.sec_type == "CONTFUT":
            return zlib.crc32(f"CONTFUT:{self.chain}".encode()) & 0x3FFFFFFF
        return self.con_id

    @property
    def last_day(self) -> date | None:
        """The last trading date (expiry or delisting), None while it trades on."""
        text = self.delisted or (self.last_trade_date if self.sec_type == "FUT" else "")
        return datetime.strptime(text, "%Y%m%d").date() if text else None

    @property
    def wire_last_trade(self) -> str:
        """lastTradeDateOrContractMonth as IB sends it: ``"20240314-17:01:00"`` for a future."""
        if not self.last_trade_date:
            return ""
        return f"{self.last_trade_date}-{self.last_trade_time}" if self.last_trade_time \
            else self.last_trade_date

    @property
    def decimals(self) -> int:
        """Decimal places of the tick size (0.25 -> 2, 0.00005 -> 5)."""
        for d in range(10):
            if abs(round(self.min_tick * 10**d) - self.min_tick * 10**d) < 1e-9:
                return d
        return 10


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
        calendar="US-STK", head=head, price_head=price_head, price_ref=price_ref,
        daily_vol=vol, volume_scale=volume, trade_size=2.5, **kw)


def _forex(base: str, quote: str, con_id: int, long_name: str, tick: float,
           price_head: float, price_ref: float) -> Instrument:
    pair = f"{base}.{quote}"
    return Instrument(
        symbol=base, sec_type="CASH", exchange="IDEALPRO", primary_exchange="", currency=quote,
        con_id=con_id, local_symbol=pair, trading_class=pair, market_name=pair,
        long_name=long_name, min_tick=tick, multiplier="", time_zone="US/Eastern",
        valid_exchanges="IDEALPRO", calendar="FX", head=_dt(2005, 2, 28),
        price_head=price_head, price_ref=price_ref, daily_vol=0.006, volume_scale=0.0)


_SPX = Instrument(
    symbol="SPX", sec_type="IND", exchange="CBOE", primary_exchange="", currency="USD",
    con_id=416904, local_symbol="SPX", trading_class="SPX", market_name="SPX",
    long_name="S&P 500 Stock Index", min_tick=0.01, multiplier="", time_zone="US/Central",
    valid_exchanges="CBOE", calendar="US-IND", head=_dt(1990, 1, 2, 14, 30),
    price_head=350.0, price_ref=5460.0, daily_vol=0.011, volume_scale=300.0, trade_size=1.0)

_VOD = Instrument(
    symbol="VOD", sec_type="STK", exchange="SMART", primary_exchange="LSE", currency="GBP",
    con_id=5022, local_symbol="VOD", trading_class="VOD", market_name="VOD",
    long_name="VODAFONE GROUP PLC", min_tick=0.02, multiplier="", time_zone="GB-Eire",
    valid_exchanges="SMART,LSE", calendar="LSE-STK", head=_dt(1991, 1, 2, 8),
    price_head=40.0, price_ref=72.0, daily_vol=0.016, volume_scale=40000.0, trade_size=900.0)

_TENCENT = Instrument(
    symbol="700", sec_type="STK", exchange="SMART", primary_exchange="SEHK", currency="HKD",
    con_id=13523, local_symbol="700", trading_class="700", market_name="700",
    long_name="TENCENT HOLDINGS LTD", min_tick=0.2, multiplier="", time_zone="Hongkong",
    valid_exchanges="SMART,SEHK", calendar="SEHK-STK", head=_dt(2004, 6, 16, 1, 30),
    price_head=3.7, price_ref=370.0, daily_vol=0.022, volume_scale=6000.0, trade_size=300.0)

#: A delisted stock: found by contract details, but IB has no data for it.
_TWTR = _stock("TWTR", 128951442, "NYSE", "TWITTER INC", _dt(2013, 11, 7, 14, 30), 45.0, 53.0,
               0.03, 900.0, delisted="20221027")

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
    _VOD,
    _TENCENT,
    _TWTR,
    _forex("EUR", "USD", 12087792, "European Monetary Union Euro", 0.00005, 1.30, 1.08),
    _forex("GBP", "USD", 12087797, "British pound", 0.00005, 1.90, 1.27),
    _forex("USD", "JPY", 15016059, "US dollar", 0.005, 105.0, 155.0),
    _SPX,
)


# ----------------------------------------------------------------------------------------------
# Futures

@dataclass(frozen=True)
class FutureChain:
    """A futures root: its contract months, expiry rule and contract-details fields."""

    template: Instrument          # contract-details fields and model parameters
    months: dict[int, str]        # contract month -> IB's month code
    con_id_base: int
    last_trade_clock: time        # last trade, exchange wall clock (IB sends it in UTC)
    listed: int                   # how many unexpired contracts IB lists
    continuous_head: datetime     # where the CONTFUT's history starts

    @property
    def root(self) -> str:
        return self.template.symbol

    def expiry(self, year: int, month: int) -> date:
        if self.root == "ES":  # third Friday of the contract month
            first = date(year, month, 1)
            return first + timedelta(days=(4 - first.weekday()) % 7 + 14)
        # ZC: the business day before the 15th of the contract month
        cal = cal_mod.build(self.template.calendar)
        row = cal.index(date(year, month, 15)) - 1
        while not cal.trading[row]:
            row -= 1
        return cal.day(row)

    def contract(self, year: int, month: int) -> Instrument:
        if month not in self.months:
            raise ValueError(f"{self.root} has no contract in month {month}")
        expiry = self.expiry(year, month)
        cal = cal_mod.build(self.template.calendar)
        clock = datetime.combine(expiry, self.last_trade_clock, tzinfo=cal.zone)
        head = expiry - EXPIRED_KEPT
        return replace(
            self.template, con_id=self.con_id_base + year * 12 + month,
            local_symbol=f"{self.root}{self.months[month]}{year % 10}",
            last_trade_date=f"{expiry:%Y%m%d}",
            last_trade_time=f"{clock.astimezone(_UTC):%H:%M:%S}",
            head=_dt(head.year, head.month, head.day))

    def months_from(self, year: int, month: int):
        """(year, month) of contract months from ``year``/``month`` on, forever."""
        while True:
            if month in self.months:
                yield year, month
            month += 1
            if month > 12:
                year, month = year + 1, 1

    def listed_at(self, today: date, include_expired: bool) -> list[Instrument]:
        """Contracts IB lists on ``today``: the next ``listed`` unexpired ones, and with
        ``include_expired`` those that expired within ``EXPIRED_KEPT`` as well."""
        out: list[Instrument] = []
        since = today - EXPIRED_KEPT if include_expired else today
        for year, month in self.months_from(since.year, since.month):
            expiry = self.expiry(year, month)
            if expiry < since:
                continue
            if expiry >= today and sum(1 for i in out if i.last_day >= today) >= self.listed:
                break
            out.append(self.contract(year, month))
        return out

    def by_con_id(self, con_id: int) -> Instrument | None:
        offset = con_id - self.con_id_base
        year, month = divmod(offset, 12)
        if month == 0:
            year, month = year - 1, 12
        if 1990 <= year <= cal_mod.LAST_DAY.year and month in self.months:
            return self.contract(year, month)
        return None

    def continuous(self, today: date) -> Instrument:
        """The CONTFUT: the front contract's fields, a price path of its own."""
        front = self.listed_at(today, include_expired=False)[0]
        return replace(front, sec_type="CONTFUT", head=self.continuous_head, chain=self.root)


_ES_TEMPLATE = Instrument(
    symbol="ES", sec_type="FUT", exchange="CME", primary_exchange="", currency="USD", con_id=0,
    local_symbol="", trading_class="ES", market_name="ES", long_name="E-mini S&P 500",
    min_tick=0.25, multiplier="50", time_zone="US/Central", valid_exchanges="CME",
    calendar="CME-EQ", head=_dt(1997, 9, 9), exchange_aliases=("GLOBEX",),
    volume_scale=2500.0, trade_size=4.0, walk="SPX", carry=0.04, daily_vol=0.011)

_ZC_TEMPLATE = Instrument(
    symbol="ZC", sec_type="FUT", exchange="CBOT", primary_exchange="", currency="USD", con_id=0,
    local_symbol="", trading_class="ZC", market_name="ZC", long_name="Corn Futures",
    min_tick=0.25, multiplier="5000", time_zone="US/Central", valid_exchanges="CBOT",
    calendar="CBOT-GRAIN", head=_dt(1975, 1, 2), exchange_aliases=("ECBOT",),
    volume_scale=150.0, trade_size=2.0, walk="ZC", carry=0.03, daily_vol=0.015,
    price_head=250.0, price_ref=450.0)

FUTURES: dict[str, FutureChain] = {
    "ES": FutureChain(_ES_TEMPLATE, {3: "H", 6: "M", 9: "U", 12: "Z"}, 620000000, time(8, 30),
                      listed=4, continuous_head=_dt(1997, 9, 9)),
    "ZC": FutureChain(_ZC_TEMPLATE, {3: "H", 5: "K", 7: "N", 9: "U", 12: "Z"}, 630000000,
                      time(12, 1), listed=5, continuous_head=_dt(1975, 1, 2)),
}

#: Instruments whose daily walk others follow (ES follows SPX; the ZC walk has no
#: instrument of its own to hang on, so its template owns it).
WALK_OWNERS: dict[str, Instrument] = {
    **{i.symbol: i for i in STATIC_INSTRUMENTS}, "ZC": _ZC_TEMPLATE}


def third_friday(year: int, month: int) -> date:
    """Third Friday of a month (quarterly equity futures expire then)."""
    return FUTURES["ES"].expiry(year, month)


# ----------------------------------------------------------------------------------------------
# Resolution

def _exchange_ok(inst: Instrument, exchange: str) -> bool:
    if inst.sec_type == "STK":
        return exchange in ("SMART", inst.primary_exchange) or exchange in \
            inst.valid_exchanges.split(",")
    return exchange == inst.exchange or exchange in inst.exchange_aliases


@cache
def _listed(today: date, include_expired: bool) -> tuple[Instrument, ...]:
    futures = [c for chain in FUTURES.values() for c in chain.listed_at(today, include_expired)]
    return STATIC_INSTRUMENTS + tuple(futures)


def listed(now: datetime, include_expired: bool = False) -> list[Instrument]:
    """Every contract IB lists at ``now`` (expired futures of the last two years too with
    ``include_expired``); CONTFUTs are not in the list (they share their front's con id)."""
    return list(_listed(now.astimezone(_UTC).date(), include_expired))


def resolve(now: datetime, *, symbol: str = "", sec_type: str = "", exchange: str = "",
            currency: str = "", con_id: int = 0, local_symbol: str = "", last_trade: str = "",
            include_expired: bool = False) -> list[Instrument]:
    """Contracts matching an IB contract description at ``now``, the way IB matches them.

    ``con_id`` wins when non-zero (with ``sec_type="CONTFUT"`` it names the continuous
    contract). Otherwise ``sec_type`` is required and ``symbol`` (or ``local_symbol``) must
    match exactly; ``currency`` (empty: any), ``exchange`` and, for futures, ``last_trade``
    ("YYYYMM" or "YYYYMMDD", optionally with IB's "-HH:MM:SS") narrow the match. Expired
    futures are found only with ``include_expired``. Unknown -> ``[]``.
    """
    today = now.astimezone(_UTC).date()
    if sec_type == "CONTFUT":
        chain = FUTURES.get(symbol)
        if chain is None and con_id:
            chain = next((c for c in FUTURES.values() if c.by_con_id(con_id)), None)
        if chain is None:
            return []
        cont = chain.continuous(today)
        if con_id and con_id != cont.con_id:
            return []
        if exchange and not _exchange_ok(cont, exchange):
            return []
        return [cont] if not currency or currency == cont.currency else []
    candidates = listed(now, include_expired)
    last_trade = last_trade.split("-")[0].split(" ")[0]
    if con_id:
        found = [i for i in candidates if i.con_id == con_id]
        if not found and include_expired:
            found = [c for c in (ch.by_con_id(con_id) for ch in FUTURES.values()) if c]
        return [i for i in found if not sec_type or i.sec_type == sec_type]
    if not sec_type or not (symbol or local_symbol):
        return []
    chain = FUTURES.get(symbol)
    if sec_type == "FUT" and chain and include_expired and len(last_trade) >= 6:
        # An explicit expiry of any age is found (its data may be gone: IB keeps two years).
        year, month = int(last_trade[:4]), int(last_trade[4:6])
        if month in chain.months and chain.contract(year, month) not in candidates:
            candidates = [*candidates, chain.contract(year, month)]
    out = []
    for inst in candidates:
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
