"""A simulated IB Gateway: a TCP server speaking the real TWS socket protocol.

Unmodified clients (ib_insync, the official ``ibapi``) connect to it::

    client ──TCP── _Session (one per connection) ── SimGateway (shared state, knobs, stats)
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

from ibfarm import bars as barlib
from ibfarm.pacing import PacedRequest, PacingPolicy, PacingRules
from ibfarm.sim import hmds
from ibfarm.sim import protocol as p
from ibfarm.sim.market import Instrument, MarketModel

log = logging.getLogger(__name__)

CLIENT_ID_IN_USE = (
    "Unable to connect as the client id is already in use. Retry with a unique client id.")
NO_SECURITY = "No security definition has been found for the request"
AMBIGUOUS = "The contract description specified for {} is ambiguous."
RATE_EXCEEDED = "Max rate of messages per second has been exceeded:max={} rec={} (543)"
PARSE_ERROR = "Error reading request:Message type -1.  Unable to parse data. {}"
NOT_FOUND_366 = "No historical data query found for ticker id:{}"
NO_PERMISSION = hmds.HMDS_PREFIX + "No market data permissions for {} {}"
CONNECTIVITY = {
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
}
FARM_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)


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
        self._builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim-bars")
        self._stats = _Stats()
        self._sessions: set[_Session] = set()
        self._client_ids: dict[int, _Session] = {}
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
        session = _Session(self, reader, writer)
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


class _Session:
    """One client connection: handshake, then a read-dispatch loop."""

    def __init__(self, gateway: SimGateway, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.gw = gateway
        self.reader = reader
        self.writer = writer
        self.version = 0
        self.client_id: int | None = None
        self.historical: dict[int, asyncio.Task] = {}
        self.hist_count = 0
        self._recent: collections.deque[float] = collections.deque()
        self._closed = False
        self._handlers = {
            p.START_API: self._start_api,
            p.REQ_CURRENT_TIME: lambda r: self.send(p.CURRENT_TIME, 1, gateway.epoch()),
            p.REQ_IDS: lambda r: self.send(p.NEXT_VALID_ID, 1, self.gw.next_order_id()),
            p.REQ_MANAGED_ACCTS: lambda r: self.send(p.MANAGED_ACCTS, 1, self.gw.accounts),
            p.REQ_POSITIONS: lambda r: self.send(p.POSITION_END, 1),
            p.REQ_OPEN_ORDERS: lambda r: self.send(p.OPEN_ORDER_END, 1),
            p.REQ_AUTO_OPEN_ORDERS: lambda r: None,
            p.REQ_COMPLETED_ORDERS: lambda r: self.send(p.COMPLETED_ORDERS_END),
            p.REQ_ACCT_DATA: self._account_data,
            p.REQ_ACCOUNT_UPDATES_MULTI: self._account_updates_multi,
            p.REQ_EXECUTIONS: self._executions,
            p.REQ_CONTRACT_DATA: self._contract_data,
            p.REQ_HISTORICAL_DATA: self._historical_data,
            p.CANCEL_HISTORICAL_DATA: self._cancel_historical,
            p.REQ_HEAD_TIMESTAMP: self._head_timestamp,
            p.CANCEL_HEAD_TIMESTAMP: lambda r: None,
        }

    # ----------------------------------------------------------------- I/O
    async def run(self) -> None:
        try:
            if not await self._handshake():
                return
            while not self._closed:
                payload = await self._read_frame()
                if payload is None:
                    return
                self._dispatch(p.split_fields(payload))
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    async def _read_frame(self) -> bytes | None:
        try:
            header = await self.reader.readexactly(4)
            return await self.reader.readexactly(p.header_length(header))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _handshake(self) -> bool:
        if await self.reader.readexactly(4) != b"API\0":
            return False
        payload = await self._read_frame()
        try:
            self.version = p.negotiate((payload or b"").decode("ascii", "replace"))
        except p.ProtocolError as exc:
            log.info("refusing client: %s", exc)
            return False
        stamp = self.gw.now().astimezone(timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        self.writer.write(p.encode(self.version, stamp))
        await self.writer.drain()  # the official client reads the handshake reply on its own
        return True

    def send(self, *fields: object) -> None:
        self.write(p.encode(*fields))

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.writer.write(data)

    def error(self, req_id: int, code: int, text: str) -> None:
        self.gw._stats.errors_sent[code] += 1
        self.gw._stats.client(self.client_id)["errors"] += 1
        self.write(p.error_message(self.version, req_id, code, text))

    def drop(self) -> None:
        """Abort the connection without a goodbye (a network failure, a restart)."""
        if not self._closed:
            self.gw._stats.dropped += 1
            self.writer.transport.abort()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self.historical.values():
            task.cancel()
        self.writer.close()

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except (ValueError, IndexError):
            head = fields[0] if fields else ""
            return self._malformed(f'java.lang.NumberFormatException: For input string: "{head}"')
        if msg_id != p.START_API and not self._within_message_rate():
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            log.debug("ignoring message %d from client %s", msg_id, self.client_id)
            return
        try:
            handler(p.FieldReader(fields[1:]))
        except p.ProtocolError as exc:
            self._malformed(str(exc))

    def _malformed(self, detail: str) -> None:
        self.error(-1, 320, PARSE_ERROR.format(detail))
        self.close()

    def _within_message_rate(self) -> bool:
        policy = self.gw.policy
        if not policy.enabled:
            return True
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] >= policy.message_window:
            self._recent.popleft()
        if len(self._recent) <= policy.message_rate:
            return True
        self.error(-1, 100, RATE_EXCEEDED.format(policy.message_rate, len(self._recent)))
        self.close()
        return False

    # ----------------------------------------------------------------- connection set-up
    def _start_api(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        client_id = reader.int()
        if client_id in self.gw._client_ids:
            self.error(-1, 326, CLIENT_ID_IN_USE)
            self.close()
            return
        self.client_id = client_id
        self.gw._client_ids[client_id] = self
        self.gw._stats.client(client_id)["connections"] += 1
        self.send(p.MANAGED_ACCTS, 1, self.gw.accounts)
        self.send(p.NEXT_VALID_ID, 1, self.gw.next_order_id())
        for code, text in FARM_NOTICES:
            self.error(-1, code, text)

    def _account_data(self, reader: p.FieldReader) -> None:
        reader.int()
        reader.bool()
        self.send(p.ACCT_DOWNLOAD_END, 1, reader.text())

    def _account_updates_multi(self, reader: p.FieldReader) -> None:
        reader.int()
        self.send(p.ACCOUNT_UPDATE_MULTI_END, 1, reader.int())

    def _executions(self, reader: p.FieldReader) -> None:
        reader.int()
        self.send(p.EXECUTION_DATA_END, 1, reader.int())

    def _count(self, kind: str) -> None:
        self.gw._stats.requests[kind] += 1
        self.gw._stats.client(self.client_id)["requests"] += 1

    # ----------------------------------------------------------------- contract details
    def _contract_data(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        req_id = reader.int()
        contract = p.read_contract(reader)
        reader.skip(2)  # secIdType, secId
        if self.version >= p.BOND_ISSUERID and reader.remaining():
            reader.text()
        self._count("contract_details")
        found = self.gw.market.resolve(**_resolve_args(contract))
        if not found:
            self.error(req_id, 200, NO_SECURITY)
            return
        for inst in found:
            self.write(_contract_message(self.version, req_id, inst, self.gw))
        self.send(p.CONTRACT_DATA_END, 1, req_id)

    def _resolve_one(self, req_id: int, contract: dict) -> Instrument | None:
        found = self.gw.market.resolve(**_resolve_args(contract))
        if len(found) == 1:
            return found[0]
        text = NO_SECURITY if not found else AMBIGUOUS.format(contract["symbol"])
        self.error(req_id, 200, text)
        return None

    # ----------------------------------------------------------------- head timestamp
    def _head_timestamp(self, reader: p.FieldReader) -> None:
        req_id = reader.int()
        contract = p.read_contract(reader)
        use_rth, what, fmt = reader.bool(), reader.text().upper(), reader.int(1)
        self._count("head_timestamp")
        inst = self._resolve_one(req_id, contract)
        if inst is None:
            return
        if what not in barlib.WHAT_TO_SHOW:
            self.error(req_id, 321, hmds.WHAT_INVALID.format(what))
            return
        paced = PacedRequest(("head", inst.con_id, use_rth, what), (inst.con_id, what), what, None)
        if not self._paced(req_id, paced):
            return
        if not inst.what_to_show_ok(what):
            text = hmds.NO_DATA.format(inst.local_symbol, inst.exchange, what.title())
            self.error(req_id, 162, text)
            return
        head = self.gw.market.head_timestamp(inst, what, use_rth)
        text = str(int(head.timestamp())) if fmt == 2 else hmds.format_stamp(head)
        self.send(p.HEAD_TIMESTAMP, req_id, text)

    def _paced(self, req_id: int, paced: PacedRequest) -> bool:
        broken = self.gw._rules.check(paced, time.monotonic())
        if broken is None:
            return True
        self.gw._stats.pacing_violations += 1
        self.gw._stats.pacing_rules[broken] += 1
        self.error(req_id, 162, hmds.HMDS_PREFIX + self.gw.pacing_text)
        return False

    # ----------------------------------------------------------------- historical bars
    def _historical_data(self, reader: p.FieldReader) -> None:
        query = hmds.BarQuery.parse(reader)
        self._count("historical")
        self.hist_count += 1
        if self._should_drop():
            self.drop()
            return
        checked = self._validate(query)
        if checked is None:
            return
        inst, start, end = checked
        stats = self.gw._stats
        stats.open_requests += 1
        stats.max_open_requests = max(stats.max_open_requests, stats.open_requests)
        task = asyncio.get_running_loop().create_task(self._serve(query, inst, start, end))
        self.historical[query.req_id] = task
        task.add_done_callback(lambda t, rid=query.req_id: self._finished(rid, t))

    def _should_drop(self) -> bool:
        gw = self.gw
        if gw.drop_after is not None and self.hist_count > gw.drop_after:
            return True
        return gw.drop_rate > 0 and gw._faults.random() < gw.drop_rate

    def _validate(self, q: hmds.BarQuery):
        """IB's checks in IB's order; sends the error and returns None on the first failure."""
        inst = self._resolve_one(q.req_id, q.contract)
        if inst is None:
            return None
        try:
            bar_size = barlib.normalize_bar_size(q.bar_size)
        except ValueError:
            return self.error(q.req_id, 321, hmds.BAR_SIZE_INVALID)
        try:
            barlib.parse_duration(q.duration)
        except ValueError:
            return self.error(q.req_id, 321, hmds.DURATION_INVALID.format(q.duration))
        if q.what_to_show not in barlib.WHAT_TO_SHOW:
            return self.error(q.req_id, 321, hmds.WHAT_INVALID.format(q.what_to_show))
        now = self.gw.now()
        try:
            end = min(hmds.parse_end(q.end_text, now, self.gw.time_zone), now)
        except ValueError:
            return self.error(q.req_id, 10314, hmds.END_INVALID)
        if not barlib.duration_allowed(bar_size, q.duration):
            return self.error(q.req_id, 162, hmds.TOO_LONG)
        policy = self.gw.policy
        if policy.enabled and self.gw._stats.open_requests >= policy.max_open_requests:
            return self.error(q.req_id, 322, hmds.TOO_MANY_OPEN.format(policy.max_open_requests))
        paced = PacedRequest(q.identity(), (inst.con_id, inst.exchange, q.what_to_show),
                             q.what_to_show, barlib.bar_seconds(bar_size))
        if not self._paced(q.req_id, paced):
            return None
        if self.gw._hmds_down:
            return self.error(q.req_id, 162, hmds.FARM_DOWN)
        if self.gw.no_permission_symbols & {inst.symbol, inst.local_symbol}:
            exchange = inst.primary_exchange or inst.exchange
            return self.error(q.req_id, 162, NO_PERMISSION.format(exchange, inst.sec_type))
        return inst, hmds.range_start(end, q.duration), end

    async def _serve(self, q: hmds.BarQuery, inst: Instrument, start: datetime, end: datetime):
        gw = self.gw
        generation = gw._generation
        stalled = {inst.symbol, inst.local_symbol, q.contract["symbol"]} & gw.stall_symbols
        if gw._stall_next > 0 or stalled:
            gw._stall_next = max(0, gw._stall_next - 1)
            await asyncio.Event().wait()  # never answered; only a cancel or a drop ends it
        bar_size = barlib.normalize_bar_size(q.bar_size)
        if not inst.what_to_show_ok(q.what_to_show):
            body, count = b"", 0
        else:
            key = (inst.con_id, bar_size, q.what_to_show, q.use_rth, q.format_date,
                   int(start.timestamp()), int(end.timestamp()))
            hit = gw._encoder.lookup(key)
            if hit is None:  # build off the loop, which keeps reading (and timing) requests
                hit = await asyncio.get_running_loop().run_in_executor(
                    gw._builder, gw._build, key,
                    lambda: gw.market.bars(inst, bar_size, start, end, q.use_rth, q.what_to_show),
                    q.format_date, gw.time_zone)
            body, count = hit
        delay = gw.latency + gw.latency_per_bar * count
        if delay > 0:
            await asyncio.sleep(delay)
        await gw._ib_up.wait()
        if generation != gw._generation:
            return  # lost in a connectivity outage (1101): IB never answers it
        if count == 0:
            self.error(q.req_id, 162, hmds.NO_DATA.format(
                inst.local_symbol, q.contract["exchange"] or inst.exchange, q.what_to_show.title()))
            return
        header = "\0".join((str(p.HISTORICAL_DATA), str(q.req_id), hmds.format_stamp(start),
                            hmds.format_stamp(end), str(count), "")).encode()
        # Header and body go out without joining them: a large body is not copied again.
        self.writer.writelines([(len(header) + len(body)).to_bytes(4, "big"), header, body])
        gw._stats.bars_sent += count
        gw._stats.client(self.client_id)["bars"] += count
        await self.writer.drain()

    def _finished(self, req_id: int, task: asyncio.Task) -> None:
        if self.historical.pop(req_id, None) is not None:
            self.gw._stats.open_requests -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("historical request %d failed inside the gateway", req_id,
                      exc_info=task.exception())
            self.error(req_id, 162, hmds.HMDS_PREFIX + "HMDS server error")

    def _cancel_historical(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        req_id = reader.int()
        self._count("cancel_historical")
        task = self.historical.get(req_id)
        if task is None or task.done():
            self.error(req_id, 366, NOT_FOUND_366.format(req_id))
            return
        task.cancel()
        self.error(req_id, 162, hmds.CANCELLED.format(req_id))


def _resolve_args(contract: dict) -> dict:
    return {k: contract[k] for k in ("symbol", "sec_type", "exchange", "currency", "con_id",
                                     "local_symbol", "last_trade")}


def _contract_message(version: int, req_id: int, inst: Instrument, gw: SimGateway) -> bytes:
    """CONTRACT_DATA for ``inst`` in the layout of server version ``version``."""
    today = gw.now().astimezone(timezone.utc).date()
    trading = gw.market.trading_hours(inst, today, 7, liquid=False)
    liquid = gw.market.trading_hours(inst, today, 7, liquid=True)
    head = [p.CONTRACT_DATA] + ([8] if version < p.SIZE_RULES else []) + [
        req_id, inst.symbol, inst.sec_type, inst.last_trade_date, 0.0, "", inst.exchange,
        inst.currency, inst.local_symbol, inst.market_name, inst.trading_class, inst.con_id,
        inst.min_tick]
    if version < p.SIZE_RULES:
        head.append(1)  # mdSizeMultiplier
    body = [inst.multiplier, "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP", inst.valid_exchanges,
            1, 0, inst.long_name, inst.primary_exchange, inst.last_trade_date[:6], "", "", "",
            inst.time_zone, trading, liquid, "", "", 0,
            1, "", "", "26,26" if inst.sec_type == "STK" else "", inst.last_trade_date, "COMMON"
            if inst.sec_type == "STK" else ""]
    if version == 163:
        body.append(1)
    elif version >= p.SIZE_RULES:
        body += [1, 1, 1]
    return p.encode(*head, *body)
