"""The API's use of the (synchronous) ``DataManager``: store reads, loads and backfills.

Loads and backfills run on the operations' threads. Two operations never work on the same
symbol and timeframe at once (``KeyLocks``): the DataManager merges each file it loaded
earlier, so concurrent writers of one file would drop each other's bars. A lock is held until
the DataManager call has really returned, even when the operation was cancelled or failed
earlier. Progress comes from the DataManager's ``ProgressEvent``s; a cancelled operation's
provider requests are cancelled (``cancel.CancellableProvider``) and its DataManager call
stops at the next progress event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import pandas as pd

from ktrdr.api.cancel import CancellableProvider
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

log = logging.getLogger(__name__)

OHLCV = ("open", "high", "low", "close", "volume")


class KeyLocks:
    """One asyncio lock per key; ``acquire`` takes several in a fixed order (no deadlock)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def acquire(self, keys: Iterable[tuple[str, str]]) -> list[asyncio.Lock]:
        held: list[asyncio.Lock] = []
        try:
            for key in sorted(set(keys)):
                lock = self._locks.setdefault(key, asyncio.Lock())
                await lock.acquire()
                held.append(lock)
        except BaseException:
            release(held)
            raise
        return held

    def busy(self, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [k for k in keys if k in self._locks and self._locks[k].locked()]


def release(locks: list[asyncio.Lock]) -> None:
    for lock in reversed(locks):
        if lock.locked():
            lock.release()


async def locked_call(ctx: OperationContext, locks: KeyLocks, keys: list[tuple[str, str]],
                      manager: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking ``fn`` (a ``manager`` method) on the operations' pool holding ``keys``.

    A cancelled caller returns at once; the locks stay held until ``fn`` has returned, which
    is soon: the provider requests ``fn`` made are cancelled with the operation.
    """
    busy = locks.busy(keys)
    if busy:
        ctx.progress(0, None, "waiting for another operation on "
                              + ", ".join(f"{s} {t}" for s, t in busy))
    held = await locks.acquire(keys)
    provider = getattr(manager, "provider", None)
    if isinstance(provider, CancellableProvider):
        token = ctx.cancel_event
        ctx.on_cancel(lambda: provider.cancel(token))

        def call() -> Any:
            with provider.bound(token):
                return fn(*args, **kwargs)
    else:
        def call() -> Any:
            return fn(*args, **kwargs)
    try:
        ctx.check()
        future = asyncio.ensure_future(ctx.run(call))
    except BaseException:
        release(held)
        raise

    def done(f: asyncio.Future) -> None:
        release(held)
        if not f.cancelled():
            f.exception()  # retrieved here: a cancelled or failed operation already reported

    future.add_done_callback(done)
    return await asyncio.shield(future)


async def read_stored(manager: Any, symbol: str, timeframe: str, start: datetime | None,
                      end: datetime | None) -> pd.DataFrame | None:
    """Stored bars in ``[start, end)``; None when nothing is stored at all."""
    from ktrdr.data.data_manager import DataNotFoundError

    try:
        return await asyncio.to_thread(manager.load_data, symbol, timeframe, start, end,
                                       mode="local")
    except DataNotFoundError:
        return None


def _problem(exc: BaseException | None, text: str | None) -> Problem | None:
    if exc is None and text is None:
        return None
    err = to_api_error(exc if exc is not None else RuntimeError(text))
    return Problem(**err.body(None))


def report_model(report: Any, timeframe: str) -> SymbolReport:
    """A ``DataManager`` ``SymbolReport`` as the API's model."""
    ok = getattr(report, "ok", report.error is None)
    return SymbolReport(
        symbol=report.symbol, timeframe=timeframe, status="succeeded" if ok else "failed",
        rows=report.rows, start=report.start, end=report.end, requests=report.requests,
        fetched_rows=report.fetched_rows, gaps_left=report.gaps_left,
        clamped_start=report.clamped_start, seconds=report.seconds,
        error=None if ok else _problem(report.exception, report.error))


def _frame_report(frame: pd.DataFrame, symbol: str, timeframe: str,
                  seconds: float) -> SymbolReport:
    attrs = frame.attrs
    return SymbolReport(
        symbol=symbol, timeframe=timeframe, status="succeeded", rows=len(frame),
        start=frame.index[0].to_pydatetime() if len(frame) else None,
        end=frame.index[-1].to_pydatetime() if len(frame) else None,
        requests=int(attrs.get("requests") or 0), gaps_left=int(attrs.get("gaps_left") or 0),
        fetched_rows=attrs.get("fetched_rows"), clamped_start=attrs.get("clamped_start"),
        seconds=round(seconds, 3))


def _result(reports: list[SymbolReport]) -> LoadResult:
    failed = sum(1 for r in reports if r.status != "succeeded")
    return LoadResult(symbols=reports, succeeded=len(reports) - failed, failed=failed)


class _ProgressSink:
    """Adds up the DataManager's per-symbol ``ProgressEvent``s into operation progress."""

    def __init__(self, ctx: OperationContext, symbols: int):
        self.ctx = ctx
        self.symbols = symbols
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.rows = 0

    def __call__(self, event: Any) -> None:
        self.done[event.symbol] = event.requests_done
        self.total[event.symbol] = event.requests_total
        self.rows += int(event.rows or 0)
        known = len(self.total) == self.symbols
        total = sum(self.total.values())
        done = sum(self.done.values())
        text = f"{event.symbol}: {event.requests_done}/{event.requests_total} requests"
        if event.error:
            text += f" ({event.error})"
        self.ctx.progress(done, total if known else None, f"{text}; {self.rows} bars fetched")


async def load(manager: Any, ctx: OperationContext, locks: KeyLocks,
               body: LoadRequest) -> LoadResult:
    """One symbol: ``full`` goes through ``backfill`` (progress and cancellation per
    segment); the other modes through ``load_data``."""
    symbol, timeframe = body.symbol.upper(), body.timeframe.value
    keys = [(symbol, timeframe)]
    ctx.progress(0, None, f"loading {symbol} {timeframe} ({body.mode.value})")
    if body.mode is LoadMode.full:
        sink = _ProgressSink(ctx, 1)
        reports = await locked_call(ctx, locks, keys, manager, manager.backfill, [symbol],
                                    timeframe, body.start, body.end, progress=sink)
        if reports and reports[0].exception is not None:
            raise reports[0].exception
        result = _result([report_model(r, timeframe) for r in reports])
    else:
        loop = asyncio.get_running_loop()
        began = loop.time()
        frame = await locked_call(ctx, locks, keys, manager, manager.load_data, symbol, timeframe,
                                  body.start, body.end, mode=body.mode.value)
        result = _result([_frame_report(frame, symbol, timeframe, loop.time() - began)])
    ctx.progress(1, 1, "done")
    return result


async def backfill(manager: Any, ctx: OperationContext, locks: KeyLocks,
                   body: BackfillRequest) -> LoadResult:
    """Many symbols at once through ``DataManager.backfill``; one report per symbol."""
    symbols = list(dict.fromkeys(s.upper() for s in body.symbols))
    timeframe = body.timeframe.value
    ctx.progress(0, None, f"backfilling {len(symbols)} symbols ({timeframe})")
    sink = _ProgressSink(ctx, len(symbols))
    reports = await locked_call(ctx, locks, [(s, timeframe) for s in symbols], manager,
                                manager.backfill, symbols, timeframe, body.start, body.end,
                                progress=sink)
    return _result([report_model(r, timeframe) for r in reports])
