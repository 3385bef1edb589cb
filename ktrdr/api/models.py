"""Request and response models of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ktrdr.data.symbols import SYMBOL_PATTERN
from ktrdr.data.timeframes import TIMEFRAMES


def _utc(value: datetime | None) -> datetime | None:
    """Naive times are UTC; aware ones are converted to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, examples=["AAPL", "EUR.USD"],
                              description="IB symbol; BASE.QUOTE for a forex pair")]


#: ktrdr's timeframes, from the data layer's one list (members ``m1``, ``h1``, ``d1``...).
Timeframe = enum.Enum("Timeframe", [(t[-1] + t[:-1], t) for t in TIMEFRAMES], type=str,
                      module=__name__)
Timeframe.__doc__ = "ktrdr's timeframes."


class LoadMode(str, enum.Enum):
    """``local``: the store only; ``tail``: fetch what is newer than the store; ``backfill``:
    fetch what is older; ``full``: both, and fill gaps."""

    local = "local"
    tail = "tail"
    backfill = "backfill"
    full = "full"


class Problem(BaseModel):
    """An RFC 9457 problem (``application/problem+json``)."""

    type: str = Field(examples=["https://ktrdr.invalid/problems/unknown_symbol"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    ib_code: int | None = Field(None, description="IB's error code, when IB sent one")
    kind: str = Field(description="the error kind (see the README's error table)")
    hint: str = Field("", description="what to do about it")
    errors: list[dict] | None = Field(None, description="invalid fields (validation errors)")


class _Range(BaseModel):
    start: UtcDatetime | None = Field(None, description="first bar time (UTC if naive)")
    end: UtcDatetime | None = Field(None, description="end of the range (UTC if naive)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        return self


# --- bars --------------------------------------------------------------------------------------

class Bar(BaseModel):
    timestamp: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class BarsResponse(BaseModel):
    """Bars from the store, oldest first."""

    symbol: str
    timeframe: Timeframe
    start: datetime | None = Field(None, description="first bar's time")
    end: datetime | None = Field(None, description="last bar's time")
    count: int
    bars: list[Bar]


# --- operations --------------------------------------------------------------------------------

class LoadRequest(_Range):
    """Load one symbol's bars into the store."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"symbol": "AAPL", "timeframe": "1h", "start": "2024-05-01", "end": "2024-06-01",
         "mode": "tail"}]})

    symbol: Symbol
    timeframe: Timeframe
    mode: LoadMode = LoadMode.tail


class BackfillRequest(_Range):
    """Load many symbols' bars into the store, in parallel over the farm."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"symbols": ["AAPL", "MSFT"], "timeframe": "1d", "start": "2023-01-01",
         "end": "2024-06-01"}]})

    symbols: list[Symbol] = Field(min_length=1, max_length=500)
    timeframe: Timeframe


class OperationKind(str, enum.Enum):
    load = "load"
    backfill = "backfill"


class OperationStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (OperationStatus.succeeded, OperationStatus.failed,
                        OperationStatus.cancelled)


class Progress(BaseModel):
    done: int = Field(0, description="provider requests done (over all symbols)")
    total: int | None = Field(None, description="provider requests in all, when known")
    percent: float | None = None
    bars: int = Field(0, description="bars fetched so far (each is stored as it lands)")
    message: str = ""
    updated_at: datetime | None = None


class SymbolReport(BaseModel):
    """What one symbol's load did."""

    symbol: str
    timeframe: Timeframe
    status: Literal["succeeded", "failed"]
    rows: int = Field(0, description="stored bars in the requested range afterwards")
    start: datetime | None = Field(None, description="first stored bar in the range")
    end: datetime | None = Field(None, description="last stored bar in the range")
    requests: int = Field(0, description="provider requests (IB-legal segments) needed")
    fetched_rows: int | None = Field(None, description="bars fetched from the provider")
    gaps_left: int = Field(0, description="trading sessions still missing in the range")
    clamped_start: datetime | None = Field(
        None, description="the start was moved here: the provider has nothing earlier")
    seconds: float | None = None
    error: Problem | None = None


class LoadResult(BaseModel):
    symbols: list[SymbolReport]
    succeeded: int
    failed: int


class Operation(BaseModel):
    """A background load or backfill."""

    id: str
    kind: OperationKind
    status: OperationStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: LoadRequest | BackfillRequest
    progress: Progress
    result: LoadResult | None = None
    error: Problem | None = Field(None, description="why the operation failed or stopped")
    notice: str | None = Field(None, description="what a running operation waits for (IB's "
                                                 "maintenance), when it waits")
    href: str


class OperationList(BaseModel):
    operations: list[Operation]


# --- symbols -----------------------------------------------------------------------------------

class Session(BaseModel):
    start: datetime
    end: datetime


class SymbolInfo(BaseModel):
    """A validated symbol: its contract, trading hours and the first data IB has."""

    symbol: str
    instrument_type: str = Field(description="stock, forex, future or index")
    sec_type: str = Field("", description="IB's security type (STK, CASH, FUT, IND)")
    exchange: str
    primary_exchange: str = ""
    currency: str
    con_id: int = Field(description="IB's contract id")
    local_symbol: str = ""
    description: str = ""
    min_tick: float | None = None
    last_trade_date: str = Field("", description="futures: the expiry (YYYYMMDD)")
    time_zone: str = Field("", description="the exchange's time zone (IANA name)")
    trading_hours: str = Field("", description="IB's trading-hours string")
    liquid_hours: str = Field("", description="IB's liquid (regular) hours string")
    sessions: list[Session] = Field([], description="regular sessions of the days ahead, UTC")
    closed_days: list[str] = Field([], description="ISO dates the exchange is closed")
    head_timestamp: datetime | None = Field(None, description="earliest data IB has (UTC)")


# --- IB status and health ----------------------------------------------------------------------

class WorkerStatus(BaseModel):
    worker_id: int
    pid: int | None = None
    client_id: int
    state: str
    detail: str = ""
    in_flight: int
    served: int
    errors: int
    idle_s: float
    age_s: float
    ready_after_s: float | None = None
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    cpu_s: float | None = None


class FarmTotals(BaseModel):
    submitted: int
    completed: int
    failed: int
    cancelled: int = Field(0, description="requests cancelled by their caller (queued or at IB)")
    retried: int
    requeued: int = Field(0, description="requests put back in the queue while IB was away")
    timed_out: int
    spawned: int
    crashed: int
    idle_exits: int
    workers: int
    max_workers: int
    in_flight: int = Field(description="requests at a worker (sent to IB)")
    pending: int = Field(description="requests queued in the farm")
    shutdown: bool
    broken: str | None = None


class PacerStatus(BaseModel):
    """The shared pacer's counters (every farm on this host talking to this gateway)."""

    key: str = ""
    segment: str = ""
    users: int = 0
    open: int = Field(0, description="historical requests open now")
    max_open: int = 0
    waiting: int = Field(0, description="requests waiting for a pacing rule")
    oldest_wait: float = 0.0
    granted: int = 0
    messages: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    max_wait: float = 0.0
    rule_waits: dict[str, int] = {}
    error: str | None = None


class FarmSettings(BaseModel):
    host: str
    port: int
    max_workers: int
    client_ids: list[int] = Field(description="first and last client id the farm may use")
    idle_timeout: float
    request_timeout: float
    pacing: str


GatewayStateName = Literal["ok", "maintenance", "unreachable"]


class GatewayHealth(BaseModel):
    """The gateway as the API sees it: its port (a TCP probe) and IB behind it (the farm)."""

    host: str
    port: int
    reachable: bool = Field(description="the gateway's API port accepts connections")
    state: GatewayStateName = Field(
        "ok", description="ok; maintenance: the gateway is up but IB is away (its daily "
                          "reset), operations wait; unreachable: the port does not answer")
    checked_at: datetime | None = None
    unreachable_since: datetime | None = None
    maintenance_since: datetime | None = None
    error: str | None = None
    simulated: bool = False
    hint: str = Field("", description="what the state means for the caller")


class IbStatus(BaseModel):
    gateway: GatewayHealth
    settings: FarmSettings
    workers: list[WorkerStatus]
    farm: FarmTotals
    pacer: PacerStatus | None = None


class Health(BaseModel):
    """``ok`` when IB can be asked now; the store answers either way."""

    status: Literal["ok", "unavailable"]
    state: GatewayStateName = Field(description="why not, when not: maintenance or "
                                                "unreachable (see GatewayHealth.state)")
    gateway: GatewayHealth
    workers_connected: int = Field(description="farm workers connected to the gateway now")
    operations_running: int
    version: str
