"""The interface between ktrdr's data layer and any source of historical bars.

The data layer (``DataManager``, the CLI, the HTTP API) talks to a market-data source only
through ``ExternalDataProvider``; ``IbDataAdapter`` is the Interactive Brokers implementation::

    DataManager ── plan_requests(range) ──► provider: the requests it would send (a fixed grid)
                ── fetch_historical_data(one planned request) ──► bars (pandas, UTC index)
                ◄─ DataProviderError(kind=DataErrorKind...) ── the provider's failures

Errors a provider raises are this module's ``DataProviderError`` family, never the source's
own exceptions. Each carries the data layer's own ``kind`` (a ``DataErrorKind``, set once by
the provider's error mapping), the source's error code, a hint saying what to do and, for
rate limits, when to retry. Callers (the CLI, the API's problem table) decide by ``kind``.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd

#: Columns of every bars DataFrame the data layer hands out (index: UTC DatetimeIndex).
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
#: What a provider's frames carry besides: the volume-weighted average price and the number
#: of trades (NaN / -1 where the source has none, e.g. MIDPOINT bars).
EXTRA_COLUMNS = ("wap", "bar_count")
BAR_COLUMNS = (*OHLCV_COLUMNS, *EXTRA_COLUMNS)

#: Instrument types the data layer knows (IB's names in brackets).
INSTRUMENT_TYPES = ("stock", "forex", "future", "index")


class DataErrorKind(str, enum.Enum):
    """What a provider failure means for the caller, whatever the source.

    ``UNKNOWN_SYMBOL``, ``NO_PERMISSION`` and ``INVALID_REQUEST`` fail again if repeated
    (fix the symbol, the subscriptions or the request); ``RATE_LIMITED``, ``UNAVAILABLE``,
    ``TIMEOUT`` and ``FAILED`` may pass later; ``CANCELLED`` is the caller's own doing;
    ``MISCONFIGURED`` needs the provider's settings changed.
    """

    UNKNOWN_SYMBOL = "unknown_symbol"  # the source has no such instrument (IB 200)
    NO_PERMISSION = "no_permission"  # the account may not see this data
    INVALID_REQUEST = "invalid_request"  # the request's parameters are not acceptable
    RATE_LIMITED = "rate_limited"  # the source's pacing limits were hit: retry later
    UNAVAILABLE = "unavailable"  # the source cannot be reached (down, maintenance, restart)
    TIMEOUT = "timeout"  # no answer in time
    CANCELLED = "cancelled"  # the request was cancelled
    MISCONFIGURED = "misconfigured"  # host, port or client ids are wrong or taken
    FAILED = "failed"  # anything else the source reported


#: What to do about each kind (a provider's own hint wins when it has a better one).
KIND_HINTS: dict[DataErrorKind, str] = {
    DataErrorKind.UNKNOWN_SYMBOL: "check the symbol; forex pairs are written like EUR.USD, "
                                  "other listings like VOD@LSE",
    DataErrorKind.NO_PERMISSION: "check the account's market-data subscriptions",
    DataErrorKind.INVALID_REQUEST: "check the timeframe, the range and the instrument type",
    DataErrorKind.RATE_LIMITED: "wait and retry",
    DataErrorKind.UNAVAILABLE: "wait and retry; check that the data source is running",
    DataErrorKind.TIMEOUT: "wait and retry",
    DataErrorKind.CANCELLED: "run it again if still needed",
    DataErrorKind.MISCONFIGURED: "check the provider's settings",
    DataErrorKind.FAILED: "wait and retry; if it persists, read the provider's message",
}


class DataProviderError(Exception):
    """An error from an external data provider.

    Attributes:
        message: what went wrong.
        provider: the provider's name ("IB", ...).
        error_code: the provider's own error code (IB's code; 0 when the provider has none).
        hint: what the user should do about it.
        kind: the data layer's ``DataErrorKind`` (each subclass has its default).
        retry_after: seconds to wait before retrying, when the provider knows (rate limits).
        partial: bars that did arrive before the failure, as ``(start, end, frame)`` pieces
            (each covers ``[start, end)``); callers keep them.
    """

    default_kind = DataErrorKind.FAILED

    def __init__(self, message: str, provider: str = "unknown", error_code: int | None = None,
                 hint: str = "", *, kind: DataErrorKind | str | None = None,
                 retry_after: float | None = None):
        self.message = message
        self.provider = provider
        self.error_code = error_code
        self.kind = DataErrorKind(kind) if kind is not None else self.default_kind
        self.hint = hint or KIND_HINTS[self.kind]
        self.retry_after = retry_after
        self.partial: list[tuple[datetime, datetime, pd.DataFrame]] = []
        text = f"{provider}: {message}"
        if error_code:
            text += f" (code {error_code})"
        if self.hint:
            text += f"; {self.hint}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self)._rebuild, (self.__dict__,))

    @classmethod
    def _rebuild(cls, state: dict) -> DataProviderError:
        obj = cls.__new__(cls)
        DataProviderError.__init__(obj, state["message"], state["provider"],
                                   state["error_code"], state["hint"], kind=state["kind"],
                                   retry_after=state.get("retry_after"))
        obj.__dict__.update(state)
        return obj


class DataProviderConnectionError(DataProviderError):
    """The provider cannot be reached (gateway down, not logged in, maintenance)."""

    default_kind = DataErrorKind.UNAVAILABLE


class DataProviderTimeoutError(DataProviderConnectionError):
    """The provider did not answer in time."""

    default_kind = DataErrorKind.TIMEOUT


class DataProviderCancelledError(DataProviderError):
    """The request was cancelled."""

    default_kind = DataErrorKind.CANCELLED


class DataProviderRateLimitError(DataProviderError):
    """The provider's rate limits were hit; retry after ``retry_after`` seconds."""

    default_kind = DataErrorKind.RATE_LIMITED


class DataProviderDataError(DataProviderError):
    """The request itself cannot be served (see the subclasses)."""

    default_kind = DataErrorKind.INVALID_REQUEST


class DataProviderNotFoundError(DataProviderDataError):
    """The symbol is unknown to the provider."""

    default_kind = DataErrorKind.UNKNOWN_SYMBOL


class DataProviderPermissionError(DataProviderDataError):
    """The account may not see this data (market-data subscriptions)."""

    default_kind = DataErrorKind.NO_PERMISSION


class DataProviderInvalidRequestError(DataProviderDataError):
    """The request's parameters are not acceptable (timeframe, range, ...)."""

    default_kind = DataErrorKind.INVALID_REQUEST


class DataProviderConfigError(DataProviderError):
    """The provider is misconfigured (host, port, client ids, ...)."""

    default_kind = DataErrorKind.MISCONFIGURED


@dataclass(frozen=True)
class ContractInfo:
    """What a provider knows about one symbol.

    Attributes:
        symbol: the symbol as the data layer names it ("AAPL", "EUR.USD", "VOD@LSE").
        instrument_type: one of ``INSTRUMENT_TYPES``.
        exchange, currency, description: as the provider reports them.
        time_zone: the exchange's time zone (IANA name, e.g. "America/New_York").
        trading_hours, liquid_hours: sessions as the provider reports them (IB's strings).
        sessions: the regular-hours sessions those strings list, as ``(open, close,
            trading date)``: epoch seconds (UTC) and an ISO date; several per date where the
            market has a lunch break or an overnight session. A sample of the days around
            the time it was asked (``gaps.SessionCalendar`` extends it with the calendar).
        closed_days: ISO dates the strings list as closed.
        provider_id: the provider's own contract id (IB's conId).
        extra: provider-specific fields worth keeping (``primary_exchange``,
            ``trading_class``, ...).
    """

    symbol: str
    instrument_type: str
    exchange: str = ""
    currency: str = ""
    description: str = ""
    time_zone: str = "UTC"
    trading_hours: str = ""
    liquid_hours: str = ""
    provider_id: int = 0
    sessions: tuple[tuple[int, int, str], ...] = ()
    closed_days: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_exchange(self) -> str:
        return str(self.extra.get("primary_exchange") or "")

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["sessions"] = [list(s) for s in self.sessions]
        data["closed_days"] = list(self.closed_days)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContractInfo:
        """The inverse of ``to_dict``.

        Raises:
            ValueError: not a ``to_dict`` form of this version (e.g. sessions without their
                trading dates): ask the provider again.
        """
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        sessions = []
        for item in values.get("sessions", ()):
            if len(item) != 3:
                raise ValueError("sessions without trading dates")
            sessions.append((int(item[0]), int(item[1]), str(date.fromisoformat(item[2]))))
        values["sessions"] = tuple(sessions)
        values["closed_days"] = tuple(values.get("closed_days", ()))
        return cls(**values)


class ExternalDataProvider(ABC):
    """An asynchronous source of historical OHLCV bars.

    Every method doing I/O is a coroutine. Bars come back as a DataFrame indexed by a UTC
    ``DatetimeIndex`` (the period's start, see ``timeframes``: intraday bars at their open,
    daily bars at midnight of the trading date on the exchange's clock, weekly bars at
    midnight of the week's Monday there) with ``OHLCV_COLUMNS`` (and ``EXTRA_COLUMNS`` where
    the provider has them), sorted, without duplicates. The period still in progress at the
    provider's "now" may be among them, partial (IB sends it so); ``DataManager`` never
    stores it.
    """

    #: Short name used in errors and in the store's metadata ("IB", "sim", ...).
    name: str = "provider"

    @abstractmethod
    async def fetch_historical_data(self, symbol: str, timeframe: str, start: datetime,
                                    end: datetime, instrument_type: str | None = None
                                    ) -> pd.DataFrame:
        """Bars of ``timeframe`` starting in ``[start, end)``.

        An empty frame means the provider has no bars in the range (not an error).
        The frame's ``attrs["requests"]`` says how many provider requests it took.
        Cancelling the coroutine cancels the provider's requests.

        Raises:
            DataProviderError: a subclass saying what went wrong; its ``partial`` holds the
                pieces of the range that did arrive.
        """

    async def plan_requests(self, symbol: str, timeframe: str, start: datetime,
                            end: datetime, instrument_type: str | None = None
                            ) -> list[tuple[datetime, datetime]]:
        """How ``[start, end)`` is cut into provider requests: contiguous ``(start, end)``
        pieces, the same for the same range every time, each fetched with one
        ``fetch_historical_data`` call. The default is one piece."""
        return [(start, end)]

    @abstractmethod
    async def validate_symbol(self, symbol: str, instrument_type: str | None = None) -> bool:
        """Whether the provider knows ``symbol`` (connection problems raise)."""

    @abstractmethod
    async def get_head_timestamp(self, symbol: str, timeframe: str | None = None,
                                 instrument_type: str | None = None) -> datetime | None:
        """The earliest time the provider has data for ``symbol`` (aware UTC), or None."""

    @abstractmethod
    async def get_contract_details(self, symbol: str, instrument_type: str | None = None
                                   ) -> ContractInfo:
        """The symbol's contract: type, exchange, time zone and trading hours.

        Raises:
            DataProviderNotFoundError: the symbol is unknown.
        """

    async def get_market_hours(self, symbol: str, instrument_type: str | None = None
                               ) -> dict[str, str]:
        """Time zone and trading/liquid hours of ``symbol``."""
        info = await self.get_contract_details(symbol, instrument_type)
        return {"time_zone": info.time_zone, "trading_hours": info.trading_hours,
                "liquid_hours": info.liquid_hours}

    async def get_current_time(self) -> datetime:
        """The provider's clock (aware UTC); the local clock unless the provider has one."""
        return datetime.now(timezone.utc)

    @abstractmethod
    async def health_check(self) -> dict[str, Any]:
        """``{"healthy": bool, "connected": bool, "provider": name, ...}``."""

    def get_supported_timeframes(self) -> list[str]:
        from ktrdr.data.timeframes import TIMEFRAMES

        return list(TIMEFRAMES)

    def get_supported_instruments(self) -> list[str]:
        return list(INSTRUMENT_TYPES)

    def get_provider_info(self) -> dict[str, Any]:
        """Name and where the data comes from (stored in the local files' metadata)."""
        return {"name": self.name}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and processes; the provider may not be used afterwards."""
