"""One client connection of the simulated gateway: handshake, then a read-dispatch loop.

A ``Session`` parses each message, answers connection set-up and contract details at once,
and runs each historical request as a task (IB's checks first, then the pacing rules, then
bars from the market model, built off the loop and cached). Shared state, knobs and
counters live on the ``SimGateway`` that accepted the connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ibfarm import bars as barlib
from ibfarm.pacing import PacedRequest
from ibfarm.sim import hmds
from ibfarm.sim import protocol as p
from ibfarm.sim.market import Instrument

if TYPE_CHECKING:
    from ibfarm.sim.gateway import SimGateway

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



class Session:
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
        text = (str(int(head.timestamp())) if fmt == 2
                else hmds.format_zoned(head, self.gw.time_zone))
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
