"""Loads, backfills and store reads: the API's calls into the DataManager's async core.

Everything here runs on the server's event loop and awaits the DataManager's coroutines (the
DataManager reads and writes Parquet on threads of its own)::

    operation task ──► load(manager, ctx, locks, body) | backfill(...)
        KeyLocks.hold((symbol, timeframe), ...)      one operation per file at a time; the
        │                                            next one on the same file waits here
        await manager.load_data_async(..., progress=sink)    (tail, backfill, local)
              manager.backfill_async(..., progress=sink)     (full, and many symbols)
        │     ProgressSink(ProgressEvent) ──► ctx.progress(done, total, "AAPL: 12/40 ...")
        ▼
    LoadResult: one SymbolReport per symbol (the DataManager's report, as the API's model)

    GET /data/{symbol}/{timeframe} ──► read_stored ──► manager.load_data_async(mode="local")

Two operations never work on the same symbol and timeframe at once: each merges what it
fetched into the file it read, so concurrent writers of one file would drop each other's
bars. Cancelling the operation's task cancels the awaited DataManager call: it cancels the
farm requests still queued or in flight, saves what had landed and re-raises; the locks are
released only then, so the next operation sees the saved file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import datetime

import pandas as pd

from ktrdr.api.errors import to_api_error
from ktrdr.api.models import (
    BackfillRequest,
    LoadMode,
    LoadRequest,
    LoadResult,
    Problem,
    SymbolReport,
)
from ktrdr.api.operations import OperationContext
from ktrdr.data.data_manager import DataManager, DataNotFoundError, ProgressEvent
from ktrdr.data.data_manager import SymbolReport as DataSymbolReport
from ktrdr.data.external_data_interface import OHLCV_COLUMNS

log = logging.getLogger(__name__)

OHLCV = OHLCV_COLUMNS


class KeyLocks:
    """One asyncio lock per ``(symbol, timeframe)``; ``hold`` takes several in a fixed order
    (no deadlock between two backfills sharing symbols)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[tuple[str, str]]) -> AsyncIterator[None]:
        held: list[asyncio.Lock] = []
        try:
            for key in sorted(set(keys)):
                lock = self._locks.setdefault(key, asyncio.Lock())
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()

    def busy(self, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The keys another operation holds now."""
        return [k for k in keys if k in self._locks and self._locks[k].locked()]


class ProgressSink:
    """Adds up the DataManager's per-symbol ``ProgressEvent``s into the operation's progress
    (requests done of total over all symbols, once every symbol has said its total)."""

    def __init__(self, ctx: OperationContext, symbols: int):
        self.ctx = ctx
        self.symbols = symbols
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.rows = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.done[event.symbol] = event.requests_done
        self.total[event.symbol] = event.requests_total
        self.rows += int(event.rows or 0)
        text = f"{event.symbol}: {event.requests_done}/{event.requests_total} requests"
        if event.error:
            text += f" ({event.error})"
        self.ctx.progress(*self.counts(), f"{text}; {self.rows:,} bars fetched", self.rows)

    def counts(self) -> tuple[int, int | None]:
        """Requests done, and in all (None until every symbol has reported)."""
        known = len(self.total) >= self.symbols
        return sum(self.done.values()), sum(self.total.values()) if known else None

    def stopped(self) -> None:
        """Say what a cancelled (or stopped) operation left behind."""
        self.ctx.progress(*self.counts(), f"stopped: the {self.rows:,} bars fetched are "
                                          f"stored; run it again to fetch the rest")


@contextlib.asynccontextmanager
async def _files(ctx: OperationContext, locks: KeyLocks, keys: list[tuple[str, str]],
                 sink: ProgressSink) -> AsyncIterator[None]:
    """Hold the files' locks (saying so while another operation has them); on cancellation
    say what was kept."""
    busy = locks.busy(keys)
    if busy:
        ctx.progress(0, None, "waiting for another operation on "
                              + ", ".join(f"{s} {t}" for s, t in busy))
    async with locks.hold(keys):
        try:
            yield
        except asyncio.CancelledError:
            sink.stopped()
            raise


async def load(manager: DataManager, ctx: OperationContext, locks: KeyLocks,
               body: LoadRequest) -> LoadResult:
    """One symbol: ``full`` through ``backfill_async`` (a report even when it fails), the
    other modes through ``load_data_async``."""
    symbol, timeframe = body.symbol.upper(), body.timeframe.value
    sink = ProgressSink(ctx, 1)
    async with _files(ctx, locks, [(symbol, timeframe)], sink):
        ctx.progress(0, None, f"loading {symbol} {timeframe} ({body.mode.value})")
        if body.mode is LoadMode.full:
            reports = await manager.backfill_async([symbol], timeframe, body.start, body.end,
                                                   progress=sink)
            if reports and reports[0].exception is not None:
                raise reports[0].exception
            result = _result([report_model(r, timeframe) for r in reports])
        else:
            loop = asyncio.get_running_loop()
            began = loop.time()
            frame = await manager.load_data_async(symbol, timeframe, body.start, body.end,
                                                  mode=body.mode.value, progress=sink)
            result = _result([_frame_report(frame, symbol, timeframe, loop.time() - began,
                                            sink.rows)])
    done, total = sink.counts()
    ctx.progress(done, done if total is None else total, "done")
    return result


async def backfill(manager: DataManager, ctx: OperationContext, locks: KeyLocks,
                   body: BackfillRequest) -> LoadResult:
    """Many symbols at once through ``backfill_async``; one report per symbol."""
    symbols = list(dict.fromkeys(s.upper() for s in body.symbols))
    timeframe = body.timeframe.value
    sink = ProgressSink(ctx, len(symbols))
    async with _files(ctx, locks, [(s, timeframe) for s in symbols], sink):
        ctx.progress(0, None, f"backfilling {len(symbols)} symbols ({timeframe})")
        reports = await manager.backfill_async(symbols, timeframe, body.start, body.end,
                                               progress=sink)
    return _result([report_model(r, timeframe) for r in reports])


async def read_stored(manager: DataManager, symbol: str, timeframe: str,
                      start: datetime | None, end: datetime | None) -> pd.DataFrame | None:
    """Stored bars in ``[start, end)``; None when nothing is stored at all."""
    try:
        return await manager.load_data_async(symbol, timeframe, start, end, mode="local")
    except DataNotFoundError:
        return None


# ----------------------------------------------------------------- reports


def _problem(exc: BaseException | None, text: str | None) -> Problem | None:
    if exc is None and text is None:
        return None
    err = to_api_error(exc if exc is not None else RuntimeError(text))
    return Problem(**err.body(None))


def report_model(report: DataSymbolReport, timeframe: str) -> SymbolReport:
    """A ``DataManager`` ``SymbolReport`` as the API's model."""
    return SymbolReport(
        symbol=report.symbol, timeframe=timeframe,
        status="succeeded" if report.ok else "failed",
        rows=report.rows, start=report.start, end=report.end, requests=report.requests,
        fetched_rows=report.fetched_rows, gaps_left=report.gaps_left,
        clamped_start=report.clamped_start, seconds=report.seconds,
        error=None if report.ok else _problem(report.exception, report.error))


def _frame_report(frame: pd.DataFrame, symbol: str, timeframe: str, seconds: float,
                  fetched_rows: int) -> SymbolReport:
    attrs = frame.attrs
    return SymbolReport(
        symbol=symbol, timeframe=timeframe, status="succeeded", rows=len(frame),
        start=frame.index[0].to_pydatetime() if len(frame) else None,
        end=frame.index[-1].to_pydatetime() if len(frame) else None,
        requests=int(attrs.get("requests") or 0), gaps_left=int(attrs.get("gaps_left") or 0),
        fetched_rows=fetched_rows, clamped_start=attrs.get("clamped_start"),
        seconds=round(seconds, 3))


def _result(reports: list[SymbolReport]) -> LoadResult:
    failed = sum(1 for r in reports if r.status != "succeeded")
    return LoadResult(symbols=reports, succeeded=len(reports) - failed, failed=failed)


__all__ = ["KeyLocks", "OHLCV", "ProgressSink", "backfill", "load", "read_stored",
           "report_model"]
