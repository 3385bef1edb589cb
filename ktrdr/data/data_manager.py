"""``DataManager``: bars from the local store, with what is missing fetched from a provider.

Synchronous for its users; the provider (async) runs on one private event-loop thread. Every
operation follows the same steps:

1. check the input (symbol, timeframe, mode, range) before touching anything;
2. ask the provider's clock for "now", and the symbol's contract (trading hours) and head
   timestamp (both cached in ``symbol_cache.json``); clamp the start to the head;
3. find the missing ranges (``gaps.missing_ranges``: sessions expected and neither stored nor
   known to be empty);
4. submit every range of every symbol at once, then take the results as they complete,
   merging each into its symbol's file (atomically) as it lands;
5. report per symbol: rows, range, requests, gaps left, error, time, clamped start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

from ktrdr.data.external_data_interface import (
    OHLCV_COLUMNS,
    DataProviderError,
    ExternalDataProvider,
)
from ktrdr.data.gaps import SessionCalendar, count_missing_sessions, missing_ranges
from ktrdr.data.store import BarStore, StoredBars, merge_bars, merge_ranges, normalize_symbol
from ktrdr.data.symbol_cache import SymbolCache
from ktrdr.data.timeframes import as_utc, normalize_timeframe, segments

log = logging.getLogger(__name__)

UTC = timezone.utc
MODES = ("local", "tail", "backfill", "full")
#: A symbol's file is updated after every this many segments (they are all submitted at once).
CHUNK_SEGMENTS = 6
#: How far back ``tail`` starts when nothing is stored and no start is given.
TAIL_DEFAULT = timedelta(days=30)
#: How far back ``backfill``/``full`` go without a start date (never before the head).
BACKFILL_DEFAULT = {"1m": timedelta(days=90), "5m": timedelta(days=365),
                    "15m": timedelta(days=365), "30m": timedelta(days=2 * 365),
                    "1h": timedelta(days=2 * 365), "4h": timedelta(days=5 * 365)}


class DataError(Exception):
    """A data-layer error that is not the provider's."""


class DataNotFoundError(DataError, LookupError):
    """Nothing stored for a symbol/timeframe (in ``local`` mode)."""


class InvalidRangeError(DataError, ValueError):
    """A start/end pair that makes no range, or an unknown mode."""


@dataclass
class SymbolReport:
    """What one symbol's load or backfill did."""

    symbol: str
    timeframe: str
    rows: int = 0
    start: datetime | None = None
    end: datetime | None = None
    requests: int = 0
    gaps_left: int = 0
    error: str | None = None
    seconds: float = 0.0
    clamped_start: datetime | None = None
    fetched_rows: int = 0
    path: str | None = None
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ProgressEvent:
    """Sent to a ``progress`` callback: before fetching (``done == 0``) and per landed range."""

    symbol: str
    requests_done: int
    requests_total: int
    rows: int = 0
    error: str | None = None


@dataclass
class _Job:
    symbol: str
    timeframe: str
    instrument_type: str | None
    report: SymbolReport
    want_start: datetime | None = None  # the range the caller asked about (for the report)
    want_end: datetime | None = None
    window: tuple[datetime, datetime] | None = None  # what this run had to fill
    stored: StoredBars | None = None
    calendar: SessionCalendar | None = None
    ranges: list[tuple[datetime, datetime]] = field(default_factory=list)
    pending: int = 0
    t0: float = 0.0


def parse_time(value: Any) -> datetime | None:
    """``"2024-01-31"``, ``"2024-01-31T14:30"``, a datetime or Timestamp -> aware UTC."""
    if value is None or value == "":
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise InvalidRangeError(f"unreadable date {value!r}: {exc}") from None
    if stamp is pd.NaT:
        raise InvalidRangeError(f"unreadable date {value!r}")
    return as_utc(stamp.to_pydatetime())


class _LoopThread:
    """One asyncio loop on a daemon thread; coroutines go in, concurrent futures come out."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ktrdr-data-loop",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class DataManager:
    """Bars from the local store, filled from an ``ExternalDataProvider``.

    Args:
        data_dir: where the Parquet datasets live: a path or a URL such as
            ``s3://bucket/prefix`` (default ``KTRDR_DATA_DIR`` or ``./data``); the bars go to
            the dataset of the provider's source (``BarStore.for_provider``).
        provider: the source of missing bars; by default an ``IbDataAdapter`` configured
            from the environment (``IB_HOST``/``IB_PORT``; ``IB_GATEWAY=sim`` starts an
            embedded simulated gateway), created on first need.
        now: a clock returning an aware datetime; by default the provider's clock.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None,
                 provider: ExternalDataProvider | None = None, *,
                 now: Callable[[], datetime] | None = None):
        self.store = BarStore.for_provider(data_dir, provider)
        self.data_dir = self.store.data_dir
        self.cache = SymbolCache(self.store)
        self._provider = provider
        self._owned: Any = None  # what we started for the default provider
        self._now = now
        self._loop: _LoopThread | None = None
        self.store.clean_temporary()

    # ----------------------------------------------------------------- plumbing

    @property
    def provider(self) -> ExternalDataProvider:
        if self._provider is None:
            if os.environ.get("IB_GATEWAY", "").lower() == "sim":
                from ktrdr.sim import EmbeddedSim

                self._owned = EmbeddedSim().start()
                self._provider = self._owned.provider()
            else:
                from ktrdr.data.ib_data_adapter import IbDataAdapter

                self._provider = IbDataAdapter()
                self._owned = self._provider
        return self._provider

    def _run(self, coro: Coroutine) -> Any:
        if self._loop is None:
            self._loop = _LoopThread()
        return self._loop.run(coro)

    def _submit(self, coro: Coroutine) -> concurrent.futures.Future:
        if self._loop is None:
            self._loop = _LoopThread()
        return self._loop.submit(coro)

    def close(self) -> None:
        """Stop the provider this manager started (if any) and the loop thread."""
        if self._owned is not None:
            owned, self._owned = self._owned, None
            if hasattr(owned, "stop"):
                owned.stop()
            else:
                self._run(owned.close())
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self.store.close()

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def now(self) -> datetime:
        """"Now" as the provider sees it (or the clock given to the constructor)."""
        if self._now is not None:
            return as_utc(self._now())
        return self._run(self.provider.get_current_time())

    # ----------------------------------------------------------------- metadata

    async def _contract(self, symbol: str, instrument_type: str | None):
        info = self.cache.contract(symbol)
        if info is None or (instrument_type and info.instrument_type != instrument_type):
            info = await self.provider.get_contract_details(symbol, instrument_type)
            self.cache.set_contract(symbol, info)
        return info

    async def _head(self, symbol: str, instrument_type: str | None) -> datetime | None:
        head = self.cache.head(symbol)
        if head is False:
            head = await self.provider.get_head_timestamp(symbol, None, instrument_type)
            self.cache.set_head(symbol, head)
        return head

    async def _prepare(self, job: _Job, need_head: bool) -> tuple[Any, datetime | None]:
        info = await self._contract(job.symbol, job.instrument_type)
        head = await self._head(job.symbol, info.instrument_type) if need_head else None
        return info, head

    # ----------------------------------------------------------------- public API

    def load_data(self, symbol: str, timeframe: str, start_date: Any = None,
                  end_date: Any = None, mode: str = "local",
                  instrument_type: str | None = None) -> pd.DataFrame:
        """Bars of ``symbol`` in ``[start_date, end_date)`` (UTC index; open, high, low,
        close, volume), after fetching what ``mode`` asks for:

        * ``local``: the store only;
        * ``tail``: from the last stored bar (or ``start_date``, or 30 days back) to now;
        * ``backfill``: from ``start_date`` (default: the timeframe's usual depth, never
          before the head timestamp) up to the first stored bar;
        * ``full``: every missing stretch of ``[start_date, end_date)``.

        ``frame.attrs`` holds ``clamped_start`` (when the start was moved to the head
        timestamp), ``requests`` and ``gaps_left``.

        Raises:
            InvalidSymbolError, TimeframeError, InvalidRangeError: bad input (nothing done).
            DataCorruptError: the stored file is unreadable (it is left alone).
            DataNotFoundError: ``local`` mode and nothing stored.
            DataProviderError: the provider failed (unknown symbol, connection, ...).
        """
        symbol, timeframe, start, end = self._check(symbol, timeframe, start_date, end_date,
                                                    mode)
        if mode == "local":
            stored = self.store.read(symbol, timeframe, columns=OHLCV_COLUMNS)
            if stored.frame.empty:
                raise DataNotFoundError(
                    f"no {timeframe} data stored for {symbol} in {self.data_dir}; load it "
                    f"with mode='tail' or 'full' (ktrdr data load {symbol} {timeframe} "
                    f"--mode full)")
            return _slice(stored.frame, start, end)
        [report] = self._sync([symbol], timeframe, start, end, mode, instrument_type, None)
        if report.exception is not None:
            raise report.exception
        frame = _slice(self.store.read(symbol, timeframe).frame, start, end)
        frame.attrs.update(clamped_start=report.clamped_start, requests=report.requests,
                           gaps_left=report.gaps_left)
        return frame

    def backfill(self, symbols: Iterable[str], timeframe: str, start_date: Any = None,
                 end_date: Any = None, progress: Callable[[ProgressEvent], None] | None = None,
                 instrument_type: str | None = None) -> list[SymbolReport]:
        """Fill every missing stretch of ``[start_date, end_date)`` for many symbols at once.

        All missing segments of all symbols are submitted together; each symbol's file is
        updated as its ranges land; a failing symbol does not stop the others; a re-run
        fetches only what is still missing. Returns one report per symbol (in input order).

        Raises:
            TimeframeError, InvalidRangeError: bad timeframe or range (nothing done).
        """
        symbols = list(dict.fromkeys(s.strip().upper() for s in symbols))
        timeframe = normalize_timeframe(timeframe)
        start, end = parse_time(start_date), parse_time(end_date)
        _check_range(start, end)
        return self._sync(symbols, timeframe, start, end, "full", instrument_type, progress)

    def find_gaps(self, symbol: str, timeframe: str, start_date: Any = None,
                  end_date: Any = None, instrument_type: str | None = None
                  ) -> list[tuple[datetime, datetime]]:
        """Missing ranges of ``[start_date, end_date)`` (default: the stored span to now)."""
        symbol, timeframe, start, end = self._check(symbol, timeframe, start_date, end_date,
                                                    "full")
        stored = self.store.read(symbol, timeframe)
        now = self.now()
        info = self._run(self._contract(symbol, instrument_type))
        if start is None:
            start = stored.frame.index[0].to_pydatetime() if len(stored.frame) else \
                now - TAIL_DEFAULT
        end = min(end or now, now)
        return missing_ranges(SessionCalendar(info), timeframe, start, end, now,
                              stored.frame.index, stored.fetched)

    def get_data_summary(self, symbol: str, timeframe: str) -> dict[str, Any]:
        """Rows, first and last bar, source and fetch time of a stored file."""
        symbol, timeframe = normalize_symbol(symbol), normalize_timeframe(timeframe)
        stored = self.store.read(symbol, timeframe)
        frame = stored.frame
        return {"symbol": symbol, "timeframe": timeframe, "rows": len(frame),
                "start": frame.index[0] if len(frame) else None,
                "end": frame.index[-1] if len(frame) else None,
                "source": stored.meta.get("source"), "fetched_at": stored.meta.get("fetched_at"),
                "gateway": stored.meta.get("gateway"),
                "path": str(self.store.path(symbol, timeframe))}

    # ----------------------------------------------------------------- the engine

    def _check(self, symbol: str, timeframe: str, start_date: Any, end_date: Any, mode: str):
        symbol = normalize_symbol(symbol)
        timeframe = normalize_timeframe(timeframe)
        if mode not in MODES:
            raise InvalidRangeError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        start, end = parse_time(start_date), parse_time(end_date)
        _check_range(start, end)
        self.store.path(symbol, timeframe)  # the path check, before anything else
        return symbol, timeframe, start, end

    def _sync(self, symbols: list[str], timeframe: str, start: datetime | None,
              end: datetime | None, mode: str, instrument_type: str | None,
              progress: Callable[[ProgressEvent], None] | None) -> list[SymbolReport]:
        jobs: list[_Job] = []
        for symbol in symbols:
            job = _Job(symbol, timeframe, instrument_type, SymbolReport(symbol, timeframe))
            job.t0 = time.monotonic()
            jobs.append(job)
            try:
                job.symbol = normalize_symbol(symbol)
                job.report.symbol = job.symbol
                job.report.path = str(self.store.path(job.symbol, timeframe))
                job.stored = self.store.read(job.symbol, timeframe)
            except Exception as exc:
                _fail(job, exc)
        live = [j for j in jobs if j.report.ok]
        if live:
            now = self.now()
            need_head = mode in ("backfill", "full") or start is not None
            prepared = self._run(_gather({j.symbol: self._prepare(j, need_head) for j in live}))
            for job in live:
                outcome = prepared[job.symbol]
                if isinstance(outcome, BaseException):
                    _fail(job, outcome)
                    continue
                info, head = outcome
                job.instrument_type = info.instrument_type
                job.calendar = SessionCalendar(info)
                self._plan(job, mode, start, end, now, head)
            self._fetch([j for j in live if j.report.ok], progress)
            for job in live:
                self._finish(job, now)
        for job in jobs:
            job.report.seconds = round(time.monotonic() - job.t0, 3)
        return [j.report for j in jobs]

    def _plan(self, job: _Job, mode: str, start: datetime | None, end: datetime | None,
              now: datetime, head: datetime | None) -> None:
        index = job.stored.frame.index
        first = index[0].to_pydatetime() if len(index) else None
        last = index[-1].to_pydatetime() if len(index) else None
        end_eff = min(end or now, now)
        if mode == "tail":
            if last is not None:
                begin = max(start, last) if start else last
            else:
                begin = start or now - TAIL_DEFAULT
        else:
            begin = start or max(head or datetime.min.replace(tzinfo=UTC),
                                 now - BACKFILL_DEFAULT.get(job.timeframe, timedelta(days=36500)))
            if mode == "backfill" and first is not None:
                end_eff = min(end_eff, first)
        if head is not None and begin < head:
            log.warning("%s %s: start %s is before the first available data (%s); starting "
                        "there", job.symbol, job.timeframe, begin, head)
            job.report.clamped_start = head
            begin = head
        job.want_start = max(start, head) if start and head else start
        job.want_end = min(end or now, now)
        if begin >= end_eff:
            return
        job.window = (begin, end_eff)
        job.ranges = [chunk for a, b in missing_ranges(job.calendar, job.timeframe, begin,
                                                       end_eff, now, index, job.stored.fetched)
                      for chunk in _chunks(job.timeframe, a, b)]
        job.report.requests = sum(len(segments(job.timeframe, a, b)) for a, b in job.ranges)

    def _fetch(self, jobs: list[_Job], progress: Callable[[ProgressEvent], None] | None) -> None:
        futures: dict[concurrent.futures.Future, tuple[_Job, datetime, datetime, int]] = {}
        for job in jobs:
            if progress is not None:
                progress(ProgressEvent(job.symbol, 0, job.report.requests))
            for a, b in job.ranges:
                coro = self.provider.fetch_historical_data(job.symbol, job.timeframe, a, b,
                                                           job.instrument_type)
                futures[self._submit(coro)] = (job, a, b, len(segments(job.timeframe, a, b)))
                job.pending += 1
        done_requests: dict[str, int] = {}
        for future in concurrent.futures.as_completed(futures):
            job, a, b, count = futures[future]
            job.pending -= 1
            done_requests[job.symbol] = done_requests.get(job.symbol, 0) + count
            rows, error = 0, None
            try:
                frame = future.result()
                rows = len(frame)
                self._save(job, frame, a, b)
            except Exception as exc:
                error = str(exc)
                if job.report.ok:
                    _fail(job, exc)
                log.warning("%s %s %s..%s failed: %s", job.symbol, job.timeframe, a, b, exc)
            if progress is not None:
                progress(ProgressEvent(job.symbol, done_requests[job.symbol],
                                       job.report.requests, rows, error))

    def _save(self, job: _Job, frame: pd.DataFrame, start: datetime, end: datetime) -> None:
        stored = job.stored
        stored.frame = merge_bars(stored.frame, frame)
        stored.fetched = merge_ranges([*stored.fetched,
                                       (int(start.timestamp()), int(end.timestamp()))])
        info = self.provider.get_provider_info()
        stored.meta.update(source=info.get("source", info.get("name")),
                           provider=info.get("name"), gateway=info.get("gateway"),
                           fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
                           instrument_type=job.instrument_type)
        self.store.write(job.symbol, job.timeframe, stored.frame, stored.fetched, stored.meta)
        job.report.fetched_rows += len(frame)

    def _finish(self, job: _Job, now: datetime) -> None:
        if job.stored is None:
            return
        frame = _slice(job.stored.frame, job.want_start, job.want_end)
        job.report.rows = len(frame)
        if len(frame):
            job.report.start = frame.index[0].to_pydatetime()
            job.report.end = frame.index[-1].to_pydatetime()
        if job.calendar is not None and job.window is not None:
            job.report.gaps_left = count_missing_sessions(
                job.calendar, job.timeframe, *job.window, now, job.stored.frame.index,
                job.stored.fetched)


def _chunks(timeframe: str, start: datetime, end: datetime,
            size: int = CHUNK_SEGMENTS) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at segment boundaries into pieces of at most ``size`` segments,
    so a long backfill is saved as it goes."""
    ends = [seg.end for seg in segments(timeframe, start, end)]
    out, begin = [], start
    for k in range(size - 1, len(ends), size):
        if ends[k] < end:
            out.append((begin, ends[k]))
            begin = ends[k]
    out.append((begin, end))
    return out


async def _gather(coros: dict[str, Coroutine]) -> dict[str, Any]:
    results = await asyncio.gather(*coros.values(), return_exceptions=True)
    return dict(zip(coros, results, strict=True))


def _fail(job: _Job, exc: BaseException) -> None:
    job.report.error = str(exc)
    job.report.exception = exc
    if not isinstance(exc, (DataProviderError, DataError, ValueError, OSError)):
        log.error("%s: unexpected %s", job.symbol, type(exc).__name__, exc_info=exc)


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidRangeError(f"end {end:%Y-%m-%d %H:%M} is not after start "
                                f"{start:%Y-%m-%d %H:%M}; give an end date later than the start")


def _slice(frame: pd.DataFrame, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """The bars in ``[start, end)`` (the index is sorted), open..volume only, as a new frame."""
    i = frame.index.searchsorted(start, "left") if start is not None else 0
    j = frame.index.searchsorted(end, "left") if end is not None else len(frame)
    return frame.iloc[i:j][list(OHLCV_COLUMNS)].copy(deep=False)


__all__ = ["DataError", "DataManager", "DataNotFoundError", "InvalidRangeError",
           "ProgressEvent", "SymbolReport", "parse_time"]
