"""Interactive Brokers as an ``ExternalDataProvider``, through an ``ibfarm.IbFarm``.

This module and ``ktrdr.sim`` are the only ktrdr modules that import ``ibfarm``; the CLI and
the HTTP API build their provider here (``IbDataAdapter.from_env``) and read the farm through
its methods (``farm_status``, ``settings``). It

* resolves symbols to contracts: ``EUR.USD`` is a forex pair (MIDPOINT bars), ``VOD@LSE`` a
  listing on that exchange (currency, zone, sessions and trading class from IB's contract
  details), anything else a stock, else an index, else a future (the front month; TRADES
  bars; on a futures exchange the future is tried first), unless ``instrument_type`` says
  which;
* plans requests on the fixed grid of ``timeframes.segments``, with ``N D`` counted in the
  instrument's trading days (``gaps.SessionCalendar``), and fetches them through the farm::

      fetch_historical_data(range) ─► segments ─► farm.historical_bars(BarRequest) per segment
                                      │  timed out / "too long"? split at a trading date,
                                      │  ask the halves (down to one trading date)
                                      ◄─ Arrow tables ─► frame: UTC index, OHLCV + wap, bar_count
                                         (daily bars at the trading date's midnight on the
                                          exchange's clock, weekly at its Monday's)

  cancelling the coroutine cancels every farm future it is waiting for;
* turns ``ibfarm.errors.IbError`` into the data layer's ``DataProviderError`` family through
  one table, ``IB_ERRORS`` (IB's kind -> data-layer kind, exception class, retry-after), plus
  ``HINT_RULES`` for IB texts that need a better hint (TRADES on forex, MIDPOINT on an index).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ibfarm import BarRequest, FarmConfig, IbFarm, make_contract
from ibfarm.backend import IB, Contract
from ibfarm.contracts import iana_zone, parse_hours
from ibfarm.errors import ErrorKind, IbError
from ktrdr.data.dataset import empty_frame
from ktrdr.data.external_data_interface import (
    BAR_COLUMNS,
    OHLCV_COLUMNS,
    ContractInfo,
    DataErrorKind,
    DataProviderCancelledError,
    DataProviderConfigError,
    DataProviderConnectionError,
    DataProviderError,
    DataProviderInvalidRequestError,
    DataProviderNotFoundError,
    DataProviderPermissionError,
    DataProviderRateLimitError,
    DataProviderTimeoutError,
    ExternalDataProvider,
)
from ktrdr.data.gaps import SessionCalendar
from ktrdr.data.symbols import InvalidSymbolError, parse_symbol
from ktrdr.data.timeframes import (
    MAX_BARS,
    TimeframeError,
    as_utc,
    bar_labels,
    bar_size,
    duration_for,
    is_daily_or_longer,
    label_stamps,
    normalize_timeframe,
    segments,
)

log = logging.getLogger(__name__)

PROVIDER = "IB"

#: ktrdr instrument type -> IB security type, and the spellings accepted for each.
SEC_TYPES = {"stock": "STK", "forex": "CASH", "future": "FUT", "index": "IND"}
_TYPE_NAMES = {"stk": "stock", "stock": "stock", "equity": "stock", "cash": "forex",
               "forex": "forex", "fx": "forex", "fut": "future", "future": "future",
               "futures": "future", "ind": "index", "index": "index"}
#: Tried in this order when the caller does not say what a dot-less symbol is...
_GUESS_ORDER = ("stock", "index", "future")
#: ... and for a listing on an exchange of futures or of indices.
_EXCHANGE_ORDER = {**dict.fromkeys(("CME", "GLOBEX", "CBOT", "ECBOT", "NYMEX", "COMEX", "CFE",
                                    "EUREX", "HKFE", "ICEEU", "NYBOT"),
                                   ("future", "index", "stock")),
                   "CBOE": ("index", "stock", "future")}


@dataclass(frozen=True)
class ErrorRule:
    """What an IB error kind becomes in the data layer."""

    kind: DataErrorKind
    error: type[DataProviderError]
    retry_after: float | None = None


K, D = ErrorKind, DataErrorKind
#: IB's error kinds (``ibfarm.errors.ErrorKind``) -> the data layer's. The one mapping.
IB_ERRORS: dict[ErrorKind, ErrorRule] = {
    K.CONTRACT_NOT_FOUND: ErrorRule(D.UNKNOWN_SYMBOL, DataProviderNotFoundError),
    K.NO_PERMISSION: ErrorRule(D.NO_PERMISSION, DataProviderPermissionError),
    K.INVALID_REQUEST: ErrorRule(D.INVALID_REQUEST, DataProviderInvalidRequestError),
    K.NO_DATA: ErrorRule(D.INVALID_REQUEST, DataProviderInvalidRequestError),
    K.PACING: ErrorRule(D.RATE_LIMITED, DataProviderRateLimitError, 60.0),
    K.TOO_MANY_REQUESTS: ErrorRule(D.RATE_LIMITED, DataProviderRateLimitError, 5.0),
    K.CONNECTION: ErrorRule(D.UNAVAILABLE, DataProviderConnectionError, 10.0),
    K.WORKER_CRASHED: ErrorRule(D.UNAVAILABLE, DataProviderConnectionError, 5.0),
    K.SHUTDOWN: ErrorRule(D.UNAVAILABLE, DataProviderConnectionError),
    K.CLIENT_ID_IN_USE: ErrorRule(D.MISCONFIGURED, DataProviderConfigError),
    K.TIMEOUT: ErrorRule(D.TIMEOUT, DataProviderTimeoutError),
    K.CANCELLED: ErrorRule(D.CANCELLED, DataProviderCancelledError),
    K.RETRYABLE: ErrorRule(D.FAILED, DataProviderError, 5.0),
    K.INFO: ErrorRule(D.FAILED, DataProviderError),
}
del K, D
#: IB texts that deserve a better hint than their kind's: (phrases all in the lower-cased
#: text, hint). IB's own words: "No historical market data for EUR/CASH@FXSUBPIP Last 1d",
#: "... SPX/IND@CBOE MidPoint 0".
HINT_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("/cash@", " last"), "forex pairs have no TRADES bars: ask for MIDPOINT (or BID/ASK)"),
    (("/ind@", "midpoint"), "indices have no MIDPOINT bars: ask for TRADES"),
)
#: IB refusals that mean "this request is too long": split it and ask the halves.
_TOO_LONG = ("time length exceed", "invalid step", "longer than 365 days")


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


def map_ib_error(exc: BaseException, context: str = "") -> DataProviderError:
    """The data layer's exception for an ``IbError`` (or another failure of the farm), by
    ``IB_ERRORS``."""
    prefix = f"{context}: " if context else ""
    if isinstance(exc, DataProviderError):
        return exc
    if isinstance(exc, IbError):
        rule = IB_ERRORS.get(exc.kind, IB_ERRORS[ErrorKind.RETRYABLE])
        text = exc.message.lower()
        hint = next((h for phrases, h in HINT_RULES if all(p in text for p in phrases)),
                    exc.hint)
        return rule.error(prefix + exc.message, PROVIDER, exc.code, hint, kind=rule.kind,
                          retry_after=rule.retry_after)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return DataProviderTimeoutError(prefix + (str(exc) or "no answer in time"), PROVIDER,
                                        0)
    if isinstance(exc, ConnectionError | OSError | RuntimeError):
        return DataProviderConnectionError(prefix + str(exc), PROVIDER, 0,
                                           "check that IB Gateway/TWS is running")
    return DataProviderError(prefix + f"{type(exc).__name__}: {exc}", PROVIDER, 0)


def _too_long(exc: BaseException, timeframe: str) -> bool:
    """Whether a failed request may pass when asked in smaller pieces: refused as too long,
    or timed out with intraday bars (IB's answer time grows with the bars; daily and weekly
    requests are small, so a time-out there is not the request's size)."""
    if not isinstance(exc, IbError):
        return False
    if exc.kind is ErrorKind.TIMEOUT:
        return not is_daily_or_longer(timeframe)
    return exc.kind is ErrorKind.INVALID_REQUEST and any(p in exc.message.lower()
                                                          for p in _TOO_LONG)


@dataclass(frozen=True)
class _Resolved:
    """A symbol resolved to one IB contract."""

    symbol: str
    instrument_type: str
    contract: Contract
    what_to_show: str
    details: Any
    info: ContractInfo
    calendar: SessionCalendar


def _contract_info(symbol: str, instrument_type: str, details: Any) -> ContractInfo:
    contract = details.contract
    exchange = contract.primaryExchange if contract.exchange == "SMART" and \
        contract.primaryExchange else contract.exchange
    zone = iana_zone(details.timeZoneId or "", exchange)
    hours = details.liquidHours or details.tradingHours or ""
    try:
        parsed = parse_hours(hours, details.timeZoneId or "", exchange)
        sessions = tuple((int(s.start.timestamp()), int(s.end.timestamp()),
                          s.trading_date.isoformat()) for s in parsed.sessions)
        closed = tuple(d.isoformat() for d in parsed.closed)
    except ValueError as exc:
        log.warning("%s: unreadable trading hours (%s); using the calendar only", symbol, exc)
        sessions, closed = (), ()
    return ContractInfo(
        symbol=symbol, instrument_type=instrument_type, exchange=contract.exchange,
        currency=contract.currency, description=details.longName or "", time_zone=zone,
        trading_hours=details.tradingHours or "", liquid_hours=details.liquidHours or "",
        provider_id=int(contract.conId or 0), sessions=sessions, closed_days=closed,
        extra={"sec_type": contract.secType, "local_symbol": contract.localSymbol,
               "primary_exchange": contract.primaryExchange, "min_tick": details.minTick,
               "trading_class": contract.tradingClass,
               "last_trade_date": contract.lastTradeDateOrContractMonth,
               "ib_time_zone": details.timeZoneId})


def bars_to_frame(table: pa.Table, timeframe: str = "1h", zone: str = "UTC") -> pd.DataFrame:
    """An Arrow bar table (``ibfarm.BAR_SCHEMA``) as a frame with a UTC index: OHLCV and
    ``wap`` as float64, ``bar_count`` as int64; daily and weekly bars re-stamped to the
    convention of ``timeframes`` (one row per week, the latest winning)."""
    names = [c for c in BAR_COLUMNS if c in table.column_names]
    frame = table.select(["timestamp", *names]).to_pandas()
    index = pd.DatetimeIndex(frame.pop("timestamp"))
    index = (index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC"))
    if is_daily_or_longer(timeframe):
        # IB's date (the trading date; for weeks their last trading date so far), as the
        # farm delivers it: 00:00 UTC of that date
        days = index.tz_localize(None).normalize()
        if normalize_timeframe(timeframe) == "1w":
            days = days - pd.to_timedelta(np.asarray(days.day_of_week), unit="D")
        index = label_stamps(days, zone)
    frame.index = index.as_unit("ns")
    frame.index.name = "timestamp"
    out = frame[list(OHLCV_COLUMNS)].astype("float64")
    # IB's "no value" is -1 (volume, wap and trade count of MIDPOINT/BID/ASK bars): NaN here,
    # null in the store; a -1 wap with a real volume is a price and stays
    no_volume = out["volume"].to_numpy() == -1
    no_count = frame["bar_count"].to_numpy() == -1 if "bar_count" in frame else no_volume
    out.loc[no_volume, "volume"] = np.nan
    if "wap" in frame:
        wap = frame["wap"].astype("float64")
        out["wap"] = wap.mask((wap.to_numpy() == -1) & (no_volume | no_count))
    if "bar_count" in frame:
        out["bar_count"] = frame["bar_count"].astype("Int64").mask(no_count)
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return out


class IbDataAdapter(ExternalDataProvider):
    """IB historical data through a farm of worker processes.

    Args:
        host, port: the gateway (default ``IB_HOST``/``IB_PORT``, else 127.0.0.1:4002).
        farm: a running ``IbFarm`` to use (it is not shut down by ``close``); by default the
            adapter starts its own on first use.
        config: the farm's settings (an ``ibfarm.FarmConfig``); default
            ``FarmConfig.from_env()`` with ``farm_options`` applied.
        source: what the store records as the data's source ("ib", or "sim" for the
            simulated gateway).
        max_bars: most bars a planned request should hold (``timeframes.MAX_BARS``).
        farm_options: further ``FarmConfig`` fields (max_workers, pacing, request_timeout...).
    """

    name = PROVIDER

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 farm: IbFarm | None = None, config: Any = None, source: str = "ib",
                 max_bars: int = MAX_BARS, **farm_options: Any):
        overrides = dict(farm_options)
        if host is not None:
            overrides["host"] = host
        if port is not None:
            overrides["port"] = int(port)
        self._farm = farm
        self._owns_farm = farm is None
        if farm is not None:
            self._config = farm.config
        elif config is not None:
            self._config = config.replace(**overrides) if overrides else config
        else:
            self._config = FarmConfig.from_env(**overrides)
        self.source = source
        self.max_bars = max_bars
        self._farm_lock = threading.Lock()
        self._resolved: dict[tuple[str, str | None], _Resolved] = {}
        # Farm futures of look-ups, shared by concurrent callers (any thread, any loop), so a
        # symbol's contract details and head timestamp are asked once: IB counts a repeated
        # head-timestamp request within 15 s as a pacing violation.
        self._lookups: dict[tuple, Any] = {}
        self._lookups_lock = threading.Lock()
        self._errors = 0
        self._last_request: datetime | None = None

    @classmethod
    def from_env(cls, *, source: str = "ib", config: Any = None, **farm_options: Any
                 ) -> IbDataAdapter:
        """An adapter on the gateway the environment names (``IB_HOST``, ``IB_PORT``,
        ``IBFARM_*``), or on ``config`` (a ``FarmConfig``) when given."""
        return cls(config=config, source=source, **farm_options)

    # ----------------------------------------------------------------- the farm

    @property
    def farm(self) -> IbFarm:
        with self._farm_lock:
            if self._farm is None:
                log.info("starting an IB farm for %s:%s", self._config.host, self._config.port)
                self._farm = IbFarm(self._config)
            return self._farm

    def start(self) -> IbDataAdapter:
        """Start the farm now (it otherwise starts on first use)."""
        _ = self.farm
        return self

    def farm_status(self) -> dict | None:
        """The farm's ``status()`` (workers, totals with ``pending`` and ``in_flight``, the
        pacer), or None when no farm runs."""
        farm = self._farm
        return None if farm is None else farm.status()

    def settings(self) -> dict[str, Any]:
        """The farm's settings: host and port (of the first gateway), gateways (every
        ``host:port``), max_workers, client_ids (first, last), idle_timeout, request_timeout
        and the pacing policy's name."""
        c = self._config
        pacing = c.pacing if isinstance(c.pacing, str) else getattr(c.pacing, "name", "custom")
        first = c.addresses[0]
        return {"host": first.host, "port": first.port,
                "gateways": [a.key for a in c.addresses], "max_workers": c.max_workers,
                "client_ids": [c.client_ids.start, c.client_ids.stop - 1],
                "idle_timeout": c.idle_timeout, "request_timeout": c.request_timeout,
                "pacing": pacing}

    def shutdown(self) -> None:
        """Stop the farm this adapter started (waits for its workers); blocking."""
        with self._farm_lock:
            farm, owned = self._farm, self._owns_farm
            if owned:
                self._farm = None
        if farm is not None and owned:
            farm.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop at once (Ctrl-C): the farm this adapter started takes no more work and drops
        what is queued or at IB; every waiting caller gets an error now. Does not wait."""
        farm = self._farm
        if farm is not None and self._owns_farm:
            farm.shutdown(wait=False, cancel_futures=True, cancel_running=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)

    async def _await(self, future, context: str, shared: bool = False, raw: bool = False
                     ) -> Any:
        """The result of a farm future; cancelling the caller cancels it (a shared one is
        left to its other waiters). ``raw`` lets ``IbError`` through unmapped."""
        self._last_request = datetime.now(timezone.utc)
        waiter = asyncio.wrap_future(future)
        try:
            return await (asyncio.shield(waiter) if shared else waiter)
        except asyncio.CancelledError:
            if not shared:
                future.cancel()
            raise
        except Exception as exc:
            self._errors += 1
            if raw and isinstance(exc, IbError):
                raise
            raise map_ib_error(exc, context) from exc

    def get_provider_info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source,
                "gateway": f"{self._config.host}:{self._config.port}"}

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
        key = ("details", contract.secType, contract.symbol, contract.exchange,
               contract.currency)
        future = self._lookup(key, lambda: self.farm.contract_details(contract))
        try:
            found = list(await self._await(future, f"contract details of {contract.symbol}",
                                           shared=True))
        except DataProviderNotFoundError:
            found = []
        if not found:  # never remembered: IB answers valid symbols so during its maintenance
            with self._lookups_lock:
                if self._lookups.get(key) is future:
                    del self._lookups[key]
        return found

    async def _resolve(self, symbol: str, instrument_type: str | None) -> _Resolved:
        kind = normalize_instrument_type(instrument_type)
        try:
            parsed = parse_symbol(symbol)
        except InvalidSymbolError as exc:
            raise DataProviderInvalidRequestError(str(exc), PROVIDER, 0) from None
        symbol = str(parsed)
        key = (symbol, kind)
        if key in self._resolved:
            return self._resolved[key]
        if kind is None:
            kinds = ("forex",) if "." in parsed.root else \
                _EXCHANGE_ORDER.get(parsed.exchange or "", _GUESS_ORDER)
        else:
            kinds = (kind,)
        for candidate in kinds:
            sec_type = SEC_TYPES[candidate]
            if candidate == "forex" and "." not in parsed.root and len(parsed.root) != 6:
                continue
            if parsed.exchange is None:
                contract = make_contract(parsed.root, sec_type)
            else:  # the exchange's own currency: let IB say which
                contract = make_contract(parsed.root, sec_type, parsed.exchange, "")
            found = await self._details(contract)
            if not found:
                continue
            if candidate == "future":
                found.sort(key=lambda d: d.contract.lastTradeDateOrContractMonth or "")
            details = found[0]
            what = "MIDPOINT" if candidate == "forex" else "TRADES"
            info = _contract_info(symbol, candidate, details)
            resolved = _Resolved(symbol, candidate, details.contract, what, details, info,
                                 SessionCalendar(info))
            for k in (key, (symbol, None), (symbol, candidate)):
                self._resolved[k] = resolved
            log.debug("%s resolved as %s (conId %s)", symbol, candidate, details.contract.conId)
            return resolved
        tried = ", ".join(kinds)
        raise DataProviderNotFoundError(
            f"no contract found for {symbol!r} (tried: {tried})", PROVIDER, 200,
            "check the symbol; forex pairs are written like EUR.USD, other exchanges' "
            "listings like VOD@LSE; pass the instrument type (stock, forex, future, index) "
            "if the guess is wrong")

    def _bar_request(self, resolved: _Resolved, bar: str, end: datetime, duration: str
                     ) -> BarRequest:
        contract = resolved.contract
        # The resolved contract (with its conId) travels as the symbol: a ready Contract
        # passes through make_contract unchanged.
        return BarRequest(symbol=contract, bar_size=bar, duration=duration, end=end,
                          what_to_show=resolved.what_to_show, use_rth=True,
                          sec_type=SEC_TYPES[resolved.instrument_type],
                          exchange=contract.exchange or "SMART",
                          currency=contract.currency or "USD")

    # ----------------------------------------------------------------- bars

    def _check(self, timeframe: str, start: datetime, end: datetime
               ) -> tuple[str, datetime, datetime]:
        try:
            timeframe = normalize_timeframe(timeframe)
        except TimeframeError as exc:
            raise DataProviderInvalidRequestError(str(exc), PROVIDER, 0) from None
        start, end = as_utc(start), as_utc(end)
        if end <= start:
            raise DataProviderInvalidRequestError(
                f"end {end:%Y-%m-%d %H:%M} is not after start {start:%Y-%m-%d %H:%M}", PROVIDER,
                0, "give an end date later than the start date")
        return timeframe, start, end

    async def plan_requests(self, symbol: str, timeframe: str, start: datetime,
                            end: datetime, instrument_type: str | None = None
                            ) -> list[tuple[datetime, datetime]]:
        timeframe, start, end = self._check(timeframe, start, end)
        return self._plan(await self._resolve(symbol, instrument_type), timeframe, start, end)

    def _plan(self, resolved: _Resolved, timeframe: str, start: datetime, end: datetime
              ) -> list[tuple[datetime, datetime]]:
        """``[start, end)`` in the pieces one request each asks for."""
        return [(max(seg.start, start), seg.end) for seg in
                segments(timeframe, start, end, resolved.calendar, self.max_bars)]

    async def fetch_historical_data(self, symbol: str, timeframe: str, start: datetime,
                                    end: datetime, instrument_type: str | None = None
                                    ) -> pd.DataFrame:
        timeframe, start, end = self._check(timeframe, start, end)
        resolved = await self._resolve(symbol, instrument_type)
        plan = self._plan(resolved, timeframe, start, end)
        landed: list[tuple[datetime, datetime, pd.DataFrame]] = []
        counter = [0]
        log.debug("%s %s: %d segment(s) for %s .. %s", symbol, timeframe, len(plan), start, end)
        outcomes = await asyncio.gather(
            *(self._fetch_piece(resolved, timeframe, a, b, landed, counter) for a, b in plan),
            return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure
        if failures:
            error = map_ib_error(failures[0], f"{resolved.symbol} {timeframe}")
            error.partial = sorted(landed, key=lambda piece: piece[0])
            raise error
        frames = [f for _, _, f in sorted(landed, key=lambda piece: piece[0]) if len(f)]
        frame = pd.concat(frames) if frames else empty_frame()
        frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        frame.attrs["requests"] = counter[0]
        return frame

    async def _fetch_piece(self, resolved: _Resolved, timeframe: str, start: datetime,
                           end: datetime, landed: list, counter: list[int]) -> None:
        """One request for ``[start, end)``; if IB finds it too long (or it timed out), the
        halves, down to one trading date. What arrives is added to ``landed``."""
        calendar = resolved.calendar
        duration = duration_for(timeframe, start, end, calendar)
        request = self._bar_request(resolved, bar_size(timeframe), end, duration)
        counter[0] += 1
        context = f"{resolved.symbol} {timeframe} bars ending {end:%Y-%m-%d %H:%M}"
        try:
            table = await self._await(self.farm.historical_bars(request), context, raw=True)
        except IbError as exc:
            halves = _split(timeframe, start, end, calendar) if _too_long(exc, timeframe) \
                else None
            if not halves:
                raise map_ib_error(exc, context) from exc
            log.info("%s (%s) %s; asking it in two halves", context, duration, exc.message)
        else:
            frame = bars_to_frame(table, timeframe, resolved.info.time_zone)
            labels = bar_labels(frame.index, timeframe, calendar.zone)
            landed.append((start, end, frame[(labels >= start) & (labels < end)]))
            return
        outcomes = await asyncio.gather(
            *(self._fetch_piece(resolved, timeframe, a, b, landed, counter) for a, b in halves),
            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # ----------------------------------------------------------------- the rest

    async def validate_symbol(self, symbol: str, instrument_type: str | None = None) -> bool:
        try:
            await self._resolve(symbol, instrument_type)
        except DataProviderNotFoundError:
            return False
        return True

    async def get_contract_details(self, symbol: str, instrument_type: str | None = None
                                   ) -> ContractInfo:
        return (await self._resolve(symbol, instrument_type)).info

    async def get_head_timestamp(self, symbol: str, timeframe: str | None = None,
                                 instrument_type: str | None = None) -> datetime | None:
        resolved = await self._resolve(symbol, instrument_type)
        key = ("head", resolved.contract.conId, resolved.symbol, resolved.what_to_show)
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
        status = self.farm_status()
        if status is not None:
            info["farm"] = status.get("farm")
            info["rate_limit_status"] = status.get("pacer")
        return info


def _split(timeframe: str, start: datetime, end: datetime, calendar: SessionCalendar
           ) -> list[tuple[datetime, datetime]] | None:
    """``[start, end)`` cut in two at a trading date's start; None if it spans one date."""
    first = start.date() - timedelta(days=1)
    last = (end - timedelta(microseconds=1)).date() + timedelta(days=1)
    s, e = int(start.timestamp()), int(end.timestamp())
    if is_daily_or_longer(timeframe):
        days = [d for d in calendar.trading_dates(start.date(), last)
                if start <= datetime(d.year, d.month, d.day, tzinfo=timezone.utc) < end]
        if normalize_timeframe(timeframe) == "1w":
            days = sorted({d - timedelta(days=d.weekday()) for d in days})
        if len(days) < 2:
            return None
        mid = days[len(days) // 2]
        cut = datetime(mid.year, mid.month, mid.day, tzinfo=timezone.utc)
    else:
        days = [d for d in calendar.trading_dates(first, last)
                if any(o < e and c > s for o, c in calendar.day_sessions(d))]
        if len(days) < 2:
            return None
        cut = datetime.fromtimestamp(calendar.day_sessions(days[len(days) // 2])[0][0],
                                     timezone.utc)
    if not start < cut < end:
        return None
    return [(start, cut), (cut, end)]


__all__ = ["HINT_RULES", "IB_ERRORS", "ErrorRule", "IbDataAdapter", "PROVIDER",
           "bars_to_frame", "map_ib_error", "normalize_instrument_type"]
