"""One client connection of the simulated gateway: handshake, then a read-dispatch loop.

::

    socket ─► frames ─► _dispatch ─► connection set-up (START_API, what IB.connect() asks)
                              ├────► REQ_CONTRACT_DATA ─► House.market.resolve ─► CONTRACT_DATA
                              ├────► REQ_HEAD_TIMESTAMP ─► checks, pacing ─► HEAD_TIMESTAMP
                              ├────► REQ_HISTORICAL_DATA ─► _validate (IB's checks in IB's
                              │        order, pacing) ─► task: _serve (bars built off the
                              │        loop, cached; latency; outages) ─► HISTORICAL_DATA
                              ├────► REQ_HISTORICAL_TICKS ─► up to 1000 ticks
                              └────► anything else ─► an error answer (never silence)

The state sessions share (settings, market, rules, stats, client ids, outages) is the
``House`` each session is handed; a session keeps only its own connection's state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime, timedelta, timezone

from ibfarm import bars as barlib
from ibfarm.pacing import PacedRequest
from ibfarm.sim import hmds
from ibfarm.sim import protocol as p
from ibfarm.sim import texts as t
from ibfarm.sim.house import House
from ibfarm.sim.instruments import BAR_DATA, Instrument
from ibfarm.sim.latency import answer_delay

log = logging.getLogger(__name__)

#: Where the request id sits in requests the simulator does not serve (field index after the
#: message id), so their error answer reaches the caller's request: market data, depth,
#: real-time bars, scanners, fundamentals, histogram, tick-by-tick, PnL, news, schedule.
_REQ_ID_FIELD = {1: 1, 2: 1, 10: 1, 11: 1, 19: 1, 22: 1, 23: 1, 50: 1, 51: 1, 52: 1,
                 62: 1, 88: 0, 89: 0, 92: 0, 94: 0, 97: 0, 98: 0, 100: 0, 102: 0, 104: 0,
                 86: 0, 85: 0}


class Session:
    """One client connection: handshake, then a read-dispatch loop."""

    def __init__(self, house: House, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.house = house
        self.reader = reader
        self.writer = writer
        self.version = 0
        self.client_id: int | None = None
        self.historical: dict[int, asyncio.Task] = {}
        self.hist_count = 0
        self._hmds_woken = False
        self._recent: collections.deque[float] = collections.deque()
        self._closed = False
        self._handlers = {
            p.START_API: self._start_api,
            p.REQ_CURRENT_TIME: lambda r: self.send(p.CURRENT_TIME, 1, house.epoch()),
            p.REQ_IDS: lambda r: self.send(p.NEXT_VALID_ID, 1, house.next_order_id()),
            p.REQ_MANAGED_ACCTS: lambda r: self.send(p.MANAGED_ACCTS, 1, self._accounts()),
            p.REQ_POSITIONS: lambda r: self.send(p.POSITION_END, 1),
            p.REQ_OPEN_ORDERS: lambda r: self.send(p.OPEN_ORDER_END, 1),
            p.REQ_AUTO_OPEN_ORDERS: lambda r: None,
            p.REQ_COMPLETED_ORDERS: lambda r: self.send(p.COMPLETED_ORDERS_END),
            p.REQ_ACCT_DATA: self._account_data,
            p.REQ_ACCOUNT_UPDATES_MULTI: self._account_updates_multi,
            # ib_async asks for the account summary again after every 1102
            p.REQ_ACCOUNT_SUMMARY: self._account_summary,
            p.CANCEL_ACCOUNT_SUMMARY: lambda r: None,
            p.REQ_EXECUTIONS: self._executions,
            p.REQ_CONTRACT_DATA: self._contract_data,
            p.REQ_HISTORICAL_DATA: self._historical_data,
            p.CANCEL_HISTORICAL_DATA: self._cancel_historical,
            p.REQ_HEAD_TIMESTAMP: self._head_timestamp,
            p.CANCEL_HEAD_TIMESTAMP: lambda r: None,
            p.REQ_HISTORICAL_TICKS: self._historical_ticks,
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
        stamp = self.house.now().astimezone(timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        self.writer.write(p.encode(self.version, stamp))
        await self.writer.drain()  # the official client reads the handshake reply on its own
        return True

    def send(self, *fields: object) -> None:
        self.write(p.encode(*fields))

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.writer.write(data)

    def error(self, req_id: int, code: int, text: str) -> None:
        self.house.stats.errors_sent[code] += 1
        self.house.stats.client(self.client_id)["errors"] += 1
        self.write(p.error_message(self.version, req_id, code, text))

    def drop(self) -> None:
        """Abort the connection without a goodbye (a network failure, a restart)."""
        if not self._closed:
            self.house.stats.dropped += 1
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
            return self._not_served(msg_id, fields[1:])
        try:
            handler(p.FieldReader(fields[1:]))
        except p.ProtocolError as exc:
            self._malformed(str(exc))

    def _not_served(self, msg_id: int, fields: list[str]) -> None:
        """An error answer for a request the simulator does not serve, on its request id
        where the layout is known (so the caller's request ends instead of hanging)."""
        req_id = -1
        where = _REQ_ID_FIELD.get(msg_id)
        if where is not None and where < len(fields):
            try:
                req_id = int(fields[where])
            except ValueError:
                pass
        log.debug("message %d from client %s is not served", msg_id, self.client_id)
        self._count("not_served")
        self.error(req_id, 322, t.NOT_SERVED.format(msg_id))

    def _malformed(self, detail: str) -> None:
        self.error(-1, 320, t.PARSE_ERROR.format(detail))
        self.close()

    def _within_message_rate(self) -> bool:
        policy = self.house.policy
        if not policy.enabled:
            return True
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] >= policy.message_window:
            self._recent.popleft()
        if len(self._recent) <= policy.message_rate:
            return True
        self.error(-1, 100, t.RATE_EXCEEDED.format(policy.message_rate, len(self._recent)))
        self.close()
        return False

    def _poisoned(self, contract: dict) -> bool:
        """Drop the connection if the request names a poison symbol (no answer at all)."""
        if not self.house.names("poison_symbols", contract["symbol"], contract["local_symbol"]):
            return False
        log.info("client %s asked for poison symbol %s: dropping it", self.client_id,
                 contract["symbol"] or contract["local_symbol"])
        self.house.stats.poisoned += 1
        self.drop()
        return True

    # ----------------------------------------------------------------- connection set-up
    def _accounts(self) -> str:
        return ",".join(self.house.settings.accounts)

    def _start_api(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        client_id = reader.int()
        if not self.house.claim(client_id, self):
            self.error(-1, 326, t.CLIENT_ID_IN_USE)
            self.close()
            return
        self.client_id = client_id
        self.house.stats.client(client_id)["connections"] += 1
        self.send(p.MANAGED_ACCTS, 1, self._accounts())
        self.send(p.NEXT_VALID_ID, 1, self.house.next_order_id())
        for code, text in t.CONNECT_NOTICES:
            self.error(-1, code, text)
        if self.house.maintenance:
            self.error(-1, 1100, t.CONNECTIVITY[1100])

    def _account_data(self, reader: p.FieldReader) -> None:
        reader.int()
        reader.bool()
        self.send(p.ACCT_DOWNLOAD_END, 1, reader.text())

    def _account_updates_multi(self, reader: p.FieldReader) -> None:
        reader.int()
        self.send(p.ACCOUNT_UPDATE_MULTI_END, 1, reader.int())

    def _account_summary(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        self.send(p.ACCOUNT_SUMMARY_END, 1, reader.int())  # a data-only account: no values

    def _executions(self, reader: p.FieldReader) -> None:
        reader.int()
        self.send(p.EXECUTION_DATA_END, 1, reader.int())

    def _count(self, kind: str) -> None:
        self.house.stats.requests[kind] += 1
        self.house.stats.client(self.client_id)["requests"] += 1

    def _wake_hmds(self) -> None:
        """2106 before the first historical answer: the farm was inactive (2107) until now."""
        if not self._hmds_woken:
            self._hmds_woken = True
            self.error(-1, *t.HMDS_OK)

    # ----------------------------------------------------------------- contract details
    def _contract_data(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        req_id = reader.int()
        contract = p.read_contract(reader)
        reader.skip(2)  # secIdType, secId
        if self.version >= p.BOND_ISSUERID and reader.remaining():
            reader.text()
        self._count("contract_details")
        if self._poisoned(contract):
            return
        found = self.house.market.resolve(**_resolve_args(contract))
        if self.house.maintenance:
            if self.house.refusing or not found:
                self.error(req_id, 200, t.NO_SECURITY)
                return
            self._later(self._contract_answer(req_id, found))
            return
        self._send_details(req_id, found)

    async def _contract_answer(self, req_id: int, found: list[Instrument]) -> None:
        await self.house.ib_up.wait()   # held through maintenance, answered after 1102
        self._send_details(req_id, found)

    def _send_details(self, req_id: int, found: list[Instrument]) -> None:
        if not found:
            self.error(req_id, 200, t.NO_SECURITY)
            return
        for inst in found:
            self.write(_contract_message(self.version, req_id, inst, self.house))
        self.send(p.CONTRACT_DATA_END, 1, req_id)

    def _later(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        key = -id(task)
        self.historical[key] = task
        task.add_done_callback(lambda _t: self.historical.pop(key, None))

    def _resolve_one(self, req_id: int, contract: dict) -> Instrument | None:
        if self.house.refusing:
            self.error(req_id, 200, t.NO_SECURITY)
            return None
        found = self.house.market.resolve(**_resolve_args(contract))
        if len(found) == 1:
            return found[0]
        text = t.NO_SECURITY if not found else t.AMBIGUOUS.format(contract["symbol"])
        self.error(req_id, 200, text)
        return None

    # ----------------------------------------------------------------- head timestamp
    def _head_timestamp(self, reader: p.FieldReader) -> None:
        req_id = reader.int()
        contract = p.read_contract(reader)
        use_rth, what, fmt = reader.bool(), reader.text().upper(), reader.int(1)
        self._count("head_timestamp")
        if self._poisoned(contract):
            return
        inst = self._resolve_one(req_id, contract)
        if inst is None:
            return
        if what not in BAR_DATA:
            self.error(req_id, 321, t.WHAT_INVALID.format(what))
            return
        paced = PacedRequest(("head", inst.con_id, use_rth, what), (inst.con_id, what), what, None)
        if not self._paced(req_id, paced):
            return
        self._wake_hmds()
        if not inst.what_to_show_ok(what):
            self.error(req_id, 162, _no_market_data(inst, what))
            return
        if hmds.available_from(inst, 60, self.house.now()) is None:
            self.error(req_id, 162, t.NO_DATA.format(inst.local_symbol, inst.exchange,
                                                     t.WHAT_WORDS[what]))
            return
        head = self.house.market.head_timestamp(inst, what, use_rth)
        text = (str(int(head.timestamp())) if fmt == 2
                else hmds.format_zoned(head, self.house.settings.time_zone))
        self.send(p.HEAD_TIMESTAMP, req_id, text)

    def _paced(self, req_id: int, paced: PacedRequest) -> bool:
        broken = self.house.rules.check(paced, time.monotonic())
        if broken is None:
            return True
        self.house.stats.pacing_violations += 1
        self.house.stats.pacing_rules[broken] += 1
        self.error(req_id, 162, t.HMDS_PREFIX + self.house.settings.pacing_text)
        return False

    # ----------------------------------------------------------------- historical bars
    def _historical_data(self, reader: p.FieldReader) -> None:
        query = hmds.BarQuery.parse(reader)
        self._count("historical")
        self.hist_count += 1
        if self._poisoned(query.contract) or self._should_drop():
            if not self._closed:
                self.drop()
            return
        checked = self._validate(query)
        if checked is None:
            return
        inst, start, end = checked
        stats = self.house.stats
        stats.open_requests += 1
        stats.max_open_requests = max(stats.max_open_requests, stats.open_requests)
        task = asyncio.get_running_loop().create_task(self._serve(query, inst, start, end))
        self.historical[query.req_id] = task
        task.add_done_callback(lambda done, rid=query.req_id: self._finished(rid, done))

    def _should_drop(self) -> bool:
        settings = self.house.settings
        if settings.drop_after is not None and self.hist_count > settings.drop_after:
            return True
        return settings.drop_rate > 0 and self.house.faults.random() < settings.drop_rate

    def _validate(self, q: hmds.BarQuery):
        """IB's checks in IB's order; sends the error and returns None on the first failure."""
        house, rid = self.house, q.req_id
        inst = self._resolve_one(rid, q.contract)
        if inst is None:
            return None
        if q.bar_size not in barlib.BAR_SIZES:       # IB's spellings only ("1 secs")
            return self.error(rid, 321, t.BAR_SIZE_INVALID)
        try:
            barlib.parse_duration(q.duration)
        except ValueError:
            return self.error(rid, 321, t.DURATION_INVALID.format(q.duration))
        if q.what_to_show not in BAR_DATA:
            return self.error(rid, 321, t.WHAT_INVALID.format(q.what_to_show))
        explicit_end = bool(q.end_text.strip())
        if explicit_end and q.keep_up_to_date:
            return self.error(rid, 321, t.LIVE_WITH_END)
        if explicit_end and q.what_to_show == "ADJUSTED_LAST":
            return self.error(rid, 321, t.ADJUSTED_WITH_END)
        if explicit_end and inst.sec_type == "CONTFUT":
            return self.error(rid, 10339, t.CONTFUT_WITH_END)
        now = house.now()
        try:
            end = min(hmds.parse_end(q.end_text, now, house.settings.time_zone), now)
        except ValueError:
            return self.error(rid, 10314, t.END_INVALID)
        problem = barlib.duration_problem(q.bar_size, q.duration)
        if problem == "days":
            return self.error(rid, 321, t.DAYS_TOO_LONG)
        if problem == "step":
            return self.error(rid, 162, t.TOO_LONG)
        policy = house.policy
        if policy.enabled and house.stats.open_requests >= policy.max_open_requests:
            return self.error(rid, 322, t.TOO_MANY_OPEN.format(policy.max_open_requests))
        seconds = barlib.BAR_SIZES[q.bar_size]
        paced = PacedRequest(q.identity(), (inst.con_id, inst.exchange, q.what_to_show),
                             q.what_to_show, seconds)
        if not self._paced(rid, paced):
            return None
        if house.hmds_down:
            return self.error(rid, 162, t.FARM_DOWN)
        if house.names("no_permission_symbols", inst.symbol, inst.local_symbol):
            exchange = inst.primary_exchange or inst.exchange
            return self.error(rid, 162, t.NO_PERMISSION.format(exchange, inst.sec_type))
        if not inst.what_to_show_ok(q.what_to_show):
            self._wake_hmds()
            return self.error(rid, 162, _no_market_data(inst, q.what_to_show))
        start = house.market.range_start(inst, end, q.duration, q.use_rth)
        return inst, start, end

    async def _serve(self, q: hmds.BarQuery, inst: Instrument, start: datetime, end: datetime):
        house = self.house
        settings = house.settings
        generation = house.generation
        if house.stall_next > 0 or house.names("stall_symbols", inst.symbol, inst.local_symbol,
                                               q.contract["symbol"]):
            house.stall_next = max(0, house.stall_next - 1)
            await asyncio.Event().wait()  # never answered; only a cancel or a drop ends it
        seconds = barlib.BAR_SIZES[q.bar_size]
        body, count = await self._bars(q, inst, start, end, seconds)
        slots = house.hmds_slots
        if slots is not None:
            await slots.acquire()
        try:
            delay = answer_delay(settings.latency, settings.latency_scale,
                                 settings.latency_per_bar, settings.latency_end_factor, count,
                                 seconds < 86400, bool(q.end_text.strip()))
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            if slots is not None:
                slots.release()
        await house.ib_up.wait()        # held through an outage or a maintenance window
        if generation != house.generation:
            return  # lost in a connectivity outage (1101): IB never answers it
        self._wake_hmds()
        if count == 0:
            self.error(q.req_id, 162, t.NO_DATA.format(
                inst.local_symbol, q.contract["exchange"] or inst.exchange,
                t.WHAT_WORDS[q.what_to_show]))
            return
        zone = settings.time_zone
        header = "\0".join((str(p.HISTORICAL_DATA), str(q.req_id),
                            hmds.format_zoned(start, zone), hmds.format_zoned(end, zone),
                            str(count), "")).encode()
        # Header and body go out without joining them: a large body is not copied again.
        self.writer.writelines([(len(header) + len(body)).to_bytes(4, "big"), header, body])
        house.stats.bars_sent += count
        house.stats.client(self.client_id)["bars"] += count
        await self.writer.drain()

    async def _bars(self, q: hmds.BarQuery, inst: Instrument, start: datetime, end: datetime,
                    seconds: int) -> tuple[bytes, int]:
        """The encoded bars IB still has for the request (cached; built off the loop)."""
        house = self.house
        since = hmds.available_from(inst, seconds, house.now())
        if since is None or since >= end:
            return b"", 0
        start = max(start, since)
        what = "TRADES" if q.what_to_show == "ADJUSTED_LAST" else q.what_to_show
        key = (inst.series_key, inst.sec_type, q.bar_size, what, q.use_rth, q.format_date,
               int(start.timestamp()), int(end.timestamp()))
        hit = house.encoder.lookup(key)
        if hit is None:  # build off the loop, which keeps reading (and timing) requests
            hit = await asyncio.get_running_loop().run_in_executor(
                house.builder, house.build, key,
                lambda: house.market.bars(inst, q.bar_size, start, end, q.use_rth, what),
                q.format_date, house.settings.time_zone)
        return hit

    def _finished(self, req_id: int, task: asyncio.Task) -> None:
        if self.historical.pop(req_id, None) is not None:
            self.house.stats.open_requests -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("historical request %d failed inside the gateway", req_id,
                      exc_info=task.exception())
            self.error(req_id, 162, t.SERVER_ERROR)

    def _cancel_historical(self, reader: p.FieldReader) -> None:
        reader.int()  # version
        req_id = reader.int()
        self._count("cancel_historical")
        task = self.historical.get(req_id)
        if task is None or task.done():
            self.error(req_id, 366, t.NOT_FOUND_366.format(req_id))
            return
        task.cancel()
        self.error(req_id, 162, t.CANCELLED.format(req_id))

    # ----------------------------------------------------------------- historical ticks
    def _historical_ticks(self, reader: p.FieldReader) -> None:
        """Up to 1000 ticks from the 1-second bars (one trade or quote per second), from
        ``startDateTime`` forward or back from ``endDateTime`` (exactly one is given)."""
        q = hmds.TickQuery.parse(reader)
        self._count("historical_ticks")
        if self._poisoned(q.contract):
            return
        inst = self._resolve_one(q.req_id, q.contract)
        if inst is None:
            return
        if q.what_to_show not in ("TRADES", "MIDPOINT", "BID_ASK"):
            return self.error(q.req_id, 321, t.WHAT_INVALID.format(q.what_to_show))
        now = self.house.now()
        zone = self.house.settings.time_zone
        try:
            start = hmds.parse_end(q.start_text, now, zone) if q.start_text.strip() else None
            end = min(hmds.parse_end(q.end_text, now, zone), now) if q.end_text.strip() \
                else None
        except ValueError:
            return self.error(q.req_id, 10314, t.END_INVALID)
        if (start is None) == (end is None):
            return self.error(q.req_id, 321, t.TICKS_ONE_END)
        if self.house.hmds_down:
            return self.error(q.req_id, 162, t.FARM_DOWN)
        bars_what = "TRADES" if q.what_to_show == "TRADES" else "MIDPOINT"
        self._wake_hmds()
        if not inst.what_to_show_ok(bars_what):
            return self.error(q.req_id, 162, _no_market_data(inst, bars_what))
        since = hmds.available_from(inst, 1, now)
        if since is None:
            return self._send_ticks(q, inst, None)
        # Look in windows of an hour until enough ticks (or a week of nothing) turned up.
        step = timedelta(hours=1)
        found = []
        for k in range(24 * 7):
            lo = start + k * step if start else end - (k + 1) * step
            hi = lo + step
            lo, hi = max(lo, since), min(hi, now)
            if hi <= lo:
                if (start and lo >= now) or (end and hi <= since):
                    break
                continue
            chunk = self.house.market.bars(inst, "1 secs", lo, hi, q.use_rth, bars_what)
            found.append(chunk)
            if sum(len(c) if bars_what != "TRADES" else int((c.volume > 0).sum())
                   for c in found) >= q.wanted:
                break
        self._send_ticks(q, inst, found)

    def _send_ticks(self, q: hmds.TickQuery, inst: Instrument, chunks) -> None:
        """HISTORICAL_TICKS(_BID_ASK, _LAST) with the first or last ``count`` ticks (IB serves
        at most 1000: a request for more gets 1000)."""
        msg = {"TRADES": p.HISTORICAL_TICKS_LAST, "BID_ASK": p.HISTORICAL_TICKS_BID_ASK}.get(
            q.what_to_show, p.HISTORICAL_TICKS)
        ticks = hmds.select_ticks(chunks or [], q.what_to_show, q.wanted,
                                  from_start=bool(q.start_text.strip()))
        body, count = hmds.ticks_body(ticks, q.what_to_show, inst)
        head = "\0".join((str(msg), str(q.req_id), str(count), "")).encode()
        payload = head + body + b"1\0"  # done
        self.write(len(payload).to_bytes(4, "big") + payload)
        self.house.stats.ticks_sent += count


def _no_market_data(inst: Instrument, what: str) -> str:
    """IB's text for data it never has: TRADES on forex, quotes on an index."""
    if inst.sec_type == "CASH":
        return t.NO_FOREX_TRADES.format(inst.symbol)
    if inst.sec_type == "IND":
        return t.NO_INDEX_QUOTES.format(inst.symbol, inst.exchange, t.WHAT_WORDS[what])
    return t.NO_DATA.format(inst.local_symbol, inst.exchange, t.WHAT_WORDS[what])


def _resolve_args(contract: dict) -> dict:
    return {k: contract[k] for k in ("symbol", "sec_type", "exchange", "currency", "con_id",
                                     "local_symbol", "last_trade", "include_expired")}


#: Days of sessions tradingHours/liquidHours list, from the day before today on.
HOURS_DAYS = 8


def _contract_message(version: int, req_id: int, inst: Instrument, house: House) -> bytes:
    """CONTRACT_DATA for ``inst`` in the layout of server version ``version``."""
    market = house.market
    cal = market.calendar(inst)
    today = house.now().astimezone(cal.zone).date()
    first = today - timedelta(days=1)
    trading = market.trading_hours(inst, first, HOURS_DAYS, liquid=False)
    liquid = market.trading_hours(inst, first, HOURS_DAYS, liquid=True)
    head = [p.CONTRACT_DATA] + ([8] if version < p.SIZE_RULES else []) + [
        req_id, inst.symbol, inst.sec_type, inst.wire_last_trade, 0.0, "", inst.exchange,
        inst.currency, inst.local_symbol, inst.market_name, inst.trading_class, inst.con_id,
        inst.min_tick]
    if version < p.SIZE_RULES:
        head.append(1)  # mdSizeMultiplier
    stock = inst.sec_type == "STK"
    body = [inst.multiplier, "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP", inst.valid_exchanges,
            1, 0, inst.long_name, inst.primary_exchange, inst.last_trade_date[:6], "", "", "",
            inst.time_zone, trading, liquid, "", "", 0,
            1, "", "", "26,26" if stock else "", inst.last_trade_date, "COMMON" if stock else ""]
    if version == 163:
        body.append(1)
    elif version >= p.SIZE_RULES:
        body += [1, 1, 1]
    return p.encode(*head, *body)
