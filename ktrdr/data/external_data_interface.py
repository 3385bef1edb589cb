"""The interface between ktrdr's data layer and any source of historical bars.

The data layer (``DataManager``, the CLI, the HTTP API) talks to a market-data source only
through ``ExternalDataProvider``; ``IbDataAdapter`` is the Interactive Brokers implementation.
Errors a provider raises are this module's ``DataProviderError`` family, never the source's
own exceptions, and each carries the source's error code and a hint saying what to do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

#: Columns of every bars DataFrame the data layer hands out (index: UTC DatetimeIndex).
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")

#: Instrument types the data layer knows (IB's names in brackets).
INSTRUMENT_TYPES = ("stock", "forex", "future", "index")


class DataProviderError(Exception):
    """An error from an external data provider.

    Attributes:
        message: what went wrong.
        provider: the provider's name ("IB", ...).
        error_code: the provider's own error code (IB's code; 0 when the provider has none).
        hint: what the user should do about it.
    """

    def __init__(self, message: str, provider: str = "unknown", error_code: int | None = None,
                 hint: str = ""):
        self.message = message
        self.provider = provider
        self.error_code = error_code
        self.hint = hint
        text = f"{provider}: {message}"
        if error_code:
            text += f" (code {error_code})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self)._rebuild, (self.__dict__,))

    @classmethod
    def _rebuild(cls, state: dict) -> DataProviderError:
        obj = cls.__new__(cls)
        DataProviderError.__init__(obj, state["message"], state["provider"],
                                   state["error_code"], state["hint"])
        obj.__dict__.update(state)
        return obj


class DataProviderConnectionError(DataProviderError):
    """The provider cannot be reached (gateway down, not logged in, timed out)."""


class DataProviderRateLimitError(DataProviderError):
    """The provider's rate limits were hit; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, provider: str = "unknown", error_code: int | None = None,
                 hint: str = "", retry_after: float | None = None):
        super().__init__(message, provider, error_code, hint)
        self.retry_after = retry_after


class DataProviderDataError(DataProviderError):
    """The request itself cannot be served (see the subclasses)."""


class DataProviderNotFoundError(DataProviderDataError):
    """The symbol is unknown to the provider."""


class DataProviderPermissionError(DataProviderDataError):
    """The account may not see this data (market-data subscriptions)."""


class DataProviderInvalidRequestError(DataProviderDataError):
    """The request's parameters are not acceptable (timeframe, range, ...)."""


class DataProviderConfigError(DataProviderError):
    """The provider is misconfigured (host, port, client ids, ...)."""


@dataclass(frozen=True)
class ContractInfo:
    """What a provider knows about one symbol.

    Attributes:
        symbol: the symbol as the data layer names it ("AAPL", "EUR.USD").
        instrument_type: one of ``INSTRUMENT_TYPES``.
        exchange, currency, description: as the provider reports them.
        time_zone: the exchange's time zone (IANA name, e.g. "America/New_York").
        trading_hours, liquid_hours: sessions as the provider reports them (IB's strings).
        sessions: the regular-hours sessions those strings list, as ``(open, close)`` epoch
            seconds (UTC); a sample of the week ahead that ``gaps.SessionCalendar`` extends.
        closed_days: ISO dates the strings list as closed.
        provider_id: the provider's own contract id (IB's conId).
        extra: provider-specific fields worth keeping.
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
    sessions: tuple[tuple[int, int], ...] = ()
    closed_days: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["sessions"] = [list(s) for s in self.sessions]
        data["closed_days"] = list(self.closed_days)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContractInfo:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["sessions"] = tuple((int(a), int(b)) for a, b in values.get("sessions", ()))
        values["closed_days"] = tuple(values.get("closed_days", ()))
        return cls(**values)


class ExternalDataProvider(ABC):
    """An asynchronous source of historical OHLCV bars.

    Every method is a coroutine. Bars come back as a DataFrame indexed by a UTC
    ``DatetimeIndex`` (bar start times) with ``OHLCV_COLUMNS``, sorted, without duplicates.
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

        Raises:
            DataProviderError: a subclass saying what went wrong.
        """

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
