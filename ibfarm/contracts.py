"""Symbols to contracts, IB's time-zone ids to IANA zones, and IB's trading-hours strings to
UTC sessions.

``iana_zone`` is the one place where IB's ``timeZoneId`` values become IANA zones, and
``parse_hours`` the one parser of IB's ``tradingHours`` / ``liquidHours`` strings: one pass
gives the sessions (any number per trading date: lunch breaks, overnight sessions) and the
days listed as closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ibfarm.backend import Contract, Forex, Future, Index, Stock

log = logging.getLogger(__name__)

#: IB's ``timeZoneId`` values -> IANA zones. IB sends IANA's old link names ("US/Eastern",
#: "GB-Eire", "Hongkong", "Japan"), which zoneinfo may lack on a slim system, and legacy
#: abbreviations that are fixed offsets in IANA ("EST" has no summer time) or no IANA name at
#: all ("IST"); the abbreviations are settled by the exchange (``EXCHANGE_ZONES``) where it is
#: known, and by the first zone listed here otherwise.
IB_ZONES: dict[str, str] = {
    "US/Eastern": "America/New_York", "US/Central": "America/Chicago",
    "US/Mountain": "America/Denver", "US/Pacific": "America/Los_Angeles",
    "America/New_York": "America/New_York", "America/Chicago": "America/Chicago",
    "GB-Eire": "Europe/London", "GB": "Europe/London", "Europe/London": "Europe/London",
    "Hongkong": "Asia/Hong_Kong", "Asia/Hong_Kong": "Asia/Hong_Kong",
    "Japan": "Asia/Tokyo", "Asia/Tokyo": "Asia/Tokyo", "JST": "Asia/Tokyo",
    "MET": "Europe/Berlin", "CET": "Europe/Berlin", "Europe/Berlin": "Europe/Berlin",
    "Europe/Paris": "Europe/Paris", "Europe/Amsterdam": "Europe/Amsterdam",
    "Europe/Zurich": "Europe/Zurich", "Australia/NSW": "Australia/Sydney",
    "Australia/Sydney": "Australia/Sydney", "Canada/Eastern": "America/Toronto",
    "America/Toronto": "America/Toronto", "Asia/Calcutta": "Asia/Kolkata",
    "Asia/Kolkata": "Asia/Kolkata", "Singapore": "Asia/Singapore",
    "Asia/Singapore": "Asia/Singapore", "UTC": "UTC", "GMT": "Europe/London",
    # legacy abbreviations: the exchange decides when it is known
    "EST": "America/New_York", "EDT": "America/New_York", "EST5EDT": "America/New_York",
    "CST": "America/Chicago", "CDT": "America/Chicago", "CST6CDT": "America/Chicago",
    "IST": "Asia/Kolkata", "HKT": "Asia/Hong_Kong", "BST": "Europe/London",
}
#: IB exchange codes -> the zone the exchange keeps its hours in.
EXCHANGE_ZONES: dict[str, str] = {
    "NYSE": "America/New_York", "NASDAQ": "America/New_York", "ARCA": "America/New_York",
    "AMEX": "America/New_York", "BATS": "America/New_York", "ISLAND": "America/New_York",
    "SMART": "America/New_York", "IDEALPRO": "America/New_York", "NYMEX": "America/New_York",
    "COMEX": "America/New_York", "NYBOT": "America/New_York",
    "CME": "America/Chicago", "GLOBEX": "America/Chicago", "CBOT": "America/Chicago",
    "ECBOT": "America/Chicago", "CBOE": "America/Chicago", "CFE": "America/Chicago",
    "LSE": "Europe/London", "LSEETF": "Europe/London", "ICEEU": "Europe/London",
    "SEHK": "Asia/Hong_Kong", "HKFE": "Asia/Hong_Kong",
    "TSEJ": "Asia/Tokyo", "OSE.JPN": "Asia/Tokyo",
    "IBIS": "Europe/Berlin", "XETRA": "Europe/Berlin", "FWB": "Europe/Berlin",
    "EUREX": "Europe/Berlin", "SBF": "Europe/Paris", "AEB": "Europe/Amsterdam",
    "EBS": "Europe/Zurich", "SWX": "Europe/Zurich", "ASX": "Australia/Sydney",
    "TSE": "America/Toronto", "NSE": "Asia/Kolkata", "SGX": "Asia/Singapore",
}
_ABBREVIATIONS = frozenset({"EST", "EDT", "EST5EDT", "CST", "CDT", "CST6CDT", "IST", "HKT",
                            "BST", "MET", "CET", "JST", "GMT"})


def iana_zone(ib_zone: str | None, exchange: str | None = None) -> str:
    """The IANA zone of an IB ``timeZoneId`` for a contract on ``exchange``.

    Old link names map to their zone; a legacy abbreviation ("EST", "IST") becomes the zone
    of the exchange when it is known (EST is a fixed offset in IANA, wrong in summer); an
    empty or unknown id falls back to the exchange's zone (then UTC), with a warning. Never
    raises.
    """
    name = (ib_zone or "").strip()
    exchange_zone = EXCHANGE_ZONES.get((exchange or "").strip().upper())
    if name in _ABBREVIATIONS and exchange_zone:
        return exchange_zone
    if name in IB_ZONES:
        return IB_ZONES[name]
    if name:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: a malformed key
            pass
    fallback = exchange_zone or "UTC"
    log.warning("unknown IB time zone %r%s; using %s", name,
                f" on {exchange}" if exchange else "", fallback)
    return fallback


#: Where a security type trades by default when the caller gives no exchange (or SMART).
DEFAULT_EXCHANGE = {"STK": "SMART", "CASH": "IDEALPRO", "FUT": "CME", "IND": "CBOE"}


def make_contract(
    symbol_or_contract: str | Contract,
    sec_type: str = "STK",
    exchange: str = "SMART",
    currency: str = "USD",
) -> Contract:
    """The ib_insync contract for a symbol.

    ``"AAPL"`` is a stock on SMART in USD; ``"EUR.USD"`` (or ``sec_type="CASH"``) is a forex
    pair on IDEALPRO; ``sec_type="FUT"`` a future (CME unless an exchange is given) and
    ``sec_type="IND"`` an index (CBOE unless an exchange is given). A ``Contract`` passes through.

    Raises:
        ValueError: a forex pair that is not two three-letter currencies.

    Args:
        symbol_or_contract: IB symbol, ``"BASE.QUOTE"`` for forex, or a ready contract.
        sec_type: IB security type: STK, CASH, FUT or IND.
        exchange: IB exchange; SMART means "the default for this security type".
        currency: the contract's currency.
    """
    if isinstance(symbol_or_contract, Contract):
        return symbol_or_contract
    symbol = symbol_or_contract.strip().upper()
    sec_type = (sec_type or "STK").upper()
    if "." in symbol and sec_type in ("STK", "CASH"):
        sec_type = "CASH"
    if not exchange or exchange.upper() == "SMART":
        exchange = DEFAULT_EXCHANGE.get(sec_type, "SMART")
    if sec_type == "CASH":
        pair = symbol.replace(".", "").replace("/", "")
        if len(pair) == 3:
            pair += currency
        if len(pair) != 6 or not pair.isalpha():
            raise ValueError(f"{symbol_or_contract!r} is not a forex pair: write one as "
                             f"BASE.QUOTE, e.g. EUR.USD (a dot in a symbol means forex)")
        contract = Forex(pair, exchange=exchange)
    elif sec_type == "FUT":
        contract = Future(symbol, exchange=exchange, currency=currency)
    elif sec_type == "IND":
        contract = Index(symbol, exchange=exchange, currency=currency)
    elif sec_type == "STK":
        contract = Stock(symbol, exchange, currency)
    else:
        contract = Contract(secType=sec_type, symbol=symbol, exchange=exchange, currency=currency)
    return contract


@dataclass(frozen=True)
class TradingSession:
    """One session of an IB hours string: ``[start, end)`` in UTC, and the trading date it
    belongs to (the date of its end on the exchange's clock: FX's Sunday-evening session and
    CBOT's 19:00 overnight session belong to the next day)."""

    trading_date: date
    start: datetime
    end: datetime


@dataclass(frozen=True)
class TradingHours:
    """An IB hours string, parsed: the zone it was read in, its sessions (sorted) and the
    dates it lists as ``CLOSED``."""

    zone: str
    sessions: tuple[TradingSession, ...] = ()
    closed: tuple[date, ...] = ()


def parse_hours(hours: str, time_zone: str | None, exchange: str | None = None) -> TradingHours:
    """IB's ``tradingHours`` / ``liquidHours`` string, parsed in one pass.

    Sessions look like ``"20241125:0930-20241125:1600"``; a session may end on a later date
    (FX: ``"20241124:1715-20241125:1700"``); a date may have several sessions (HKEX's
    ``0930-1200`` and ``1300-1600``, CBOT's overnight and day sessions); ``"20241128:CLOSED"``
    lists a closed day. Times are on the wall clock of the contract's ``timeZoneId``, which
    goes through ``iana_zone`` (an unknown or empty id falls back to the exchange's zone).

    Args:
        hours: ``ContractDetails.tradingHours`` or ``liquidHours``.
        time_zone: ``ContractDetails.timeZoneId``, e.g. ``"US/Eastern"``.
        exchange: the contract's exchange, to settle abbreviations and unknown zones.

    Raises:
        ValueError: a session is not in IB's format.
    """
    zone_name = iana_zone(time_zone, exchange) if (time_zone or exchange) else "UTC"
    zone = ZoneInfo(zone_name)
    sessions: list[TradingSession] = []
    closed: list[date] = []
    for part in filter(None, (p.strip() for p in (hours or "").split(";"))):
        if part.upper().endswith("CLOSED"):
            day = part.split(":", 1)[0]
            try:
                closed.append(datetime.strptime(day, "%Y%m%d").date())
            except ValueError:
                raise ValueError(f"bad closed day {part!r}") from None
            continue
        try:
            start_text, end_text = part.split("-", 1)
            start = _parse_stamp(start_text, zone, None)
            end = _parse_stamp(end_text, zone, start)
        except ValueError as exc:
            raise ValueError(f"bad trading-hours session {part!r}: {exc}") from None
        trading_date = end.date() if end.time() != datetime.min.time() else \
            end.date() - timedelta(days=1)
        sessions.append(TradingSession(trading_date, start.astimezone(timezone.utc),
                                       end.astimezone(timezone.utc)))
    sessions.sort(key=lambda s: s.start)
    trading = {s.trading_date for s in sessions}
    return TradingHours(zone_name, tuple(sessions),
                        tuple(sorted(set(closed) - trading)))


def parse_trading_hours(hours: str, time_zone: str) -> list[tuple[datetime, datetime]]:
    """IB's trading-hours (or liquid-hours) string as sorted UTC ``(start, end)`` intervals
    (``parse_hours`` without the trading dates and closed days).

    Raises:
        ValueError: a session is not in IB's format.
    """
    return [(s.start, s.end) for s in parse_hours(hours, time_zone).sessions]


def _parse_stamp(text: str, zone: ZoneInfo | timezone, start: datetime | None) -> datetime:
    """``"20241125:0930"``, or bare ``"1600"`` (same date as ``start``, old format)."""
    text = text.strip()
    if ":" in text:
        day, clock = text.split(":", 1)
    elif start is not None and len(text) == 4:
        day, clock = start.strftime("%Y%m%d"), text
    else:
        raise ValueError(f"no date in {text!r}")
    stamp = datetime.strptime(day + clock, "%Y%m%d%H%M").replace(tzinfo=zone)
    if start is not None and stamp <= start:
        stamp += timedelta(days=1)  # old format: a session past midnight
    return stamp
