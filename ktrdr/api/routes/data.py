"""``/data``: stored bars (JSON, Arrow IPC or Parquet) and background loads and backfills.

``GET /data/{symbol}/{timeframe}`` reads the store only (``loads.read_stored``, the
DataManager's ``load_data_async`` in ``local`` mode) and answers in the format ``Accept``
asks for; ``POST /data/load`` and ``/data/backfill`` start operations whose tasks await the
DataManager (``loads.load``, ``loads.backfill``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Annotated, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Header, Path, Query, Response

from ktrdr.api import errors, loads
from ktrdr.api.dependencies import Svc
from ktrdr.api.errors import ApiError
from ktrdr.api.models import (
    SYMBOL_PATTERN,
    BackfillRequest,
    BarsResponse,
    LoadMode,
    LoadRequest,
    LoadResult,
    Operation,
    OperationKind,
    Timeframe,
    UtcDatetime,
)
from ktrdr.api.operations import OperationContext
from ktrdr.data.external_data_interface import DataErrorKind

log = logging.getLogger(__name__)
router = APIRouter(prefix="/data", tags=["data"])

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, ARROW, PARQUET)
_WILDCARDS = ("*/*", "application/*")


def negotiate(accept: str | None) -> str:
    """The media type to answer with, by the ``Accept`` header's preferences.

    Raises:
        ApiError: ``not_acceptable`` (406) when none of JSON, Arrow or Parquet is accepted.
    """
    if not accept or not accept.strip():
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media, q = parts[0].lower(), 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and media:
            ranked.append((-q, position, media))
    for _, _, media in sorted(ranked):
        if media in MEDIA_TYPES:
            return media
        if media in _WILDCARDS:
            return JSON
    raise ApiError("not_acceptable", f"cannot answer {accept!r}")


#: The timestamp type of Arrow and Parquet bodies (Parquet has no seconds unit, so both use
#: milliseconds and read back identically).
TIMESTAMP = pa.timestamp("ms", tz="UTC")


def bars_table(frame: pd.DataFrame, symbol: str, timeframe: str) -> pa.Table:
    """The bars as an Arrow table: ``timestamp`` (UTC, ms) and float64 OHLCV columns."""
    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    columns = {"timestamp": pa.array(index.as_unit("ms"), type=TIMESTAMP)}
    for name in loads.OHLCV:
        columns[name] = pa.array(frame[name].to_numpy(dtype="float64"), type=pa.float64())
    table = pa.table(columns)
    return table.replace_schema_metadata({"symbol": symbol, "timeframe": timeframe})


def _arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _parquet_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _json_body(frame: pd.DataFrame, symbol: str, timeframe: str) -> dict[str, Any]:
    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    stamps = index.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    cols = [[None if isinstance(v, float) and math.isnan(v) else v
             for v in frame[name].astype("float64").tolist()] for name in loads.OHLCV]
    bars = [dict(zip(("timestamp", *loads.OHLCV), row, strict=True))
            for row in zip(stamps, *cols, strict=True)]
    return {"symbol": symbol, "timeframe": timeframe,
            "start": stamps[0] if stamps else None, "end": stamps[-1] if stamps else None,
            "count": len(bars), "bars": bars}


def _json_bytes(frame: pd.DataFrame, symbol: str, timeframe: str) -> bytes:
    return json.dumps(_json_body(frame, symbol, timeframe), separators=(",", ":")).encode()


_BAR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the bars: JSON by default, an Arrow IPC stream or a Parquet file on "
                         "request (Accept)",
          "content": {ARROW: {"schema": {"type": "string", "format": "binary"}},
                      PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
    **errors.responses(404, 406, s404="problem: nothing stored for the symbol and timeframe",
                       s406="problem: the Accept header names no format the API serves"),
}


@router.get("/{symbol}/{timeframe}", response_model=BarsResponse, responses=_BAR_RESPONSES,
            summary="Stored bars")
async def get_bars(
    symbol: Annotated[str, Path(pattern=SYMBOL_PATTERN, examples=["AAPL"])],
    timeframe: Annotated[Timeframe, Path(examples=["1h"])],
    svc: Svc,
    start: Annotated[UtcDatetime | None,
                     Query(description="first bar time (UTC if naive)")] = None,
    end: Annotated[UtcDatetime | None,
                   Query(description="end of the range, exclusive")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Bars from the local store only (nothing is fetched; load them with ``POST
    /data/load``). ``Accept: application/vnd.apache.arrow.stream`` answers an Arrow IPC
    stream, ``application/vnd.apache.parquet`` a Parquet file; both have a ``timestamp``
    column (UTC, milliseconds) and float64 ``open, high, low, close, volume``."""
    media = negotiate(accept)
    if start is not None and end is not None and start >= end:
        raise ApiError(DataErrorKind.INVALID_REQUEST, "start must be before end")
    symbol = symbol.upper()
    frame = await loads.read_stored(svc.manager, symbol, timeframe.value, start, end)
    if frame is None:
        raise ApiError("not_found", f"no {timeframe.value} bars of {symbol} are stored",
                       hint="load them first: POST /api/v1/data/load")
    if media == JSON:
        body = await asyncio.to_thread(_json_bytes, frame, symbol, timeframe.value)
        return Response(body, media_type=JSON)
    table = bars_table(frame, symbol, timeframe.value)
    if media == ARROW:
        body = await asyncio.to_thread(_arrow_body, table)
    else:
        body = await asyncio.to_thread(_parquet_body, table)
    return Response(body, media_type=media, headers={"X-Bar-Count": str(table.num_rows)})


_OPERATION_RESPONSES = errors.responses(
    503, s503="problem: the gateway is unreachable (modes that fetch); during IB's "
              "maintenance the operation is accepted and waits for it")


def _accepted(op: Operation, response: Response) -> Operation:
    response.headers["Location"] = op.href
    return op


@router.post("/load", response_model=Operation, status_code=202,
             responses=_OPERATION_RESPONSES, summary="Load one symbol (background operation)")
async def load(body: LoadRequest, response: Response,
               svc: Svc) -> Operation:
    """Starts a background operation and answers ``202`` with it (``Location`` is its URL);
    follow it with ``GET /operations/{id}``. Modes other than ``local`` need the gateway:
    while it is unreachable the answer is ``503`` with ``Retry-After``; during IB's daily
    maintenance the operation is accepted and continues when the maintenance ends."""
    needs_ib = body.mode is not LoadMode.local
    if needs_ib:
        await svc.availability.require(maintenance_ok=True)

    async def run(ctx: OperationContext) -> LoadResult:
        return await loads.load(svc.manager, ctx, svc.locks, body)

    op = svc.operations.start(OperationKind.load, body, run, needs_ib=needs_ib)
    return _accepted(op, response)


@router.post("/backfill", response_model=Operation, status_code=202,
             responses=_OPERATION_RESPONSES,
             summary="Load many symbols in parallel (background operation)")
async def backfill(body: BackfillRequest, response: Response,
                   svc: Svc) -> Operation:
    """Like ``/data/load`` for many symbols at once, spread over the farm's workers within
    IB's pacing limits. The result has one report per symbol; the operation fails if any
    symbol failed (the others are stored all the same)."""
    await svc.availability.require(maintenance_ok=True)

    async def run(ctx: OperationContext) -> LoadResult:
        return await loads.backfill(svc.manager, ctx, svc.locks, body)

    op = svc.operations.start(OperationKind.backfill, body, run)
    return _accepted(op, response)


__all__ = ["bars_table", "negotiate", "router"]
