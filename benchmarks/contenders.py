"""The ways of getting bars that the benchmark compares, behind one small interface.

Every contender gets the same ``BarRequest`` list and either returns one pandas DataFrame per
request (``fetch``: the first failure raises) or says what became of every request
(``tally``: answered, failed, timed out, with the bars counted in the contender's own form,
an Arrow table or ib_insync's bar list, without building DataFrames)::

    make_contenders(names) ─► [Contender] ─ start(host, port, policy, margin) ─ warm()
                                  │ fetch(requests, timeout) ─► [DataFrame]
                                  │ tally(requests, timeout) ─► Tally
                                  └ tiny() (one round trip), stop()

* ``FarmContender(n)``: ``IbFarm`` with ``n`` worker processes per gateway
  (``Table.to_pandas()``); with ``gateways=[...]`` one farm over several gateways;
* ``GatherContender``: one ib_insync connection used well: every request submitted at once
  with ``asyncio.gather``, ``util.df`` for the frames;
* ``ThreadPoolContender``: the redesign plan's thread-per-connection pool
  (``baselines/thread_pool.py``);
* ``PerRequestContender``: the old way, a new connection for every request (a few at once);
* ``SerialContender``: the original redesign plan's one connection, one request at a time;
* ``DataManagerContender``: ktrdr's ``DataManager.backfill`` through ``IbDataAdapter`` over
  an ``IbFarm`` with the farm's defaults, as a user's backfill runs (``backfill``).

The last two are not in ``make_contenders``: the latency-model backfill builds them.

The baselines wait for the same pacing rules as the farm (a ``SharedPacer`` of their own,
dating each grant by the send, with ib_insync's own throttle off as in the farm's workers) and
retry a request whose connection dropped after reconnecting, so every contender finishes the
same work without breaking the gateway's rules. Like the farm, which keeps waiting work in its
manager's queue and lets the pacer see only the queue's head, a baseline keeps at most the
gateway's open-request limit of requests waiting for its pacer or at the gateway; the rest
wait their turn in the caller (a pacer polled by 20,000 waiters at once would measure the
polling, not the connection).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from benchmarks.baselines.thread_pool import IbConnectionPool
from ibfarm import BarRequest, FarmConfig, IbFarm, make_contract
from ibfarm.backend import IB, RequestError, util
from ibfarm.bars import bar_seconds, normalize_bar_size
from ibfarm.errors import RequestTimeoutError
from ibfarm.pacer import SharedPacer
from ibfarm.pacing import PacedRequest, PacingPolicy

log = logging.getLogger(__name__)

#: Attempts a baseline makes for one request across dropped connections.
RETRIES = 40
#: Seconds between a baseline's reconnection attempts.
RECONNECT_WAIT = 0.1
#: Messages ib_insync sends while connecting (start API and the initial requests).
CONNECT_MESSAGES = 10
#: Times a baseline retries a request that the gateway refused as a pacing violation.
PACING_RETRIES = 2
#: Seconds the pacers add to every window unless a scenario says otherwise (the farm's default).
DEFAULT_MARGIN = 0.05


class Unanswered(TimeoutError):
    """A request still unanswered at the scenario's deadline (it is cancelled then)."""


@dataclass
class Tally:
    """What became of a batch of requests."""

    requests: int = 0
    answered: int = 0
    failed: int = 0
    timed_out: int = 0  # the request's own timeout, or unanswered at the scenario's deadline
    bars: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def of(cls, answers: Sequence[Any], rows: Callable[[Any], int]) -> Tally:
        """Count ``answers`` (a result or the exception of each request)."""
        tally = cls(requests=len(answers))
        for answer in answers:
            if isinstance(answer, (Unanswered, RequestTimeoutError, asyncio.TimeoutError)):
                tally.timed_out += 1
            elif isinstance(answer, BaseException):
                tally.failed += 1
                tally.errors[f"{type(answer).__name__}: {answer}"[:160]] += 1
            else:
                tally.answered += 1
                tally.bars += rows(answer)
        return tally

    def metrics(self) -> dict:
        return {"requests": self.requests, "answered": self.answered, "failed": self.failed,
                "timed_out": self.timed_out, "unanswered": self.failed + self.timed_out,
                "bars": self.bars, "errors": dict(self.errors.most_common(3))}


def paced(request: BarRequest) -> PacedRequest:
    """What the pacing rules see in ``request`` (the same key the farm builds)."""
    contract = make_contract(request.symbol, request.sec_type, request.exchange,
                             request.currency)
    ckey = (contract.conId, contract.symbol, contract.secType, contract.exchange,
            contract.currency, contract.lastTradeDateOrContractMonth)
    bar_size = normalize_bar_size(request.bar_size)
    what = request.what_to_show.upper()
    return PacedRequest(key=(ckey, request.ib_end(), request.duration, bar_size, what,
                             request.use_rth),
                        contract_key=(ckey, what), what_to_show=what,
                        bar_seconds=bar_seconds(bar_size))


async def bars_on(ib: IB, request: BarRequest, pacer: SharedPacer | None):
    """One request on a connected ``IB``, paced: ib_insync's bar list."""
    contract = make_contract(request.symbol, request.sec_type, request.exchange,
                             request.currency)

    def ask() -> asyncio.Future:
        return asyncio.ensure_future(ib.reqHistoricalDataAsync(
            contract, request.ib_end(), request.duration, normalize_bar_size(request.bar_size),
            request.what_to_show.upper(), request.use_rth, formatDate=2, timeout=0))

    for attempt in range(PACING_RETRIES + 1):
        try:
            if pacer is None:
                return await ask()
            async with pacer.historical(paced(request)) as sent:
                answer = ask()
                await asyncio.sleep(0)  # the request has gone out: date the grant by it
                sent()
                return await answer
        except RequestError as exc:
            # the gateway saw a pacing violation: wait one window, as IB asks, and retry
            if "pacing violation" not in exc.message or attempt == PACING_RETRIES:
                raise
            wait = pacer.policy.window if pacer is not None else 1.0
            log.warning("pacing violation on %s; retrying in %.1f s", request.symbol, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def frame_of(bars) -> pd.DataFrame:
    """ib_insync's bar list as a DataFrame (empty if no bars)."""
    frame = util.df(bars)
    return frame if frame is not None else pd.DataFrame()


async def _current_time(ib: IB):
    return await ib.reqCurrentTimeAsync()


async def _settle(tasks: list[asyncio.Task], timeout: float) -> list[Any]:
    """Each task's result or exception after at most ``timeout`` s (the rest are cancelled
    and reported as ``Unanswered``)."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    out: list[Any] = []
    for task in tasks:
        if task.cancelled():
            out.append(Unanswered("unanswered at the deadline"))
        elif task.exception() is not None:
            out.append(task.exception())
        else:
            out.append(task.result())
    return out


class Contender(ABC):
    """One way of fetching bars. ``start`` connects; ``stop`` leaves nothing running."""

    name: str = ""
    label: str = ""
    connections: int = 1
    #: a tiny request costs a whole connection: measure fewer of them
    expensive_tiny: bool = False
    #: the largest batch it is given in the scale scenario (None: any), and why
    most_requests: int | None = None
    why_fewer: str = ""

    def __init__(self, client_ids: range):
        self.client_ids = client_ids
        self.host, self.port = "127.0.0.1", 0
        self.policy = PacingPolicy()
        self.margin = DEFAULT_MARGIN

    def _use(self, host: str, port: int, policy: PacingPolicy, margin: float) -> None:
        self.host, self.port, self.policy, self.margin = host, port, policy, margin

    @abstractmethod
    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        """Get ready to serve ``policy``'s gateway at host:port (connect, or open the pool);
        ``margin``: seconds its pacer adds to every window."""

    def warm(self) -> None:
        """Have every connection up (the farm's workers start lazily)."""
        self.tiny()

    def fetch(self, requests: list[BarRequest], timeout: float) -> list[pd.DataFrame]:
        """Every request's bars as a DataFrame, in order; the first failure raises."""
        answers = self._answers(requests, timeout, convert=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    def tally(self, requests: list[BarRequest], timeout: float) -> Tally:
        """Every request sent; what became of each within ``timeout`` seconds."""
        return Tally.of(self._answers(requests, timeout, convert=False), self._rows)

    @abstractmethod
    def _answers(self, requests: list[BarRequest], timeout: float, convert: bool) -> list[Any]:
        """Per request, in order: its bars (a DataFrame when ``convert``, made as each
        answer arrives) or its exception; ``Unanswered`` after ``timeout`` seconds."""

    @staticmethod
    def _rows(answer: Any) -> int:
        return len(answer)

    @abstractmethod
    def tiny(self) -> None:
        """One round trip to the gateway (``reqCurrentTime``)."""

    @abstractmethod
    def stop(self) -> None:
        """Disconnect; stop every thread and process started."""

    def worker_pids(self) -> list[int]:
        """Processes of its own (the farm's workers)."""
        return []

    def kill_worker(self) -> int | None:
        """SIGKILL one busy worker process; returns its pid (None: no processes of its own)."""
        return None


class FarmContender(Contender):
    """``IbFarm`` with ``workers`` worker processes (per gateway).

    Args:
        gateways: ``["host:port", ...]`` for one farm over several gateways; None: the
            ``host``/``port`` given to ``start``.
    """

    def __init__(self, workers: int, client_ids: range, gateways: Sequence[str] | None = None,
                 name: str | None = None, label: str | None = None):
        super().__init__(client_ids)
        self.workers = workers
        self.gateways = list(gateways) if gateways else None
        self.name = name or f"farm-{workers}"
        self.label = label or f"farm, {workers} worker{'s' if workers > 1 else ''}"
        self.connections = workers * len(self.gateways or [None])
        self.farm: IbFarm | None = None

    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        self._use(host, port, policy, margin)
        where = {"gateways": self.gateways} if self.gateways else {"host": host, "port": port}
        self.farm = IbFarm(FarmConfig(**where, max_workers=self.workers,
                                      client_ids=self.client_ids, pacing=policy,
                                      pacing_margin=margin, request_timeout=60.0))

    def warm(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # concurrent requests with ids of their own (reqCurrentTime has one fixed key)
            futures = [self.farm.contract_details("AAPL") for _ in range(2 * self.connections)]
            for future in futures:
                future.result(timeout)
            ready = [w for w in self.farm.status()["workers"] if w["state"] == "ready"]
            if len(ready) >= self.connections:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: not every worker connected within {timeout} s")

    def _answers(self, requests: list[BarRequest], timeout: float, convert: bool) -> list[Any]:
        futures = [self.farm.historical_bars(r) for r in requests]
        end = time.monotonic() + timeout
        out: list[Any] = []
        for future in futures:  # in order: the caller converts one while the rest arrive
            try:
                table = future.result(max(0.0, end - time.monotonic()))
            except concurrent.futures.TimeoutError:
                future.cancel()
                out.append(Unanswered("unanswered at the deadline"))
            except Exception as exc:  # that request's failure, counted
                out.append(exc)
            else:
                out.append(table.to_pandas() if convert else table)
        return out

    @staticmethod
    def _rows(answer: Any) -> int:
        return answer.num_rows

    def tiny(self) -> None:
        # an ib_insync method: a worker unpickles it without importing this module (pandas)
        self.farm.submit(IB.reqCurrentTimeAsync).result(10)

    def status(self) -> dict:
        return self.farm.status()

    def stop(self) -> None:
        if self.farm is not None:
            self.farm.shutdown(wait=True, cancel_futures=True)
            self.farm = None

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.farm.status()["workers"] if w["pid"]]

    def kill_worker(self) -> int | None:
        workers = sorted(self.farm.status()["workers"], key=lambda w: -w["in_flight"])
        if not workers:
            return None
        os.kill(workers[0]["pid"], signal.SIGKILL)
        return workers[0]["pid"]


class _LoopContender(Contender):
    """A baseline that runs on ib_insync's loop in the calling thread."""

    pacer: SharedPacer | None = None

    def _open_pacer(self) -> None:
        self.pacer = SharedPacer(f"{self.host}:{self.port}", self.policy,
                                 namespace=f"ibbench{self.name}", margin=self.margin)

    def _close_pacer(self) -> None:
        if self.pacer is not None:
            self.pacer.close()
            self.pacer = None

    @property
    def in_flight_limit(self) -> int:
        """Requests at most waiting for the pacer or at the gateway at once."""
        return self.policy.max_open_requests

    @staticmethod
    def _run(coro, timeout: float):
        # not util.run: it aborts on any error ib_insync reports globally, such as a dropped
        # socket that the retries here are meant to survive
        return util.getLoop().run_until_complete(asyncio.wait_for(coro, timeout))

    def _batch(self, requests: list[BarRequest], timeout: float, limit: int,
               one: Callable[[BarRequest], Any], convert: bool) -> list[Any]:
        """``await one(request)`` for every request, ``limit`` at a time."""
        async def everything() -> list[Any]:
            gate = asyncio.Semaphore(limit)

            async def guarded(request: BarRequest) -> Any:
                async with gate:
                    bars = await one(request)
                return frame_of(bars) if convert else bars
            return await _settle([asyncio.ensure_future(guarded(r)) for r in requests],
                                 timeout)
        # the outer limit only guards a hang in cleaning up
        return self._run(everything(), timeout + 30)


class GatherContender(_LoopContender):
    """One ib_insync connection; every request submitted at once (``asyncio.gather``)."""

    name = "gather"
    label = "1 ib_insync conn, gather"

    def __init__(self, client_ids: range):
        super().__init__(client_ids)
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        self.ib.client.MaxRequests = 0  # the pacer is the only throttle, as in the farm
        self._lock: asyncio.Lock | None = None

    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        self._use(host, port, policy, margin)
        self._open_pacer()
        self._run(self._connected(), 30)

    async def _connected(self) -> None:
        if self.ib.isConnected():
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for _ in range(RETRIES * 5):
                if self.ib.isConnected():
                    return
                try:
                    if self.pacer is not None:
                        # one connection carries everything: its handshake counts too, or a
                        # reconnect plus the retried requests break 50 messages/s
                        await self.pacer.acquire_messages(CONNECT_MESSAGES)
                    await self.ib.connectAsync(self.host, self.port,
                                               clientId=self.client_ids[0], timeout=5,
                                               readonly=True)
                    return
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    log.debug("gather: reconnect failed: %r", exc)
                    self.ib.disconnect()
                    await asyncio.sleep(RECONNECT_WAIT)
            raise ConnectionError("gather: could not reconnect")

    async def _one(self, request: BarRequest):
        for _ in range(RETRIES):
            await self._connected()
            try:
                return await bars_on(self.ib, request, self.pacer)
            except (ConnectionError, OSError) as exc:
                log.debug("gather: %r; retrying", exc)
                await asyncio.sleep(RECONNECT_WAIT)
        raise ConnectionError(f"gather: gave up on {request}")

    def _answers(self, requests: list[BarRequest], timeout: float, convert: bool) -> list[Any]:
        return self._batch(requests, timeout, self.in_flight_limit, self._one, convert)

    def tiny(self) -> None:
        self._run(self._tiny(), 10)

    async def _tiny(self) -> None:
        for _ in range(RETRIES):
            await self._connected()
            try:
                await self.ib.reqCurrentTimeAsync()
                return
            except (ConnectionError, OSError):
                await asyncio.sleep(RECONNECT_WAIT)
        raise ConnectionError("gather: no answer to a tiny request")

    def stop(self) -> None:
        self.ib.disconnect()
        self._close_pacer()


class SerialContender(GatherContender):
    """The original redesign plan: one connection, one request at a time (each awaited before
    the next is sent), paced like the others."""

    name = "serial"
    label = "1 conn, one request at a time"

    @property
    def in_flight_limit(self) -> int:
        return 1


class ThreadPoolContender(_LoopContender):
    """The plan's pool: ``size`` connections, each on its own thread and event loop."""

    def __init__(self, size: int, client_ids: range):
        super().__init__(client_ids)
        self.size = size
        self.name = f"threads-{size}"
        self.label = f"thread pool, {size} conns"
        self.connections = size
        self.pool: IbConnectionPool | None = None

    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        self._use(host, port, policy, margin)
        self._open_pacer()
        # its handshakes are not counted against the shared message rate (the farm's workers
        # count theirs): the gateway counts messages per connection, and a new connection's
        # handshake is the only traffic on it at that moment
        self.pool = IbConnectionPool(host, port, size=self.size,
                                     first_client_id=self.client_ids[0])

    def warm(self, timeout: float = 60.0) -> None:
        futures = []
        for _ in range(self.size):  # each busy while the next is asked for: a new connection
            futures.append(self.pool.submit(_slow_tiny))
        for future in futures:
            future.result(timeout)

    def _answers(self, requests: list[BarRequest], timeout: float, convert: bool) -> list[Any]:
        gate = threading.BoundedSemaphore(self.in_flight_limit)
        end = time.monotonic() + timeout
        futures: list[concurrent.futures.Future] = []
        for request in requests:  # the caller waits for a free place before submitting
            if not gate.acquire(timeout=max(0.0, end - time.monotonic())):
                break
            future = self.pool.submit(_job(request, self.pacer, convert))
            future.add_done_callback(lambda _f: gate.release())
            futures.append(future)
        out: list[Any] = []
        for future in futures:
            try:
                out.append(future.result(max(0.0, end - time.monotonic())))
            except concurrent.futures.TimeoutError:
                out.append(Unanswered("unanswered at the deadline"))
            except Exception as exc:  # that request's failure, counted
                out.append(exc)
        out += [Unanswered("never submitted before the deadline")
                for _ in range(len(requests) - len(futures))]
        return out

    def tiny(self) -> None:
        self.pool.submit(_current_time).result(10)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self._close_pacer()


async def _slow_tiny(ib: IB) -> None:
    await ib.reqCurrentTimeAsync()
    await asyncio.sleep(0.05)


def _job(request: BarRequest, pacer: SharedPacer | None, convert: bool) -> Callable:
    async def job(ib: IB):
        bars = await bars_on(ib, request, pacer)
        return frame_of(bars) if convert else bars
    return job


class PerRequestContender(_LoopContender):
    """The old way: connect, ask, disconnect, for every request (``concurrency`` at once)."""

    name = "per-request"
    label = "new conn per request"
    expensive_tiny = True
    most_requests = 2_500
    why_fewer = ("a connection per request (connect, ask, disconnect, 8 at a time) does not "
                 "finish that many in reasonable time")

    def __init__(self, client_ids: range, concurrency: int = 8):
        super().__init__(client_ids)
        self.concurrency = concurrency
        self._ids = itertools.cycle(client_ids)
        self.connections = concurrency

    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        self._use(host, port, policy, margin)
        self._open_pacer()

    async def _with_connection(self, work: Callable) -> object:
        for _ in range(RETRIES):
            ib = IB()  # its own session: ib_insync's throttle never holds back one request
            ib.RaiseRequestErrors = True
            try:
                await ib.connectAsync(self.host, self.port, clientId=next(self._ids),
                                      timeout=5, readonly=True)
                return await work(ib)
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                log.debug("per-request: %r; retrying", exc)
                await asyncio.sleep(RECONNECT_WAIT)
            finally:
                ib.disconnect()
        raise ConnectionError("per-request: gave up")

    def _answers(self, requests: list[BarRequest], timeout: float, convert: bool) -> list[Any]:
        def one(request: BarRequest):
            return self._with_connection(lambda ib: bars_on(ib, request, self.pacer))
        return self._batch(requests, timeout, self.concurrency, one, convert)

    def tiny(self) -> None:
        self._run(self._with_connection(_current_time), 10)

    def stop(self) -> None:
        self._close_pacer()


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread of its own (its event loops stay out of the caller's thread)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench") as pool:
        return pool.submit(fn).result()


class _Tap:
    """An ``IbFarm`` as ``IbDataAdapter`` sees it, noting every bar request and its future
    while ``log`` is a list (everything else is the farm's own)."""

    def __init__(self, farm: IbFarm):
        self._farm = farm
        self.log: list[tuple[BarRequest, concurrent.futures.Future]] | None = None

    def historical_bars(self, request: BarRequest):
        future = self._farm.historical_bars(request)
        if self.log is not None:
            self.log.append((request, future))
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._farm, name)


class DataManagerContender(FarmContender):
    """ktrdr's ``DataManager.backfill`` through ``IbDataAdapter`` over an ``IbFarm``
    (``FarmConfig``'s defaults but the address and the rules: 2 workers, the default margin).

    One adapter serves every backfill, so contracts and head timestamps are asked of the
    gateway once (the first backfill); ``backfill`` into an empty data directory then sends
    only the bar requests a user's first backfill of the range sends.
    """

    def __init__(self, client_ids: range, workers: int | None = None):
        workers = workers or FarmConfig().max_workers
        super().__init__(workers, client_ids, name="datamanager",
                         label=f"DataManager.backfill, farm {workers}")
        self.adapter = None
        self._tap: _Tap | None = None

    def start(self, host: str, port: int, policy: PacingPolicy,
              margin: float = DEFAULT_MARGIN) -> None:
        from ktrdr.data.ib_data_adapter import IbDataAdapter

        super().start(host, port, policy, margin)
        self._tap = _Tap(self.farm)
        self.adapter = IbDataAdapter(farm=self._tap, source="sim")

    def backfill(self, data_dir: str, symbols: Sequence[str], timeframe: str, start, end,
                 record: bool = False) -> tuple[list, list]:
        """``DataManager(data_dir).backfill(symbols, timeframe, start, end)``: its reports,
        and (``record``) every bar request the adapter sent with its answer's future.

        It runs in a thread of its own: the blocking twin's ``asyncio.run`` leaves its
        thread without an event loop, and the in-process baselines keep theirs in this one.
        """
        from ktrdr.data.data_manager import DataManager

        def backfill() -> list:
            with DataManager(data_dir, self.adapter) as manager:
                return manager.backfill(symbols, timeframe, start, end)

        self._tap.log = [] if record else None
        try:
            return in_thread(backfill), list(self._tap.log or [])
        finally:
            self._tap.log = None

    def stop(self) -> None:
        self.adapter = self._tap = None  # the farm is ours, not the adapter's
        super().stop()


def make_contenders(names: list[str] | None = None, id_offset: int = 0) -> list[Contender]:
    """Every contender (or the named ones), each with client ids of its own.

    ``id_offset`` shifts every client id, so a second set can run beside the first.
    """
    def ids(first: int, stop: int) -> range:
        return range(first + id_offset, stop + id_offset)

    every: list[Contender] = [
        FarmContender(1, ids(10, 20)),
        FarmContender(2, ids(20, 30)),
        FarmContender(4, ids(30, 40)),
        GatherContender(ids(40, 41)),
        ThreadPoolContender(4, ids(50, 100)),
        PerRequestContender(ids(100, 400)),
    ]
    if not names:
        return every
    known = {c.name: c for c in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown contenders {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]


CONTENDER_NAMES = [c.name for c in make_contenders()]
