"""A simulated IB Gateway: a TCP server speaking the real TWS socket protocol.

Unmodified clients (ib_insync, the official ``ibapi``) connect to it::

    client ──TCP── Session (one per connection) ── SimGateway (shared state, knobs, stats)
                      │  handshake, START_API, connect-time requests
                      │  REQ_CONTRACT_DATA  ─► MarketModel.resolve ─► CONTRACT_DATA
                      └─ REQ_HISTORICAL_DATA ─► hmds checks ─► PacingRules ─► MarketModel.bars
                                                               └─► BarEncoder (cached) ─► socket

The server runs an asyncio loop on a thread of its own, so a test or benchmark can start it
in-process (``with SimGateway() as gw: ... gw.port``) or run it as ``ibfarm gateway``.
Faults (latency, stalls, dropped connections, restarts, a historical-farm outage) are knobs.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from ibfarm.pacing import PacingPolicy, PacingRules
from ibfarm.sim import hmds
from ibfarm.sim.market import MarketModel
from ibfarm.sim.session import CONNECTIVITY, Session

log = logging.getLogger(__name__)

class _Stats:
    """Counters the gateway keeps; read with ``SimGateway.stats()``."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.bars_sent = 0
        self.open_requests = 0
        self.max_open_requests = 0
        self.pacing_violations = 0
        self.pacing_rules: collections.Counter[str] = collections.Counter()
        self.errors_sent: collections.Counter[int] = collections.Counter()
        self.dropped = 0
        self.per_client: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)

    def client(self, client_id: int | None) -> collections.Counter[str]:
        return self.per_client[-1 if client_id is None else client_id]


class SimGateway:
    """The simulated gateway. Every knob is also a flag of ``ibfarm gateway``.

    Args:
        port: TCP port; 0 picks a free one (read it back from ``.port``).
        host: address to bind; loopback unless told otherwise.
        seed: seed of the market model (the same seed always gives the same bars).
        pacing: IB's pacing rules to enforce: a ``PacingPolicy`` or a preset name.
        latency: seconds before each historical answer.
        latency_per_bar: extra seconds per bar in an answer.
        stall_symbols: historical requests for these symbols are never answered.
        no_permission_symbols: historical requests for these symbols get 162 "No market data
            permissions" (an account without the subscription).
        drop_after: drop a connection when it sends its Nth+1 historical request.
        drop_rate: probability that a historical request drops its connection.
        fault_seed: seed of the random faults.
        now: the gateway's clock (a callable returning an aware datetime); real time if None.
        time_zone: the "TWS login" zone used for dates in formatDate=1 answers.
        accounts: managed accounts reported to clients.
        pacing_text: suffix of the 162 pacing-violation text (older gateways say
            "Historical data request pacing violation").
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        seed: int = 0,
        market: MarketModel | None = None,
        pacing: PacingPolicy | str = "ib",
        latency: float = 0.0,
        latency_per_bar: float = 0.0,
        stall_symbols: Iterable[str] = (),
        no_permission_symbols: Iterable[str] = (),
        drop_after: int | None = None,
        drop_rate: float = 0.0,
        fault_seed: int = 0,
        now: Callable[[], datetime] | None = None,
        time_zone: str = "US/Eastern",
        accounts: Iterable[str] = ("DU123456",),
        pacing_text: str = "pacing violation",
    ):
        self.host = host
        self.port = port
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.market = market or MarketModel(seed=seed, now=self.now)
        self.policy = PacingPolicy.coerce(pacing)
        self.latency = latency
        self.latency_per_bar = latency_per_bar
        self.stall_symbols = set(stall_symbols)
        self.no_permission_symbols = set(no_permission_symbols)
        self.drop_after = drop_after
        self.drop_rate = drop_rate
        self.time_zone = time_zone
        self.accounts = ",".join(accounts)
        self.pacing_text = pacing_text
        self._faults = random.Random(fault_seed)
        self._rules = PacingRules(self.policy)
        self._encoder = hmds.BarEncoder()
        self._build_cpu = 0.0
        self._builder: concurrent.futures.ThreadPoolExecutor | None = None
        self._stats = _Stats()
        self._sessions: set[Session] = set()
        self._client_ids: dict[int, Session] = {}
        self._stall_next = 0
        self._hmds_down = False
        self._ib_up: asyncio.Event | None = None  # cleared while IB's connectivity is lost
        self._generation = 0  # bumped when connectivity returns with data lost
        self._next_order_id = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> SimGateway:
        """Start serving on a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._stopped.clear()
        self._builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim-bars")

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:  # report bind errors to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close_all())
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name=f"sim-gateway-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("simulated gateway did not start")
        if failure:
            raise failure[0]
        log.info("simulated gateway listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listening socket."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = None
        self._builder.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SimGateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until the gateway is stopped (``ibfarm gateway``)."""
        if self._loop is None:
            self.start()
        self._stopped.wait()

    # ----------------------------------------------------------------- runtime knobs
    def stats(self) -> dict:
        """A snapshot of the counters (safe to call from any thread)."""
        return self._call(self._snapshot)

    def restart(self, down_for: float = 0.5) -> None:
        """Drop every connection and close the port for ``down_for`` seconds, then reopen it."""
        self._call(self._restart(down_for), timeout=down_for + 10)

    def drop_connections(self) -> int:
        """Drop every client connection now (the port stays open); returns how many."""
        return self._call(self._drop_all)

    def hmds_outage(self, duration: float) -> None:
        """Historical-farm outage: 2105 now, historical requests fail, 2106 after ``duration``."""
        self._call(self._begin_outage, duration)

    def connectivity_outage(self, duration: float, data_lost: bool = True) -> None:
        """IB's servers unreachable: 1100 now; answers wait; after ``duration`` 1101 (requests
        in flight are lost and never answered) or 1102 (they are answered)."""
        self._call(self._begin_connectivity_outage, duration, data_lost)

    def stall_next(self, count: int = 1) -> None:
        """Leave the next ``count`` historical requests unanswered."""
        def bump() -> None:
            self._stall_next += count
        self._call(bump)

    def _call(self, target, *args, timeout: float = 10.0):
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulated gateway is not running")
        if asyncio.iscoroutine(target):
            return asyncio.run_coroutine_threadsafe(target, loop).result(timeout)

        async def wrapper():
            return target(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    # ----------------------------------------------------------------- loop-side helpers
    async def _bind(self) -> None:
        if self._ib_up is None:
            self._ib_up = asyncio.Event()
            self._ib_up.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _restart(self, down_for: float) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._drop_all()
        await asyncio.sleep(down_for)
        await self._bind()

    def _drop_all(self) -> int:
        sessions = list(self._sessions)
        for session in sessions:
            session.drop()
        return len(sessions)

    def _begin_outage(self, duration: float) -> None:
        self._hmds_down = True
        self._broadcast(2105, "HMDS data farm connection is broken:ushmds")

        def end() -> None:
            self._hmds_down = False
            self._broadcast(2106, "HMDS data farm connection is OK:ushmds")
        asyncio.get_running_loop().call_later(duration, end)

    def _begin_connectivity_outage(self, duration: float, data_lost: bool) -> None:
        self._ib_up.clear()
        self._broadcast(1100, CONNECTIVITY[1100])

        def end() -> None:
            if data_lost:
                self._generation += 1
            self._ib_up.set()
            code = 1101 if data_lost else 1102
            self._broadcast(code, CONNECTIVITY[code])
        asyncio.get_running_loop().call_later(duration, end)

    def _broadcast(self, code: int, text: str) -> None:
        for session in list(self._sessions):
            session.error(-1, code, text)

    def _snapshot(self) -> dict:
        s = self._stats
        return {
            "connections_total": s.connections_total,
            "connections_open": len(self._sessions),
            "client_ids": sorted(self._client_ids),
            "requests": dict(s.requests),
            "bars_sent": s.bars_sent,
            "open_requests": s.open_requests,
            "max_open_requests": s.max_open_requests,
            "pacing_violations": s.pacing_violations,
            "pacing_rules": dict(s.pacing_rules),
            "errors_sent": dict(s.errors_sent),
            "dropped": s.dropped,
            "per_client": {cid: dict(c) for cid, c in s.per_client.items()},
            "cpu_seconds": self._cpu_seconds(),
        }

    def _cpu_seconds(self) -> float:
        # _snapshot runs on the loop's thread: its CPU time plus the bar builder's.
        return time.thread_time() + self._build_cpu

    def _build(self, *args) -> tuple[bytes, int]:
        """``BarEncoder.build`` on the builder thread, counting its CPU time."""
        started = time.thread_time()
        try:
            return self._encoder.build(*args)
        finally:
            self._build_cpu += time.thread_time() - started

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self._sessions.add(session)
        self._stats.connections_total += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # the gateway is stopping; asyncio's stream callback must not see this
        finally:
            self._sessions.discard(session)
            if session.client_id is not None and self._client_ids.get(session.client_id) is session:
                del self._client_ids[session.client_id]
            session.close()

    def epoch(self) -> int:
        """The gateway clock in whole seconds."""
        return int(self.now().timestamp())

    def next_order_id(self) -> int:
        self._next_order_id += 1
        return self._next_order_id
