"""Interactive Brokers as an ``ExternalDataProvider``, through an ``ibfarm.IbFarm``.

This is the only ktrdr module that imports ``ibfarm``. It

* maps ktrdr timeframes to IB bar sizes (``timeframes.TIMEFRAMES``) and symbols to contracts:
  ``EUR.USD`` is a forex pair (MIDPOINT bars), others a stock, else an index, else a future
  (the front month; TRADES bars), unless ``instrument_type`` says which;
* cuts a range into IB-legal segments (``timeframes.segments``), submits them all to the
  farm at once and merges the Arrow tables (de-duplicated by timestamp);
* parses trading hours from contract details (time zone, sessions, closed days);
* turns ``ibfarm.errors.IbError`` into the data layer's ``DataProviderError`` family, keeping
  IB's code and what to do about it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa

from ibfarm import BarRequest, FarmConfig, IbFarm, make_contract
from ibfarm.backend import IB, Contract
from ibfarm.contracts import parse_trading_hours
from ibfarm.errors import ErrorKind, IbError
from ktrdr.data.external_data_interface import (
    OHLCV_COLUMNS,
    ContractInfo,
    DataProviderConnectionError,
    DataProviderError,
    DataProviderInvalidRequestError,
    DataProviderNotFoundError,
    DataProviderPermissionError,
    DataProviderRateLimitError,
    ExternalDataProvider,
)
from ktrdr.data.timeframes import TimeframeError, as_utc, bar_size, normalize_timeframe, segments

log = logging.getLogger(__name__)

PROVIDER = "IB"

#: ktrdr instrument type -> IB security type, and the spellings accepted for each.
SEC_TYPES = {"stock": "STK", "forex": "CASH", "future": "FUT", "index": "IND"}
_TYPE_NAMES = {"stk": "stock", "stock": "stock", "equity": "stock", "cash": "forex",
               "forex": "forex", "fx": "forex", "fut": "future", "future": "future",
               "futures": "future", "ind": "index", "index": "index"}
#: IB's time zone ids -> IANA names.
IB_ZONES = {"US/Eastern": "America/New_York", "US/Central": "America/Chicago",
            "US/Pacific": "America/Los_Angeles", "US/Mountain": "America/Denver",
            "EST": "America/New_York", "CST": "America/Chicago", "GB": "Europe/London",
            "MET": "Europe/Berlin", "JST": "Asia/Tokyo"}
#: Tried in this order when the caller does not say what a dot-less symbol is.
_GUESS_ORDER = ("stock", "index", "future")


def normalize_instrument_type(instrument_type: str | None) -> str | None:
    """``"STK"``, ``"Stock"`` -> ``"stock"``; None stays None.

    Raises:
        DataProviderInvalidRequestError: an unknown type.
    """
    if instrument_type is None or instrument_type == "":
        return None
    name = _TYPE_NAMES.get(instrument_type.strip().lower())
    if name is None:
        raise DataProviderInvalidRequestError(
            f"unknown instrument type {instrument_type!r}", PROVIDER,
            hint=f"use one of {', '.join(SEC_TYPES)}")
    return name


@dataclass(frozen=True)
class _Resolved:
    """A symbol resolved to one IB contract."""

    symbol: str
    instrument_type: str
    contract: Contract
    what_to_show: str
    details: Any


def map_ib_error(exc: BaseException, context: str = "") -> DataProviderError:
    """The data layer's exception for an ``IbError`` (or another failure of the farm)."""
    prefix = f"{context}: " if context else ""
    if isinstance(exc, DataProviderError):
        return exc
    if isinstance(exc, IbError):
        kind, code, hint = exc.kind, exc.code, exc.hint
        text = prefix + exc.message
        if kind is ErrorKind.CONTRACT_NOT_FOUND:
            return DataProviderNotFoundError(text, PROVIDER, code, hint)
        if kind is ErrorKind.NO_PERMISSION:
            return DataProviderPermissionError(text, PROVIDER, code, hint)
        if kind is ErrorKind.INVALID_REQUEST:
            return DataProviderInvalidRequestError(text, PROVIDER, code, hint)
        if kind in (ErrorKind.PACING, ErrorKind.TOO_MANY_REQUESTS):
            return DataProviderRateLimitError(text, PROVIDER, code, hint, retry_after=60.0)
        if kind in (ErrorKind.CONNECTION, ErrorKind.CLIENT_ID_IN_USE, ErrorKind.TIMEOUT,
                    ErrorKind.WORKER_CRASHED, ErrorKind.SHUTDOWN):
            return DataProviderConnectionError(text, PROVIDER, code, hint)
        return DataProviderError(text, PROVIDER, code, hint)
    if isinstance(exc, (ConnectionError, OSError, RuntimeError)):
        return DataProviderConnectionError(prefix + str(exc), PROVIDER, 0,
                                           "check that IB Gateway/TWS is running")
    return DataProviderError(prefix + f"{type(exc).__name__}: {exc}", PROVIDER, 0)


def ib_zone(zone: str) -> str:
    """IANA name of an IB time zone id."""
    return IB_ZONES.get(zone, zone) or "UTC"


def parse_closed_days(hours: str) -> tuple[str, ...]:
    """ISO dates an IB trading-hours string lists as ``YYYYMMDD:CLOSED``."""
    out = []
    for part in filter(None, (p.strip() for p in (hours or "").split(";"))):
        if part.upper().endswith("CLOSED"):
            day = part.split(":", 1)[0]
            try:
                out.append(date(int(day[:4]), int(day[4:6]), int(day[6:8])).isoformat())
            except ValueError:
                log.warning("unreadable closed day %r in trading hours", part)
    return tuple(out)


def _contract_info(symbol: str, instrument_type: str, details: Any) -> ContractInfo:
    contract = details.contract
    zone = ib_zone(details.timeZoneId or "")
    hours = details.liquidHours or details.tradingHours or ""
    try:
        sessions = tuple((int(a.timestamp()), int(b.timestamp()))
                         for a, b in parse_trading_hours(hours, zone))
    except ValueError as exc:
        log.warning("%s: unreadable trading hours (%s); using the calendar only", symbol, exc)
        sessions = ()
    return ContractInfo(
        symbol=symbol, instrument_type=instrument_type, exchange=contract.exchange,
        currency=contract.currency, description=details.longName or "", time_zone=zone,
        trading_hours=details.tradingHours or "", liquid_hours=details.liquidHours or "",
        provider_id=int(contract.conId or 0), sessions=sessions,
        closed_days=parse_closed_days(hours),
        extra={"sec_type": contract.secType, "local_symbol": contract.localSymbol,
               "primary_exchange": contract.primaryExchange, "min_tick": details.minTick,
               "last_trade_date": contract.lastTradeDateOrContractMonth,
               "ib_time_zone": details.timeZoneId})


def bars_to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow bar table (``ibfarm.BAR_SCHEMA``) as an OHLCV frame with a UTC index."""
    frame = table.select(["timestamp", *OHLCV_COLUMNS]).to_pandas()
    frame = frame.set_index("timestamp")
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC").as_unit("ns")
    frame.index.name = "timestamp"
    return frame.astype("float64")


class IbDataAdapter(ExternalDataProvider):
    """IB historical data through a farm of worker processes.

    Args:
        host, port: the gateway (default ``IB_HOST``/``IB_PORT``, else 127.0.0.1:4002).
        farm: a running ``IbFarm`` to use (it is not shut down by ``close``); by default the
            adapter starts its own on first use from ``FarmConfig.from_env()``.
        source: what the store records as the data's source ("ib", or "sim" for the
            simulated gateway).
        farm_options: further ``FarmConfig`` fields (max_workers, pacing, ...).
    """

    name = PROVIDER

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 farm: IbFarm | None = None, source: str = "ib", **farm_options: Any):
        overrides = dict(farm_options)
        if host is not None:
            overrides["host"] = host
        if port is not None:
            overrides["port"] = int(port)
        self._farm = farm
        self._owns_farm = farm is None
        self._config = farm.config if farm is not None else FarmConfig.from_env(**overrides)
        self.source = source
        self._resolved: dict[tuple[str, str | None], _Resolved] = {}
        # Farm futures of look-ups, shared by concurrent callers (any thread, any loop), so a
        # symbol's contract details and head timestamp are asked once: IB counts a repeated
        # head-timestamp request within 15 s as a pacing violation.
        self._lookups: dict[tuple, Any] = {}
        self._lookups_lock = threading.Lock()
        self._errors = 0
        self._last_request: datetime | None = None

    # ----------------------------------------------------------------- plumbing

    @property
    def farm(self) -> IbFarm:
        if self._farm is None:
            log.info("starting an IB farm for %s:%s", self._config.host, self._config.port)
            self._farm = IbFarm(self._config)
        return self._farm

    async def _await(self, future, context: str, shared: bool = False) -> Any:
        """The result of a farm future; a shared one is not cancelled with its waiter."""
        self._last_request = datetime.now(timezone.utc)
        try:
            waiter = asyncio.wrap_future(future)
            return await (asyncio.shield(waiter) if shared else waiter)
        except asyncio.CancelledError:
            if not shared:
                future.cancel()
            raise
        except Exception as exc:
            self._errors += 1
            raise map_ib_error(exc, context) from exc

    def get_provider_info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source,
                "gateway": f"{self._config.host}:{self._config.port}"}

    async def close(self) -> None:
        if self._farm is not None and self._owns_farm:
            farm, self._farm = self._farm, None
            await asyncio.get_running_loop().run_in_executor(None, farm.shutdown)

    # ----------------------------------------------------------------- contracts

    def _lookup(self, key: tuple, start) -> Any:
        """The farm future of look-up ``key``, started by ``start()`` unless one is running or
        has succeeded."""
        with self._lookups_lock:
            future = self._lookups.get(key)
            if future is None or (future.done() and (future.cancelled()
                                                     or future.exception() is not None)):
                future = self._lookups[key] = start()
            return future

    async def _details(self, contract: Contract) -> list:
        key = ("details", contract.secType, contract.symbol, contract.currency)
        future = self._lookup(key, lambda: self.farm.contract_details(contract))
        try:
            return list(await self._await(future, f"contract details of {contract.symbol}",
                                          shared=True))
        except DataProviderNotFoundError:
            return []

    async def _resolve(self, symbol: str, instrument_type: str | None,
                       need_details: bool = True) -> _Resolved:
        kind = normalize_instrument_type(instrument_type)
        symbol = symbol.strip().upper()
        key = (symbol, kind)
        if key in self._resolved:
            return self._resolved[key]
        if not need_details and kind in ("stock", "forex", "index"):
            # The type is known and the symbol alone names the contract: no round trip.
            what = "MIDPOINT" if kind == "forex" else "TRADES"
            return _Resolved(symbol, kind, make_contract(symbol, SEC_TYPES[kind]), what, None)
        if kind is None:
            kinds = ("forex",) if "." in symbol else _GUESS_ORDER
        else:
            kinds = (kind,)
        for candidate in kinds:
            sec_type = SEC_TYPES[candidate]
            if candidate == "forex" and "." not in symbol and len(symbol) != 6:
                continue
            found = await self._details(make_contract(symbol, sec_type))
            if not found:
                continue
            if candidate == "future":
                found.sort(key=lambda d: d.contract.lastTradeDateOrContractMonth or "")
            details = found[0]
            what = "MIDPOINT" if candidate == "forex" else "TRADES"
            resolved = _Resolved(symbol, candidate, details.contract, what, details)
            for k in (key, (symbol, None), (symbol, candidate)):
                self._resolved[k] = resolved
            log.debug("%s resolved as %s (conId %s)", symbol, candidate, details.contract.conId)
            return resolved
        tried = ", ".join(kinds)
        raise DataProviderNotFoundError(
            f"no contract found for {symbol!r} (tried: {tried})", PROVIDER, 200,
            "check the symbol; forex pairs are written like EUR.USD; pass the instrument "
            "type (stock, forex, future, index) if the guess is wrong")

    def _bar_request(self, resolved: _Resolved, bar: str, end: datetime, duration: str
                     ) -> BarRequest:
        contract = resolved.contract
        symbol: Any = resolved.symbol
        if resolved.instrument_type == "future":
            # BarRequest has no expiry: a ready Contract passes through make_contract, so the
            # front-month contract (with its conId) travels as the symbol.
            symbol = contract
        return BarRequest(symbol=symbol, bar_size=bar, duration=duration, end=end,
                          what_to_show=resolved.what_to_show, use_rth=True,
                          sec_type=SEC_TYPES[resolved.instrument_type],
                          exchange=contract.exchange or "SMART",
                          currency=contract.currency or "USD")

    # ----------------------------------------------------------------- the interface

    async def fetch_historical_data(self, symbol: str, timeframe: str, start: datetime,
                                    end: datetime, instrument_type: str | None = None
                                    ) -> pd.DataFrame:
        try:
            timeframe = normalize_timeframe(timeframe)
        except TimeframeError as exc:
            raise DataProviderInvalidRequestError(str(exc), PROVIDER, 0) from None
        start, end = as_utc(start), as_utc(end)
        if end <= start:
            raise DataProviderInvalidRequestError(
                f"end {end:%Y-%m-%d %H:%M} is not after start {start:%Y-%m-%d %H:%M}", PROVIDER,
                0, "give an end date later than the start date")
        resolved = await self._resolve(symbol, instrument_type, need_details=False)
        bar = bar_size(timeframe)
        plan = segments(timeframe, start, end)
        futures = [self.farm.historical_bars(self._bar_request(resolved, bar, seg.end,
                                                               seg.duration))
                   for seg in plan]
        log.debug("%s %s: %d segment(s) for %s .. %s", symbol, timeframe, len(plan), start, end)
        try:
            tables = [await self._await(f, f"{resolved.symbol} {timeframe} bars ending "
                                           f"{seg.end:%Y-%m-%d %H:%M}")
                      for f, seg in zip(futures, plan, strict=True)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        tables = [t for t in tables if t.num_rows]
        if tables:
            frame = bars_to_frame(pa.concat_tables(tables))
            frame = frame[(frame.index >= start) & (frame.index < end)]
            frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        else:
            frame = bars_to_frame(pa.table({c: [] for c in ("timestamp", *OHLCV_COLUMNS)},
                                           schema=_EMPTY_SCHEMA))
        frame.attrs["requests"] = len(plan)
        return frame

    async def validate_symbol(self, symbol: str, instrument_type: str | None = None) -> bool:
        try:
            await self._resolve(symbol, instrument_type)
        except DataProviderNotFoundError:
            return False
        return True

    async def get_contract_details(self, symbol: str, instrument_type: str | None = None
                                   ) -> ContractInfo:
        resolved = await self._resolve(symbol, instrument_type)
        return _contract_info(resolved.symbol, resolved.instrument_type, resolved.details)

    async def get_head_timestamp(self, symbol: str, timeframe: str | None = None,
                                 instrument_type: str | None = None) -> datetime | None:
        resolved = await self._resolve(symbol, instrument_type)
        key = ("head", resolved.contract.secType, resolved.symbol, resolved.what_to_show)
        future = self._lookup(key, lambda: self.farm.head_timestamp(
            resolved.contract, resolved.what_to_show, True))
        stamp = await self._await(future, f"head timestamp of {resolved.symbol}", shared=True)
        return as_utc(stamp) if stamp else None

    async def get_current_time(self) -> datetime:
        """The gateway's clock (IB's ``reqCurrentTime``)."""
        stamp = await self._await(self.farm.submit(IB.reqCurrentTimeAsync), "current time")
        return as_utc(stamp)

    async def health_check(self) -> dict[str, Any]:
        info: dict[str, Any] = {"provider": self.name, "healthy": False, "connected": False,
                                "error_count": self._errors,
                                "last_request_time": self._last_request, **self.get_provider_info()}
        try:
            info["server_time"] = await asyncio.wait_for(self.get_current_time(), 15)
            info["healthy"] = info["connected"] = True
        except (DataProviderError, asyncio.TimeoutError) as exc:
            info["error"] = str(exc) or "no answer from the gateway within 15 s"
        if self._farm is not None:
            status = self._farm.status()
            info["farm"] = status.get("farm")
            info["rate_limit_status"] = status.get("pacer")
        return info


_EMPTY_SCHEMA = pa.schema([("timestamp", pa.timestamp("s", tz="UTC")),
                           *((c, pa.float64()) for c in OHLCV_COLUMNS)])
