"""The ways of getting bars that the benchmark compares, behind one small interface.

Every contender gets the same ``BarRequest`` list and returns one pandas DataFrame per request:

* ``FarmContender(n)``: ``IbFarm`` with ``n`` worker processes (``Table.to_pandas()``);
* ``GatherContender``: one ib_insync connection used well: every request in flight at once
  with ``asyncio.gather``, ``util.df`` for the frames;
* ``ThreadPoolContender``: the redesign plan's thread-per-connection pool
  (``baselines/thread_pool.py``);
* ``PerRequestContender``: the old way, a new connection for every request (a few at once).

The baselines wait for the same pacing rules as the farm (a ``SharedPacer`` of their own,
dating each grant by the send, with ib_insync's own throttle off as in the farm's workers) and
retry a request whose connection dropped after reconnecting, so every contender finishes the
same work without breaking the gateway's rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import pandas as pd

from benchmarks.baselines.thread_pool import IbConnectionPool
from ibfarm import BarRequest, FarmConfig, IbFarm, make_contract
from ibfarm.backend import IB, RequestError, util
from ibfarm.bars import bar_seconds, normalize_bar_size
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


async def fetch_on(ib: IB, request: BarRequest, pacer: SharedPacer | None) -> pd.DataFrame:
    """One request on a connected ``IB``, paced, as a DataFrame (empty if no bars)."""
    contract = make_contract(request.symbol, request.sec_type, request.exchange,
                             request.currency)

    def ask() -> asyncio.Future:
        return asyncio.ensure_future(ib.reqHistoricalDataAsync(
            contract, request.ib_end(), request.duration, normalize_bar_size(request.bar_size),
            request.what_to_show.upper(), request.use_rth, formatDate=2, timeout=0))

    for attempt in range(PACING_RETRIES + 1):
        try:
            if pacer is None:
                bars = await ask()
            else:
                async with pacer.historical(paced(request)) as sent:
                    answer = ask()
                    await asyncio.sleep(0)  # the request has gone out: date the grant by it
                    sent()
                    bars = await answer
            break
        except RequestError as exc:
            # the gateway saw a pacing violation: wait one window, as IB asks, and retry
            if "pacing violation" not in exc.message or attempt == PACING_RETRIES:
                raise
            wait = pacer.policy.window if pacer is not None else 1.0
            log.warning("pacing violation on %s; retrying in %.1f s", request.symbol, wait)
            await asyncio.sleep(wait)
    frame = util.df(bars)
    return frame if frame is not None else pd.DataFrame()


async def _current_time(ib: IB):
    return await ib.reqCurrentTimeAsync()


class Contender(ABC):
    """One way of fetching bars. ``start`` connects; ``stop`` leaves nothing running."""

    name: str = ""
    label: str = ""
    connections: int = 1
    #: a tiny request costs a whole connection: measure fewer of them
    expensive_tiny: bool = False

    def __init__(self, client_ids: range):
        self.client_ids = client_ids
        self.host, self.port = "127.0.0.1", 0
        self.policy = PacingPolicy()

    #: seconds the pacer adds to every window (the farm's default)
    margin: float = 0.05

    @abstractmethod
    def start(self, host: str, port: int, policy: PacingPolicy) -> None:
        """Get ready to serve (connect, or open the pool); cheap contenders may do nothing."""

    def warm(self) -> None:
        """Have every connection up (the farm's workers start lazily)."""
        self.tiny()

    @abstractmethod
    def fetch(self, requests: list[BarRequest], timeout: float,
              stamps: list[float] | None = None) -> list[pd.DataFrame]:
        """Every request's bars as a DataFrame, in order; each answer's ``time.monotonic()``
        is appended to ``stamps`` as it arrives."""

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
    """``IbFarm`` with ``workers`` worker processes."""

    def __init__(self, workers: int, client_ids: range):
        super().__init__(client_ids)
        self.workers = workers
        self.name = f"farm-{workers}"
        self.label = f"farm, {workers} worker{'s' if workers > 1 else ''}"
        self.connections = workers
        self.farm: IbFarm | None = None

    def start(self, host: str, port: int, policy: PacingPolicy) -> None:
        self.host, self.port, self.policy = host, port, policy
        self.farm = IbFarm(FarmConfig(host=host, port=port, max_workers=self.workers,
                                      client_ids=self.client_ids, pacing=policy,
                                      pacing_margin=self.margin, request_timeout=60.0))

    def warm(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # concurrent requests with ids of their own (reqCurrentTime has one fixed key)
            futures = [self.farm.contract_details("AAPL") for _ in range(2 * self.workers)]
            for future in futures:
                future.result(timeout)
            ready = [w for w in self.farm.status()["workers"] if w["state"] == "ready"]
            if len(ready) >= self.workers:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: not every worker connected within {timeout} s")

    def fetch(self, requests: list[BarRequest], timeout: float,
              stamps: list[float] | None = None) -> list[pd.DataFrame]:
        if stamps is None:
            return [table.to_pandas() for table in self.farm.map_bars(requests, timeout=timeout)]
        futures = [self.farm.historical_bars(r) for r in requests]
        for future in futures:
            future.add_done_callback(lambda _f: stamps.append(time.monotonic()))
        concurrent.futures.wait(futures, timeout)
        return [future.result(0).to_pandas() for future in futures]

    def tiny(self) -> None:
        # an ib_insync method: a worker unpickles it without importing this module (pandas)
        self.farm.submit(IB.reqCurrentTimeAsync).result(10)

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

    def _open_pacer(self, host: str, port: int, policy: PacingPolicy) -> None:
        self.pacer = SharedPacer(f"{host}:{port}", policy, namespace=f"ibbench{self.name}",
                                 margin=self.margin)

    def _close_pacer(self) -> None:
        if self.pacer is not None:
            self.pacer.close()
            self.pacer = None

    @staticmethod
    def _run(coro, timeout: float):
        # not util.run: it aborts on any error ib_insync reports globally, such as a dropped
        # socket that the retries here are meant to survive
        return util.getLoop().run_until_complete(asyncio.wait_for(coro, timeout))


class GatherContender(_LoopContender):
    """One ib_insync connection; every request in flight at once (``asyncio.gather``)."""

    name = "gather"
    label = "1 ib_insync conn, gather"

    def __init__(self, client_ids: range):
        super().__init__(client_ids)
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        self.ib.client.MaxRequests = 0  # the pacer is the only throttle, as in the farm
        self._lock: asyncio.Lock | None = None

    def start(self, host: str, port: int, policy: PacingPolicy) -> None:
        self.host, self.port, self.policy = host, port, policy
        self._open_pacer(host, port, policy)
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

    async def _one(self, request: BarRequest, stamps: list[float] | None) -> pd.DataFrame:
        for _ in range(RETRIES):
            await self._connected()
            try:
                frame = await fetch_on(self.ib, request, self.pacer)
                if stamps is not None:
                    stamps.append(time.monotonic())
                return frame
            except (ConnectionError, OSError) as exc:
                log.debug("gather: %r; retrying", exc)
                await asyncio.sleep(RECONNECT_WAIT)
        raise ConnectionError(f"gather: gave up on {request}")

    def fetch(self, requests: list[BarRequest], timeout: float,
              stamps: list[float] | None = None) -> list[pd.DataFrame]:
        async def everything():
            return await asyncio.gather(*(self._one(r, stamps) for r in requests))
        return self._run(everything(), timeout)

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


class ThreadPoolContender(_LoopContender):
    """The plan's pool: ``size`` connections, each on its own thread and event loop."""

    def __init__(self, size: int, client_ids: range):
        super().__init__(client_ids)
        self.size = size
        self.name = f"threads-{size}"
        self.label = f"thread pool, {size} conns"
        self.connections = size
        self.pool: IbConnectionPool | None = None

    def start(self, host: str, port: int, policy: PacingPolicy) -> None:
        self.host, self.port, self.policy = host, port, policy
        self._open_pacer(host, port, policy)
        # a handshake is not counted against the shared message rate (as in the farm): the
        # gateway counts messages per connection, and these spread over ``size`` connections
        self.pool = IbConnectionPool(host, port, size=self.size,
                                     first_client_id=self.client_ids[0])

    def warm(self, timeout: float = 60.0) -> None:
        futures = []
        for _ in range(self.size):  # each busy while the next is asked for: a new connection
            futures.append(self.pool.submit(_slow_tiny))
        for future in futures:
            future.result(timeout)

    def fetch(self, requests: list[BarRequest], timeout: float,
              stamps: list[float] | None = None) -> list[pd.DataFrame]:
        pacer = self.pacer
        futures = [self.pool.submit(_job(request, pacer)) for request in requests]
        if stamps is not None:
            for future in futures:
                future.add_done_callback(lambda _f: stamps.append(time.monotonic()))
        end = time.monotonic() + timeout
        return [future.result(max(0.0, end - time.monotonic())) for future in futures]

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


def _job(request: BarRequest, pacer: SharedPacer | None) -> Callable:
    async def job(ib: IB) -> pd.DataFrame:
        return await fetch_on(ib, request, pacer)
    return job


class PerRequestContender(_LoopContender):
    """The old way: connect, ask, disconnect, for every request (``concurrency`` at once)."""

    name = "per-request"
    label = "new conn per request"
    expensive_tiny = True

    def __init__(self, client_ids: range, concurrency: int = 8):
        super().__init__(client_ids)
        self.concurrency = concurrency
        self._ids = itertools.cycle(client_ids)
        self.connections = concurrency

    def start(self, host: str, port: int, policy: PacingPolicy) -> None:
        self.host, self.port, self.policy = host, port, policy
        self._open_pacer(host, port, policy)

    def warm(self) -> None:
        self.tiny()

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

    def fetch(self, requests: list[BarRequest], timeout: float,
              stamps: list[float] | None = None) -> list[pd.DataFrame]:
        async def everything():
            gate = asyncio.Semaphore(self.concurrency)

            async def one(request: BarRequest) -> pd.DataFrame:
                async with gate:
                    frame = await self._with_connection(
                        lambda ib: fetch_on(ib, request, self.pacer))
                if stamps is not None:
                    stamps.append(time.monotonic())
                return frame
            return await asyncio.gather(*(one(r) for r in requests))
        return self._run(everything(), timeout)

    def tiny(self) -> None:
        self._run(self._with_connection(_current_time), 10)

    def stop(self) -> None:
        self._close_pacer()


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
