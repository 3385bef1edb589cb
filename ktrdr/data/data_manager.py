"""``DataManager``: bars from the local store, with what is missing fetched from a provider.

An async core with blocking twins, in ib_insync's manner: ``load_data_async`` /
``load_data``, ``backfill_async`` / ``backfill``, ``find_gaps_async`` / ``find_gaps``,
``now_async`` / ``now``, ``aclose`` / ``close``. A twin is one line that runs its coroutine
(``run_sync``); inside a running event loop, await the coroutine instead. Every operation::

    check the input (symbol, timeframe, mode, range)        nothing touched on bad input
    "now" from the provider's clock; per symbol, concurrently:
        stored bars (Parquet read on a thread), contract + head timestamp (cached in
        symbol_cache.json), the start clamped to the head
    missing ranges (gaps.missing_ranges) ─► provider.plan_requests ─► one task per request,
        all symbols at once (the farm queues and paces them)
    as each request lands: drop the period still in progress at "now", keep the bars and
        the range they cover, send a ProgressEvent (per symbol: requests done / total,
        rows); a symbol's file is rewritten at most every SAVE_INTERVAL seconds (on a
        thread), and once more at the end
    report per symbol (SymbolReport): rows, range, requests, gaps left, error, time

Cancelling the task (or Ctrl-C in a twin) cancels every request still queued or in flight
(the adapter cancels their farm futures), saves what had arrived, and re-raises: a re-run
fetches only what is still missing. A failing request fails its symbol's report, never the
other requests or symbols, and what its symbol fetched otherwise is kept.

Ranges: ``start`` and ``end`` (exclusive, UTC; daily and weekly bars by their date on the
exchange's clock) bound the returned frame in every mode. What is fetched:

* ``local``: nothing;
* ``tail``: from the last stored bar (nothing stored: from ``start``, default 30 days back)
  to ``end`` (default now); a ``start`` before the first stored bar is refused (that is what
  ``full`` and ``backfill`` are for);
* ``backfill``: from ``start`` (default the timeframe's usual depth, never before the head
  timestamp) to the first stored bar (nothing stored: to ``end``);
* ``full``: every missing stretch of ``[start, end)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ktrdr.data.external_data_interface import (
    OHLCV_COLUMNS,
    ContractInfo,
    DataProviderError,
    ExternalDataProvider,
)
from ktrdr.data.gaps import SessionCalendar, count_missing_sessions, missing_ranges
from ktrdr.data.store import BarStore, StoredBars, merge_ranges
from ktrdr.data.symbol_cache import SymbolCache
from ktrdr.data.symbols import normalize_symbol
from ktrdr.data.timeframes import (
    as_utc,
    bar_labels,
    is_daily_or_longer,
    normalize_timeframe,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

UTC = timezone.utc
MODES = ("local", "tail", "backfill", "full")
#: Seconds between rewrites of one symbol's file while its requests land (the first landed
#: request is saved at once; the rest in batches, so thousands of requests do not mean
#: thousands of rewrites).
SAVE_INTERVAL = 2.0
#: Seconds a cancelled run waits for its requests to end before saving what it has.
CANCEL_GRACE = 10.0
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
    """A start/end pair that makes no range, an unknown mode, or a range a mode cannot do."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a new event loop (the blocking twins' one line).

    Raises:
        RuntimeError: called inside a running event loop; await the coroutine there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("this is the blocking form; inside a running event loop await its "
                       "*_async twin instead")


@dataclass
class SymbolReport:
    """What one symbol's load or backfill did (the HTTP API's ``SymbolReport`` is its wire
    form).

    Attributes:
        symbol, timeframe: what was loaded.
        rows: stored bars in the requested range afterwards.
        start, end: the first and last of them.
        requests: provider requests made (planned requests, plus halves of split ones).
        gaps_left: units (sessions; trading dates for 1d; weeks for 1w) still missing.
        error: why it failed (None: it did not); ``exception`` is the exception itself.
        seconds: how long it took.
        clamped_start: the start was moved here (the provider has nothing earlier).
        fetched_rows: bars fetched from the provider.
        path: the symbol's file.
    """

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
    """Sent to a ``progress`` callback once per symbol before fetching (``requests_done``
    0; ``requests_total`` 0: nothing missing) and once per provider request as it lands.

    Attributes:
        symbol, timeframe: whose request.
        requests_done, requests_total: the symbol's requests landed so far, and planned.
        rows: bars this request brought.
        error: why this request failed (None: it did not).
        start, end: the range the request covered.
        elapsed: seconds since the symbol's first request was sent.
    """

    symbol: str
    requests_done: int
    requests_total: int
    rows: int = 0
    error: str | None = None
    timeframe: str = ""
    start: datetime | None = None
    end: datetime | None = None
    elapsed: float = 0.0

    @property
    def eta(self) -> float | None:
        """Seconds still to go for this symbol, at the pace so far (None before the first
        request has landed)."""
        if self.requests_done <= 0 or self.elapsed <= 0:
            return None
        left = max(0, self.requests_total - self.requests_done)
        return self.elapsed / self.requests_done * left


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
    info: ContractInfo | None = None
    calendar: SessionCalendar | None = None
    cutoff: datetime | None = None  # complete periods end here (at this run's "now")
    requests: list[tuple[datetime, datetime]] = field(default_factory=list)
    done: int = 0
    pending: list[tuple[datetime, datetime, pd.DataFrame]] = field(default_factory=list)
    last_save: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    t0: float = 0.0
    fetch_t0: float = 0.0


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


class DataManager:
    """Bars from the local store, filled from an ``ExternalDataProvider``.

    Args:
        data_dir: where the Parquet datasets live: a path or a URL such as
            ``s3://bucket/prefix`` (default ``KTRDR_DATA_DIR`` or ``./data``); the bars go to
            the dataset of the provider's source (``BarStore.for_provider``).
        provider: the source of missing bars; by default an ``IbDataAdapter`` configured
            from the environment (``IB_HOST``/``IB_PORT``; ``IB_GATEWAY=sim`` starts an
            embedded simulated gateway), created on first need and stopped by ``close``.
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
        self.store.clean_temporary()

    # ----------------------------------------------------------------- plumbing

    @property
    def provider(self) -> ExternalDataProvider:
        if self._provider is None:
            if os.environ.get("IB_GATEWAY", "").strip().lower() == "sim":
                from ktrdr.sim import EmbeddedSim

                self._owned = EmbeddedSim().start()
                self._provider = self._owned.provider()
            else:
                from ktrdr.data.ib_data_adapter import IbDataAdapter

                self._provider = IbDataAdapter.from_env()
                self._owned = self._provider
        return self._provider

    async def aclose(self) -> None:
        """Stop the provider this manager started (if any)."""
        owned, self._owned = self._owned, None
        try:
            if owned is None:
                pass
            elif hasattr(owned, "stop"):
                await asyncio.to_thread(owned.stop)
            else:
                await owned.close()
        finally:
            self.store.close()  # its decoding threads

    def close(self) -> None:
        """Stop the provider this manager started (if any)."""
        return run_sync(self.aclose())

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> DataManager:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def now_async(self) -> datetime:
        """"Now" as the provider sees it (or the clock given to the constructor)."""
        if self._now is not None:
            return as_utc(self._now())
        return as_utc(await self.provider.get_current_time())

    def now(self) -> datetime:
        """"Now" as the provider sees it (or the clock given to the constructor)."""
        return run_sync(self.now_async())

    # ----------------------------------------------------------------- metadata

    async def _contract(self, symbol: str, instrument_type: str | None) -> ContractInfo:
        info = self.cache.contract(symbol)
        if info is None or (instrument_type and info.instrument_type != instrument_type):
            info = await self.provider.get_contract_details(symbol, instrument_type)
            await asyncio.to_thread(self.cache.set_contract, symbol, info)
        return info

    async def _head(self, symbol: str, instrument_type: str | None) -> datetime | None:
        head = self.cache.head(symbol)
        if head is False:
            head = await self.provider.get_head_timestamp(symbol, None, instrument_type)
            await asyncio.to_thread(self.cache.set_head, symbol, head)
        return head

    async def _prepare(self, job: _Job, need_head: bool
                       ) -> tuple[ContractInfo, datetime | None]:
        info = await self._contract(job.symbol, job.instrument_type)
        head = await self._head(job.symbol, info.instrument_type) if need_head else None
        return info, head

    # ----------------------------------------------------------------- public API

    async def load_data_async(self, symbol: str, timeframe: str, start_date: Any = None,
                              end_date: Any = None, mode: str = "local",
                              instrument_type: str | None = None,
                              progress: Callable[[ProgressEvent], None] | None = None
                              ) -> pd.DataFrame:
        """Bars of ``symbol`` in ``[start_date, end_date)`` (UTC index; open, high, low,
        close, volume), after fetching what ``mode`` asks for (see the module docstring).

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
            stored = await asyncio.to_thread(self.store.read, symbol, timeframe,
                                             columns=OHLCV_COLUMNS)
            if stored.frame.empty:
                raise DataNotFoundError(
                    f"no {timeframe} data stored for {symbol} in {self.data_dir}; load it "
                    f"with mode='tail' or 'full' (ktrdr data load {symbol} {timeframe} "
                    f"--mode full)")
            return _ohlcv(_slice(stored.frame, timeframe, self._zone(symbol, stored), start,
                                 end))
        [job] = await self._run([symbol], timeframe, start, end, mode, instrument_type,
                                progress)
        report = job.report
        if report.exception is not None:
            raise report.exception
        frame = _ohlcv(_slice(job.stored.frame, timeframe, _job_zone(job), start, end))
        frame.attrs.update(clamped_start=report.clamped_start, requests=report.requests,
                           gaps_left=report.gaps_left)
        return frame

    def load_data(self, symbol: str, timeframe: str, start_date: Any = None,
                  end_date: Any = None, mode: str = "local",
                  instrument_type: str | None = None,
                  progress: Callable[[ProgressEvent], None] | None = None) -> pd.DataFrame:
        """The blocking twin of ``load_data_async``."""
        return run_sync(self.load_data_async(symbol, timeframe, start_date, end_date, mode,
                                             instrument_type, progress))

    async def backfill_async(self, symbols: Iterable[str], timeframe: str,
                             start_date: Any = None, end_date: Any = None,
                             progress: Callable[[ProgressEvent], None] | None = None,
                             instrument_type: str | None = None) -> list[SymbolReport]:
        """Fill every missing stretch of ``[start_date, end_date)`` for many symbols at once.

        All requests of all symbols are submitted together; each symbol's file is updated as
        its requests land; a failing symbol does not stop the others; a re-run fetches only
        what is still missing. Returns one report per symbol (in input order).

        Raises:
            TimeframeError, InvalidRangeError: bad timeframe or range (nothing done).
        """
        symbols = list(dict.fromkeys(str(s).strip().upper() for s in symbols))
        timeframe = normalize_timeframe(timeframe)
        start, end = parse_time(start_date), parse_time(end_date)
        _check_range(start, end)
        jobs = await self._run(symbols, timeframe, start, end, "full", instrument_type,
                               progress)
        return [j.report for j in jobs]

    def backfill(self, symbols: Iterable[str], timeframe: str, start_date: Any = None,
                 end_date: Any = None, progress: Callable[[ProgressEvent], None] | None = None,
                 instrument_type: str | None = None) -> list[SymbolReport]:
        """The blocking twin of ``backfill_async``."""
        return run_sync(self.backfill_async(symbols, timeframe, start_date, end_date, progress,
                                            instrument_type))

    async def find_gaps_async(self, symbol: str, timeframe: str, start_date: Any = None,
                              end_date: Any = None, instrument_type: str | None = None
                              ) -> list[tuple[datetime, datetime]]:
        """Missing ranges of ``[start_date, end_date)`` (default: the first stored bar, or 30
        days back, to now), by the sessions' own bounds; what ``load`` with mode ``full``
        would fetch, and nothing still in progress at the provider's "now"."""
        symbol, timeframe, start, end = self._check(symbol, timeframe, start_date, end_date,
                                                    "full")
        stored, now, info = await asyncio.gather(
            asyncio.to_thread(self.store.read, symbol, timeframe), self.now_async(),
            self._contract(symbol, instrument_type))
        calendar = SessionCalendar(info)
        if start is None:
            if len(stored.frame):
                start = bar_labels(stored.frame.index[:1], timeframe, calendar.zone)[0]
                start = start.to_pydatetime()
            else:
                start = now - TAIL_DEFAULT
        end = end or now
        return missing_ranges(calendar, timeframe, start, end, now, stored.frame.index,
                              stored.fetched, align=False)

    def find_gaps(self, symbol: str, timeframe: str, start_date: Any = None,
                  end_date: Any = None, instrument_type: str | None = None
                  ) -> list[tuple[datetime, datetime]]:
        """The blocking twin of ``find_gaps_async``."""
        return run_sync(self.find_gaps_async(symbol, timeframe, start_date, end_date,
                                             instrument_type))

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
                "time_zone": stored.meta.get("time_zone"),
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

    def _zone(self, symbol: str, stored: StoredBars) -> str:
        zone = stored.meta.get("time_zone")
        if not zone:
            info = self.cache.contract(symbol)
            zone = info.time_zone if info is not None else "UTC"
        return zone

    async def _run(self, symbols: list[str], timeframe: str, start: datetime | None,
                   end: datetime | None, mode: str, instrument_type: str | None,
                   progress: Callable[[ProgressEvent], None] | None) -> list[_Job]:
        jobs: list[_Job] = []
        for symbol in symbols:
            job = _Job(symbol, timeframe, instrument_type, SymbolReport(symbol, timeframe))
            job.t0 = time.monotonic()
            jobs.append(job)
            try:
                job.symbol = normalize_symbol(symbol)
                job.report.symbol = job.symbol
                job.report.path = str(self.store.path(job.symbol, timeframe))
            except Exception as exc:
                _fail(job, exc)
        live = [j for j in jobs if j.report.ok]
        if live:
            reads = await asyncio.gather(
                *(asyncio.to_thread(self.store.read, j.symbol, timeframe) for j in live),
                return_exceptions=True)
            for job, stored in zip(live, reads, strict=True):
                if isinstance(stored, BaseException):
                    _fail(job, stored)
                else:
                    job.stored = stored
            live = [j for j in live if j.report.ok]
        if live:
            now = await self.now_async()
            need_head = mode in ("backfill", "full") or start is not None
            prepared = await asyncio.gather(*(self._prepare(j, need_head) for j in live),
                                            return_exceptions=True)
            for job, outcome in zip(live, prepared, strict=True):
                if isinstance(outcome, BaseException):
                    _fail(job, outcome)
                    continue
                info, head = outcome
                job.info = info
                job.instrument_type = info.instrument_type
                job.calendar = SessionCalendar(info)
                job.cutoff = job.calendar.complete_before(timeframe, now)
                try:
                    await self._plan(job, mode, start, end, now, head)
                except Exception as exc:
                    _fail(job, exc)
            for job in live:  # the others hear from _fetch
                if job.report.ok and not job.requests:
                    _emit(progress, ProgressEvent(job.symbol, 0, 0, timeframe=job.timeframe))
            await self._fetch([j for j in live if j.report.ok and j.requests], progress)
            for job in live:
                self._finish(job, now)
        for job in jobs:
            job.report.seconds = round(time.monotonic() - job.t0, 3)
        return jobs

    async def _plan(self, job: _Job, mode: str, start: datetime | None, end: datetime | None,
                    now: datetime, head: datetime | None) -> None:
        assert job.stored is not None and job.calendar is not None and job.cutoff is not None
        labels = bar_labels(job.stored.frame.index, job.timeframe, job.calendar.zone)
        first = labels[0].to_pydatetime() if len(labels) else None
        last = labels[-1].to_pydatetime() if len(labels) else None
        end_eff = min(end or job.cutoff, job.cutoff)
        reported_head = head
        if head is not None and is_daily_or_longer(job.timeframe):
            head = _label_of(head, job.timeframe, job.calendar.zone)
        if mode == "tail":
            if last is not None:
                if start is not None and first is not None and start < first and \
                        missing_ranges(job.calendar, job.timeframe, max(start, head or start),
                                       first, now, job.stored.frame.index, job.stored.fetched):
                    raise InvalidRangeError(
                        f"tail mode fetches from the last stored bar ({last:%Y-%m-%d %H:%M}); "
                        f"bars between start {start:%Y-%m-%d %H:%M} and the first stored bar "
                        f"({first:%Y-%m-%d %H:%M}) are missing: use mode 'full' (or "
                        f"'backfill') to fill from there")
                begin = last
            else:
                begin = start or now - TAIL_DEFAULT
        else:
            begin = start or max(head or datetime.min.replace(tzinfo=UTC),
                                 now - BACKFILL_DEFAULT.get(job.timeframe, timedelta(days=36500)))
            if mode == "backfill" and first is not None:
                end_eff = min(end_eff, first)
        if head is not None and begin < head:
            log.warning("%s %s: start %s is before the first available data (%s); starting "
                        "there", job.symbol, job.timeframe, begin, reported_head)
            job.report.clamped_start = reported_head
            begin = head
        job.want_start = max(start, head) if start and head else start
        job.want_end = end
        if begin >= end_eff:
            return
        job.window = (begin, end_eff)
        ranges = missing_ranges(job.calendar, job.timeframe, begin, end_eff, now,
                                job.stored.frame.index, job.stored.fetched)
        for a, b in ranges:
            job.requests += await self.provider.plan_requests(job.symbol, job.timeframe, a, b,
                                                              job.instrument_type)
        job.report.requests = len(job.requests)

    async def _fetch(self, jobs: list[_Job], progress: Callable[[ProgressEvent], None] | None
                     ) -> None:
        tasks: dict[asyncio.Task, tuple[_Job, datetime, datetime]] = {}
        seen: set[asyncio.Task] = set()
        finished: asyncio.Queue[asyncio.Task] = asyncio.Queue()
        try:
            for job in jobs:
                _emit(progress, ProgressEvent(job.symbol, 0, len(job.requests),
                                              timeframe=job.timeframe))
                job.fetch_t0 = time.monotonic()
                for a, b in job.requests:
                    coro = self.provider.fetch_historical_data(job.symbol, job.timeframe, a, b,
                                                               job.instrument_type)
                    task = asyncio.ensure_future(coro)
                    task.add_done_callback(finished.put_nowait)
                    tasks[task] = (job, a, b)
            for _ in range(len(tasks)):  # in the order they land
                task = await finished.get()
                seen.add(task)
                job, a, b = tasks[task]
                await self._landed(job, task, a, b, progress)
        except BaseException:
            # cancelled (or failing): stop every request, keep what arrived, save, re-raise
            unfinished = [t for t in tasks if not t.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished, timeout=CANCEL_GRACE)
            for task, (job, a, b) in tasks.items():
                if task not in seen and task.done() and not task.cancelled():
                    self._collect(job, task, a, b)
            await asyncio.shield(self._save_all(jobs))
            raise
        await self._save_all(jobs)

    async def _landed(self, job: _Job, task: asyncio.Task, a: datetime, b: datetime,
                      progress: Callable[[ProgressEvent], None] | None) -> None:
        rows, error = self._collect(job, task, a, b)
        _emit(progress, ProgressEvent(job.symbol, job.done, len(job.requests), rows, error,
                                      job.timeframe, a, b,
                                      round(time.monotonic() - job.fetch_t0, 3)))
        if time.monotonic() - job.last_save >= SAVE_INTERVAL:
            await self._save(job)

    def _collect(self, job: _Job, task: asyncio.Task, a: datetime, b: datetime
                 ) -> tuple[int, str | None]:
        """Take a finished request's bars (or what arrived before it failed)."""
        job.done += 1
        rows, error = 0, None
        try:
            frame = task.result()
        except asyncio.CancelledError:
            return 0, "cancelled"
        except Exception as exc:
            error = str(exc)
            for pa, pb, piece in getattr(exc, "partial", ()) or ():
                rows += self._keep(job, piece, pa, pb)
            if job.report.ok:
                _fail(job, exc)
            log.warning("%s %s %s..%s failed: %s", job.symbol, job.timeframe, a, b, exc)
            return rows, error
        rows += self._keep(job, frame, a, b)
        job.report.requests += max(0, int(frame.attrs.get("requests", 1) or 1) - 1)
        return rows, None

    def _keep(self, job: _Job, frame: pd.DataFrame, start: datetime, end: datetime) -> int:
        """Queue a landed piece for saving, without the period still in progress."""
        assert job.cutoff is not None and job.calendar is not None
        frame = _complete(frame, job.timeframe, job.calendar, job.cutoff)
        job.pending.append((start, min(end, job.cutoff), frame))
        job.report.fetched_rows += len(frame)
        return len(frame)

    async def _save_all(self, jobs: list[_Job]) -> None:
        await asyncio.gather(*(self._save(j) for j in jobs if j.pending), return_exceptions=True)

    async def _save(self, job: _Job) -> None:
        """Merge the landed pieces into the symbol's file (on a thread)."""
        async with job.lock:
            if not job.pending:
                return
            pieces, job.pending = job.pending, []
            job.last_save = time.monotonic()
            stored = job.stored
            assert stored is not None
            info = self.provider.get_provider_info()
            meta = dict(stored.meta)
            meta.update(source=info.get("source", info.get("name")), provider=info.get("name"),
                        gateway=info.get("gateway"),
                        fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        instrument_type=job.instrument_type,
                        time_zone=job.info.time_zone if job.info else meta.get("time_zone"),
                        exchange=job.info.exchange if job.info else meta.get("exchange"))
            fetched = merge_ranges([*stored.fetched,
                                    *((int(a.timestamp()), int(b.timestamp()))
                                      for a, b, _ in pieces if b > a)])

            def write() -> pd.DataFrame:
                merged = _merge(stored.frame, [f for _, _, f in pieces])
                self.store.write(job.symbol, job.timeframe, merged, fetched, meta)
                return merged

            try:
                merged = await asyncio.to_thread(write)
            except Exception as exc:
                if job.report.ok:
                    _fail(job, exc)
                log.error("%s %s: saving failed: %s", job.symbol, job.timeframe, exc)
                return
            job.stored = StoredBars(merged, fetched, meta)

    def _finish(self, job: _Job, now: datetime) -> None:
        if job.stored is None or job.calendar is None:
            return
        frame = _slice(job.stored.frame, job.timeframe, job.calendar.zone, job.want_start,
                       job.want_end)
        job.report.rows = len(frame)
        if len(frame):
            job.report.start = frame.index[0].to_pydatetime()
            job.report.end = frame.index[-1].to_pydatetime()
        if job.window is not None:
            job.report.gaps_left = count_missing_sessions(
                job.calendar, job.timeframe, *job.window, now, job.stored.frame.index,
                job.stored.fetched)


def _emit(progress: Callable[[ProgressEvent], None] | None, event: ProgressEvent) -> None:
    if progress is None:
        return
    try:
        progress(event)
    except Exception:  # a broken callback must not stop the work
        log.exception("progress callback failed")


def _complete(frame: pd.DataFrame, timeframe: str, calendar: SessionCalendar,
              cutoff: datetime) -> pd.DataFrame:
    """``frame`` without the bars whose period is still in progress at this run's "now"
    (``cutoff``: ``calendar.complete_before``)."""
    if frame.empty:
        return frame
    return frame[bar_labels(frame.index, timeframe, calendar.zone) < cutoff]


def _merge(old: pd.DataFrame, new: list[pd.DataFrame]) -> pd.DataFrame:
    """Union by timestamp, the newer bar winning; sorted; every column either side has."""
    frames = [f for f in (old, *new) if len(f)]
    if not frames:
        return old
    merged = pd.concat(frames) if len(frames) > 1 else frames[0]
    return merged[~merged.index.duplicated(keep="last")].sort_index()


def _fail(job: _Job, exc: BaseException) -> None:
    job.report.error = str(exc)
    job.report.exception = exc
    if not isinstance(exc, (DataProviderError, DataError, ValueError, OSError)):
        log.error("%s: unexpected %s", job.symbol, type(exc).__name__, exc_info=exc)


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidRangeError(f"end {end:%Y-%m-%d %H:%M} is not after start "
                                f"{start:%Y-%m-%d %H:%M}; give an end date later than the start")


def _label_of(moment: datetime, timeframe: str, zone: Any) -> datetime:
    """The label (``timeframes.bar_labels``) of the period holding ``moment``."""
    label = bar_labels(pd.DatetimeIndex([moment]), timeframe, zone)[0].to_pydatetime()
    if timeframe == "1w":
        label -= timedelta(days=label.weekday())
    return label


def _job_zone(job: _Job) -> str:
    return job.info.time_zone if job.info is not None else "UTC"


def _slice(frame: pd.DataFrame, timeframe: str, zone: Any, start: datetime | None,
           end: datetime | None) -> pd.DataFrame:
    """The bars whose label (``timeframes.bar_labels``) is in ``[start, end)``, as a new frame
    (shallow: the columns are not copied)."""
    if start is None and end is None:
        return frame.copy(deep=False)
    if not is_daily_or_longer(timeframe):  # labelled by their time: the index is sorted
        i = frame.index.searchsorted(start, "left") if start is not None else 0
        j = frame.index.searchsorted(end, "left") if end is not None else len(frame)
        return frame.iloc[i:j].copy(deep=False)
    labels = bar_labels(frame.index, timeframe, zone)
    keep = np.ones(len(frame), bool)
    if start is not None:
        keep &= labels >= start
    if end is not None:
        keep &= labels < end
    return frame[keep].copy(deep=False)


def _ohlcv(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[list(OHLCV_COLUMNS)]
    out.attrs.update(frame.attrs)
    return out


__all__ = ["DataError", "DataManager", "DataNotFoundError", "InvalidRangeError",
           "ProgressEvent", "SymbolReport", "parse_time", "run_sync"]
