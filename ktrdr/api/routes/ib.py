"""``/health``, ``/ib/status`` and ``/symbols/{symbol}``: IB as the API sees it.

``/health`` and ``/ib/status`` read ``Availability`` (the gateway's port and, behind it, IB:
ok, maintenance, unreachable) and the adapter's ``farm_status()``; ``/symbols`` asks the
adapter (contract details and head timestamp through the farm) and keeps the answer a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from ktrdr.api import errors
from ktrdr.api.dependencies import Svc, version
from ktrdr.api.errors import ApiError
from ktrdr.api.models import (
    SYMBOL_PATTERN,
    FarmSettings,
    FarmTotals,
    Health,
    IbStatus,
    PacerStatus,
    Session,
    SymbolInfo,
    Timeframe,
    WorkerStatus,
)
from ktrdr.data.external_data_interface import DataErrorKind

log = logging.getLogger(__name__)
router = APIRouter(tags=["ib"])

#: Seconds a symbol's answer is reused.
SYMBOL_TTL = 300.0


@router.get("/health", response_model=Health, summary="Can IB be asked now?",
            responses={503: {"model": Health, "description": "IB is in its daily maintenance "
                                                             "or the gateway is unreachable"}})
async def health(svc: Svc) -> JSONResponse:
    """``200`` with ``status: ok`` (``state: ok``) when the gateway's API port answers and IB
    is behind it; else ``503`` with ``status: unavailable``, ``Retry-After`` and ``state``
    saying why: ``maintenance`` (IB's daily reset: the gateway is up, IB is away; running
    operations wait for it and continue) or ``unreachable`` (the port does not answer: check
    IB Gateway/TWS). Stored data can be read either way."""
    gateway = await svc.availability.check()  # it reads the farm's status too
    workers = (svc.availability.farm or {}).get("workers") or []
    connected = sum(1 for w in workers if w["state"] == "ready")
    ok = gateway.state == "ok"
    body = Health(status="ok" if ok else "unavailable", state=gateway.state, gateway=gateway,
                  workers_connected=connected, operations_running=svc.operations.running(),
                  version=version())
    headers = {}
    if not ok:
        seconds = svc.settings.retry_after_maintenance if gateway.state == "maintenance" \
            else svc.settings.retry_after_unavailable
        headers["Retry-After"] = str(seconds)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503,
                        headers=headers)


@router.get("/ib/status", response_model=IbStatus,
            summary="The connection farm: workers, client ids, pacing")
async def ib_status(svc: Svc) -> IbStatus:
    """Each worker process (pid, client id, state, requests in flight and served, memory),
    the farm's totals, and the shared pacer's counters (open requests, waits per rule)."""
    gateway = await svc.availability.check()  # it reads the farm's status too
    status = svc.availability.farm
    if status is None:
        raise ApiError("shutdown", "the connection farm is not running")
    return IbStatus(
        gateway=gateway,
        settings=FarmSettings(**svc.adapter.settings()),
        workers=[WorkerStatus(**w) for w in status["workers"]],
        farm=FarmTotals(**status["farm"]),
        pacer=PacerStatus(**status["pacer"]) if status.get("pacer") else None,
    )


@router.get("/symbols/{symbol}", response_model=SymbolInfo,
            summary="Validate a symbol; its contract, trading hours and first data",
            responses=errors.responses(403, 404, 429, 503, 504))
async def symbol_info(
    symbol: Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["AAPL", "EUR.USD"])],
    svc: Svc,
    instrument_type: Annotated[str | None, Query(
        description="stock, forex, future or index (guessed when left out)")] = None,
    timeframe: Annotated[Timeframe | None,
                         Query(description="head timestamp for this timeframe")] = None,
) -> SymbolInfo:
    """``404`` (kind ``unknown_symbol``, IB code 200) when IB does not know the symbol;
    ``503`` while the gateway is unreachable or IB is in its daily maintenance (kind
    ``maintenance``). Answers are kept for ``SYMBOL_TTL`` seconds (IB paces head-timestamp
    requests)."""
    key = (symbol.upper(), instrument_type, timeframe)
    cached = svc.symbols.get(key)
    if cached is not None and time.monotonic() - cached[0] < SYMBOL_TTL:
        return cached[1]
    await svc.availability.require()

    async def ask() -> tuple[Any, Any]:
        info = await svc.adapter.get_contract_details(symbol, instrument_type)
        head = await svc.adapter.get_head_timestamp(
            symbol, timeframe.value if timeframe else None, info.instrument_type)
        return info, head

    limit = svc.settings.request_timeout
    try:
        info, head = await asyncio.wait_for(ask(), limit)
    except asyncio.TimeoutError:
        raise ApiError(DataErrorKind.TIMEOUT, f"IB did not answer within {limit:g} s (pacing "
                       f"waits and retries included)") from None
    except Exception as exc:
        raise await svc.operations.explain(exc) from exc
    extra = dict(info.extra or {})
    min_tick = extra.get("min_tick")
    answer = SymbolInfo(
        symbol=info.symbol, instrument_type=info.instrument_type,
        sec_type=str(extra.get("sec_type") or ""), exchange=info.exchange,
        primary_exchange=str(extra.get("primary_exchange") or ""), currency=info.currency,
        con_id=info.provider_id, local_symbol=str(extra.get("local_symbol") or ""),
        description=info.description, min_tick=float(min_tick) if min_tick else None,
        last_trade_date=str(extra.get("last_trade_date") or ""), time_zone=info.time_zone,
        trading_hours=info.trading_hours, liquid_hours=info.liquid_hours,
        sessions=[Session(start=_utc(a), end=_utc(b)) for a, b, _ in info.sessions],
        closed_days=list(info.closed_days), head_timestamp=head)
    if len(svc.symbols) > 1000:
        svc.symbols.clear()
    svc.symbols[key] = (time.monotonic(), answer)
    return answer


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
