"""Symbols to ib_insync contracts, and IB's trading-hours strings to UTC sessions."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from ibfarm.backend import Contract, Forex, Future, Index, Stock

log = logging.getLogger(__name__)

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


def parse_trading_hours(hours: str, time_zone: str) -> list[tuple[datetime, datetime]]:
    """IB's trading-hours (or liquid-hours) string as UTC session intervals.

    Sessions look like ``"20241125:0930-20241125:1600"``; a session may end on a later date
    (FX: ``"20241124:1715-20241125:1700"``); ``"20241128:CLOSED"`` days are skipped. Times are
    in the contract's ``timeZoneId``; the result is sorted and in UTC.

    Args:
        hours: ``ContractDetails.tradingHours`` or ``liquidHours``.
        time_zone: ``ContractDetails.timeZoneId``, e.g. ``"US/Eastern"``.

    Raises:
        ValueError: a session is not in IB's format.
    """
    zone = ZoneInfo(time_zone) if time_zone else timezone.utc
    sessions = []
    for part in filter(None, (p.strip() for p in hours.split(";"))):
        if part.upper().endswith("CLOSED"):
            continue
        try:
            start_text, end_text = part.split("-", 1)
            start = _parse_stamp(start_text, zone, None)
            end = _parse_stamp(end_text, zone, start)
        except ValueError as exc:
            raise ValueError(f"bad trading-hours session {part!r}: {exc}") from None
        sessions.append((start.astimezone(timezone.utc), end.astimezone(timezone.utc)))
    return sorted(sessions)


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
