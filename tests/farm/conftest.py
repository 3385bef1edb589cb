"""Fixtures for farm tests: simulated gateways, farms that are always shut down, a direct
ib_insync client for reference answers, and a check that no worker process outlives a test."""

from __future__ import annotations

import asyncio
import multiprocessing.forkserver
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import psutil
import pyarrow as pa
import pytest

from ibfarm import IbFarm
from ibfarm.backend import IB, util
from ibfarm.bars import BAR_SCHEMA, BarRequest
from ibfarm.contracts import make_contract
from ibfarm.sim import SimGateway
from tests.conftest import NOW, gateways, wait_until

#: Every wait in these tests ends within this many seconds.
WAIT = 20.0

#: The stocks of the simulator's market, for spreading requests over contracts.
SYMBOLS = ("AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL")
#: The day before the shared clock's day: the end of the requests below.
END = NOW - timedelta(days=1)


def hourly(n: int) -> list[BarRequest]:
    """``n`` distinct one-day requests of hourly bars (large bars: no small-bar rules)."""
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], "1 hour", "1 D",
                       end=END - timedelta(days=i // len(SYMBOLS))) for i in range(n)]


def worker_processes() -> list[psutil.Process]:
    """Live children of this process's forkserver (that is, farm workers)."""
    pid = multiprocessing.forkserver._forkserver._forkserver_pid
    if pid is None:
        return []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., SimGateway]]:
    """Start simulated gateways (fixed clock, IB's pacing) with the knobs a test needs."""
    with gateways() as make:
        yield make


@pytest.fixture
def sim(make_gateway) -> SimGateway:
    """A gateway without pacing rules (the direct reference client repeats farm requests)."""
    return make_gateway(pacing="off")


@pytest.fixture
def make_farm() -> Iterator[Callable[..., IbFarm]]:
    """Farms that are shut down after the test; then no worker process may be left."""
    farms: list[IbFarm] = []

    def make(gateway: SimGateway, **overrides) -> IbFarm:
        overrides.setdefault("request_timeout", 15.0)
        overrides.setdefault("connect_timeout", 5.0)
        farm = IbFarm(port=gateway.port, **overrides)
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        farm.shutdown(wait=True, cancel_futures=True)
    wait_until(lambda: not worker_processes(), timeout=10, what="workers to exit")


@pytest.fixture
def farm(sim, make_farm) -> IbFarm:
    return make_farm(sim)


class DirectClient:
    """A plain ib_insync connection on a loop of its own thread (the reference client)."""

    def __init__(self, port: int, client_id: int, host: str = "127.0.0.1"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        self.call(self.ib.connectAsync(host, port, client_id, timeout=10, readonly=True))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)  # ib_insync looks its loop up
        self.loop.run_forever()

    def call(self, coro, timeout: float = WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def bars(self, request: BarRequest) -> list:
        contract = make_contract(request.symbol, request.sec_type, request.exchange,
                                 request.currency)
        return self.call(self.ib.reqHistoricalDataAsync(
            contract, request.end_utc() or "", request.duration, request.bar_size,
            request.what_to_show, request.use_rth, formatDate=2, timeout=0))

    def bars_df(self, request: BarRequest):
        return util.df(self.bars(request))

    def close(self) -> None:
        async def disconnect():
            self.ib.disconnect()
        self.call(disconnect())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def direct(sim) -> Iterator[DirectClient]:
    client = DirectClient(sim.port, client_id=99)
    yield client
    client.close()


def table_from_ib(bars: list) -> pa.Table:
    """Reference conversion of ib_insync bars to the bar schema (via plain Python)."""
    from datetime import date, datetime, timezone

    def stamp(d):
        if isinstance(d, datetime):
            return d.astimezone(timezone.utc)
        assert isinstance(d, date)
        return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)

    return pa.table({
        "timestamp": [stamp(b.date) for b in bars],
        "open": [b.open for b in bars], "high": [b.high for b in bars],
        "low": [b.low for b in bars], "close": [b.close for b in bars],
        "volume": [float(b.volume) for b in bars], "wap": [b.average for b in bars],
        "bar_count": [b.barCount for b in bars],
    }, schema=BAR_SCHEMA)
