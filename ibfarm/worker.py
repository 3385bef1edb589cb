"""The worker process: one IB connection on its own asyncio loop, fed through a pipe.

Data flow inside one worker (the records are ``ibfarm.messages``)::

    manager ══ pipe (socketpair) ══► _read_pipe ─► Call ─► task _serve(call, CallClock)
                                         │                   │ sends it (the pacer's grant
                                         │                   │ re-dated to the send), awaits
                                         │ Cancel ─► task.cancel() ─► cancelled at IB too
                                         │ UseClientId, Exit
    manager ◄══ Result (pickle) | bars frame (BARS_HEADER + Arrow IPC) ◄──┘
            ◄══ Interrupted: the connection was lost under the call (it goes back to the
                manager's queue, spent budget and all)
            ◄══ StateChanged, ConnectFailed, ClientIdRefused, Idle

    _keep_connected   connects with the client id the manager gave; on 326 asks the manager
                      for another; when the gateway drops the socket, reconnects with backoff.
    IB's link notices 1100 (IB lost) pauses every call's clock and the manager stops sending
                      work (LINK_DOWN); 1102 resumes them; 1101 (data lost) interrupts them.
    _watch            idle for ``idle_timeout`` -> Idle (the manager answers Exit);
                      the manager gone (pipe EOF, parent changed, pid gone) -> exit.

The worker never waits for a connection or for the pacer with a call in hand: the manager
sends a call only to a worker that is READY, with the pacer's grant already taken, and a call
that finds the connection gone comes straight back. Frames on the pipe use
``multiprocessing.connection``'s framing (a 4-byte big-endian length), so the manager reads them
with ``Connection.recv_bytes``. The worker writes through asyncio and never blocks, so it
always drains what the manager writes.

This module imports neither pandas nor pyarrow: a worker stays small and starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import io
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from multiprocessing import forkserver, popen_forkserver, reduction, spawn
from multiprocessing.context import ForkServerProcess
from typing import Any

from ibfarm import arrow_ipc, backend
from ibfarm.backend import IB, BarDataList, Contract, RequestError
from ibfarm.errors import (
    ConnectionEffect,
    ErrorKind,
    RequestTimeoutError,
    classify,
    connection_effect,
    error_from,
)
from ibfarm.messages import (
    SIGNALLED,
    Call,
    Cancel,
    ClientIdRefused,
    ConnectFailed,
    Exit,
    Idle,
    Interrupted,
    Interruption,
    Op,
    Result,
    StateChanged,
    UseClientId,
    WorkerState,
    bars_header,
)

log = logging.getLogger(__name__)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_BACKOFF = 5.0
#: Messages a read-only connect sends (START_API, positions, account data, account updates,
#: executions, and one spare); they count against the shared message rate.
CONNECT_MESSAGES = 6
#: When the gateway closes the connection, the calls sent last (within ``SUSPECT_BURST`` of
#: the last send, and no longer than ``SUSPECT_WINDOW`` before the close) are suspects: the
#: gateway may have closed it because it could not read one of them.
SUSPECT_WINDOW = 1.0
SUSPECT_BURST = 0.05


@dataclass
class WorkerSettings:
    """What a worker needs to know, sent once at spawn.

    Args:
        host, port: the gateway.
        connect_timeout: seconds per connection attempt.
        idle_timeout: seconds without work before the worker offers to exit.
        readonly: connect read-only.
        schema_message: the Arrow schema message that starts every bars stream.
        pacer: the gateway's ``SharedPacer`` (pickled as "attach to the same budget") or None;
            the worker re-dates grants and counts the messages it must send unasked (the
            connect handshake, cancels).
        parent_pid: the manager's pid, watched so the worker never outlives it.
        log_level: level of the worker's own log (the IB library's stays quieter).
        backend: the IB client library the manager chose (the worker must load the same).
    """

    host: str
    port: int
    connect_timeout: float
    idle_timeout: float
    readonly: bool
    schema_message: bytes
    pacer: Any = None
    parent_pid: int = 0
    log_level: int = logging.WARNING
    backend: str = backend.NAME


class _IdInUse(Exception):
    """The gateway refused our client id (326)."""


class _Lost(Exception):
    """The call's request was lost with the connection (or refused during maintenance)."""

    def __init__(self, reason: Interruption):
        super().__init__(reason.value)
        self.reason = reason


class CallClock:
    """How much of a call's budget has been spent at IB; ``expire()`` runs when it is gone.

    It runs only while the call's request is out at IB: from ``start()`` (the send), paused
    while IB is away from the gateway (1100), and it never restarts: a call resent after a
    lost connection carries on from what it had spent.
    """

    def __init__(self, budget: float, expire: Callable[[], None]):
        self.budget = budget
        self._expire = expire
        self._loop = asyncio.get_running_loop()
        self._spent = 0.0
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False
        self.sent_at: float | None = None

    @property
    def spent(self) -> float:
        """Seconds spent at IB so far."""
        running = 0.0 if self._since is None else time.monotonic() - self._since
        return self._spent + running

    def start(self) -> None:
        """The request went out now."""
        self.sent_at = time.monotonic()
        self.resume()

    def resume(self) -> None:
        if self._since is not None or self.sent_at is None or self.expired:
            return
        self._since = time.monotonic()
        self._timer = self._loop.call_later(max(0.0, self.budget - self._spent), self._fire)

    def pause(self) -> None:
        if self._since is None:
            return
        self._spent += time.monotonic() - self._since
        self._since = None
        self.stop()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.expired = True
        self._timer = None
        self._expire()


@dataclass(eq=False)
class _Running:
    """A call being served: its task and its clock; ``lost`` once its connection went."""

    call: Call
    task: asyncio.Task = None  # type: ignore[assignment]
    clock: CallClock = None  # type: ignore[assignment]
    lost: Interruption | None = None


# --------------------------------------------------------------------------- the worker


class Worker:
    """One connection to the gateway and the calls it serves.

    Args:
        sock: the worker's end of the pipe (a connected stream socket).
        worker_id: the manager's number for this worker (for logs).
        client_id: the client id to connect with first.
        settings: the rest.
    """

    def __init__(self, sock: socket.socket, worker_id: int, client_id: int,
                 settings: WorkerSettings):
        self.sock = sock
        self.worker_id = worker_id
        self.client_id = client_id
        self.settings = settings
        self.ib = IB()
        self.ib.RaiseRequestErrors = True
        if settings.pacer is not None:
            # The shared pacer meters messages for every process; the library's own per-client
            # throttle would only delay sends after their grant, which the gateway then sees
            # bunched together.
            self.ib.client.MaxRequests = 0
        self.state = WorkerState.STARTING
        self._calls: dict[int, _Running] = {}
        self._cancels: set[asyncio.Task] = set()  # cancels waiting for the message rate
        self._last_send: float | None = None  # the last send before the connection dropped
        self._dropped_at = 0.0
        self._live: dict[int, tuple[asyncio.Future, _Running]] = {}  # IB req id -> future
        self._connected = False
        self._link_down = False
        self._stop = asyncio.Event()
        self._stopping = False
        self._connector: asyncio.Task | None = None
        self._rejected: asyncio.Future | None = None
        self._new_id: asyncio.Future | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_active = time.monotonic()
        self._idle_sent = False
        self._ppid = os.getppid()
        self._pacer = settings.pacer
        self._ops = {Op.BARS: self._op_bars, Op.HEAD_TIMESTAMP: self._op_head_timestamp,
                     Op.CONTRACT_DETAILS: self._op_contract_details, Op.FN: self._op_fn}

    async def run(self) -> None:
        """Serve until told to exit, idle, or orphaned."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self._terminated)
        reader, self._writer = await asyncio.open_connection(sock=self.sock)
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected
        self._start_connecting(WorkerState.CONNECTING)
        helpers = [asyncio.create_task(self._read_pipe(reader)),
                   asyncio.create_task(self._watch())]
        try:
            await self._stop.wait()
        finally:
            self._stopping = True
            tasks = [*helpers, *(r.task for r in self._calls.values()), *self._cancels]
            if self._connector is not None:
                tasks.append(self._connector)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.ib.disconnect()
            if self._pacer is not None:
                self._pacer.close()
            with contextlib.suppress(Exception):
                self._writer.close()
            log.info("worker %d: exit", self.worker_id)

    def stop(self) -> None:
        """Leave ``run`` soon."""
        self._stopping = True
        self._stop.set()

    def _terminated(self) -> None:
        """SIGTERM (often sent to the whole process group, the manager's process included):
        say so before leaving, so that the manager does not take the exit for a crash even
        when the exit status is lost with the forkserver, which the same signal ends."""
        self._set_state(WorkerState.RETIRING, SIGNALLED)
        self.stop()

    # ----------------------------------------------------------------- the pipe

    async def _read_pipe(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = struct.unpack("!i", await reader.readexactly(4))
                if size == -1:
                    (size,) = struct.unpack("!Q", await reader.readexactly(8))
                self._on_message(pickle.loads(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("worker %d: pipe closed by the manager", self.worker_id)
            self.stop()

    def _on_message(self, msg: Call | Cancel | UseClientId | Exit) -> None:
        match msg:
            case Call():
                self._last_active = time.monotonic()
                self._idle_sent = False
                if not self._ready():
                    # The connection went just before the call arrived: straight back.
                    self._send(Interrupted(msg.call_id, 0.0, Interruption.NOT_CONNECTED))
                    return
                running = _Running(msg)
                running.task = asyncio.create_task(self._serve(running))
                running.clock = CallClock(msg.budget, running.task.cancel)
                running.task.add_done_callback(
                    lambda _t, cid=msg.call_id: self._call_done(cid))
                self._calls[msg.call_id] = running
            case Cancel(call_id=call_id):
                running = self._calls.get(call_id)
                if running is not None:
                    running.task.cancel()
            case UseClientId(client_id=client_id):
                if self._new_id is not None and not self._new_id.done():
                    self._new_id.set_result(client_id)
            case Exit():
                self.stop()

    def _ready(self) -> bool:
        return self._connected and not self._link_down and self.ib.isConnected()

    def _call_done(self, call_id: int) -> None:
        self._calls.pop(call_id, None)
        self._last_active = time.monotonic()

    def _write_frame(self, chunks: list[bytes]) -> None:
        size = sum(len(chunk) for chunk in chunks)
        if size > 0x7FFFFFFF:
            header = struct.pack("!i", -1) + struct.pack("!Q", size)
        else:
            header = struct.pack("!i", size)
        if self._writer is not None and not self._writer.is_closing():
            self._writer.writelines([header, *chunks])

    def _send(self, msg: Any) -> None:
        try:
            payload = pickle.dumps(msg, protocol=5)
        except Exception as exc:  # an unpicklable value or exception from user code
            error = TypeError(f"result could not be sent back: {exc!r}")
            payload = pickle.dumps(Result(getattr(msg, "call_id", 0), None, error), protocol=5)
        self._write_frame([payload])

    def _set_state(self, state: WorkerState, detail: str = "") -> None:
        self.state = state
        self._send(StateChanged(state, self.client_id, detail))

    # ----------------------------------------------------------------- the connection

    def _start_connecting(self, state: WorkerState) -> None:
        if self._stopping or (self._connector is not None and not self._connector.done()):
            return
        self._connected = False
        self._link_down = False
        self._set_state(state)
        self._connector = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        delay = 0.05  # a restarted gateway is usually back within a second: look again soon
        while not self._stopping:
            try:
                await self._connect_once()
            except _IdInUse:
                log.warning("worker %d: client id %d in use", self.worker_id, self.client_id)
                self._new_id = asyncio.get_running_loop().create_future()
                self._send(ClientIdRefused(self.client_id))
                self.client_id = await self._new_id
                continue
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.info("worker %d: connect failed (%s); retry in %.2f s", self.worker_id,
                         detail, delay)
                self._send(ConnectFailed(detail, isinstance(exc, ConnectionRefusedError)))
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, _MAX_BACKOFF)
                continue
            self._connected = True
            self._set_state(WorkerState.READY)
            log.info("worker %d: connected as client %d", self.worker_id, self.client_id)
            return

    async def _connect_once(self) -> None:
        s = self.settings
        self._rejected = asyncio.get_running_loop().create_future()
        connect = asyncio.ensure_future(self.ib.connectAsync(
            s.host, s.port, self.client_id, timeout=s.connect_timeout, readonly=s.readonly,
            **backend.connect_kwargs()))
        try:
            await asyncio.wait({connect, self._rejected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(BaseException):
                    await connect
        if self._rejected.done():
            self.ib.disconnect()
            raise _IdInUse()
        connect.result()
        # Counted once the handshake went through: a refused attempt sends nothing.
        if self._pacer is not None:
            self._pacer.record_messages(CONNECT_MESSAGES)

    def _on_error(self, req_id: int, code: int, message: str, *_: Any) -> None:
        if code == 326 and self._rejected is not None and not self._rejected.done():
            self._rejected.set_result(code)
        entry = self._live.get(req_id)
        if entry is not None and not entry[0].done():
            if classify(code, message) not in (ErrorKind.INFO, ErrorKind.NO_DATA):
                # Our own requests fail on every error the gateway sends for them, whatever
                # the library counts as a warning (ib_async lets 321 pass).
                entry[0].set_exception(RequestError(req_id, code, message))
        if req_id == -1:
            self._on_notice(code, message)

    def _on_notice(self, code: int, message: str) -> None:
        effect = connection_effect(code)
        if effect is ConnectionEffect.LOST and not self._link_down and self._connected:
            log.warning("worker %d: IB is away from the gateway (%d); holding calls",
                        self.worker_id, code)
            self._link_down = True
            for running in self._calls.values():
                running.clock.pause()
            self._set_state(WorkerState.LINK_DOWN, f"{code} {message}")
        elif effect in (ConnectionEffect.RESTORED_DATA_KEPT,
                        ConnectionEffect.RESTORED_DATA_LOST):
            lost = effect is ConnectionEffect.RESTORED_DATA_LOST
            log.warning("worker %d: IB is back (%d)%s", self.worker_id, code,
                        "; the calls in flight were lost" if lost else "")
            for future, _ in list(self._live.values()):
                if lost and not future.done():
                    future.set_exception(_Lost(Interruption.DATA_LOST))
            was_down, self._link_down = self._link_down, False
            if not lost:
                for running in self._calls.values():
                    running.clock.resume()
            if was_down and self._connected:
                self._set_state(WorkerState.READY)
        elif effect is not None:
            log.info("worker %d: gateway notice %d %s", self.worker_id, code, message)

    def _on_disconnected(self) -> None:
        if self._stopping:
            return
        log.warning("worker %d: gateway dropped the connection; reconnecting", self.worker_id)
        sends = [r.clock.sent_at for r in self._calls.values() if r.clock.sent_at is not None]
        self._last_send = max(sends, default=None)
        self._dropped_at = time.monotonic()
        for future, running in list(self._live.values()):
            if not future.done():
                future.set_exception(_Lost(Interruption.DROPPED))
            running.lost = Interruption.DROPPED
        for running in self._calls.values():  # calls not waiting on IB (a user function)
            running.lost = running.lost or Interruption.DROPPED
        self._start_connecting(WorkerState.RECONNECTING)

    # ----------------------------------------------------------------- serving calls

    async def _serve(self, running: _Running) -> None:
        call, clock = running.call, running.clock
        try:
            value = await self._ops[call.op](running, *call.args)
        except asyncio.CancelledError:
            if clock.expired:
                self._send(Result(call.call_id, error=self._timeout_error(call)))
            elif running.lost is not None and not self._stopping:
                self._interrupted(running, running.lost)
            # else: the manager cancelled it (and answered the caller) or we are exiting
            return
        except _Lost as exc:
            self._interrupted(running, exc.reason)
        except (ConnectionError, OSError) as exc:
            if running.lost is not None or not self.ib.isConnected():
                self._interrupted(running, running.lost or Interruption.DROPPED)
            else:
                self._send(Result(call.call_id, error=exc))
        except RequestError as exc:
            error = error_from(exc.code, exc.message)
            if self._link_down and error.kind is ErrorKind.CONTRACT_NOT_FOUND:
                # IB's maintenance: valid symbols get a spurious 200 while IB is away.
                self._interrupted(running, Interruption.MAINTENANCE)
            else:
                self._send(Result(call.call_id, error=error))
        except BaseException as exc:  # IbError, errors from user functions
            self._send(Result(call.call_id, error=exc))
        else:
            if isinstance(value, _Bars):
                self._write_frame([bars_header(call.call_id), *value.chunks])
            else:
                self._send(Result(call.call_id, value))
        finally:
            clock.stop()

    def _interrupted(self, running: _Running, reason: Interruption) -> None:
        clock = running.clock
        clock.pause()
        sent, last = clock.sent_at, self._last_send
        suspect = (reason is Interruption.DROPPED and sent is not None and last is not None
                   and sent >= last - SUSPECT_BURST and self._dropped_at - sent < SUSPECT_WINDOW)
        self._send(Interrupted(running.call.call_id, clock.spent, reason, suspect))

    def _timeout_error(self, call: Call) -> RequestTimeoutError:
        return RequestTimeoutError(0, f"no answer from IB within {call.budget:g} s")

    async def _request(self, running: _Running, start: Callable[[int], None],
                       cancel: Callable[[int], None] | None = None,
                       contract: Contract | None = None, container: list | None = None,
                       cancel_after: bool = False) -> Any:
        """Send one IB request and await its answer; cancel it at IB if we give up.

        Args:
            running: the call it serves (its clock starts at the send, its grant is re-dated).
            start: sends the request, given its request id.
            cancel: cancels it at IB, given its request id (None: cannot be cancelled).
            contract: the request's contract (the library names it in its log).
            container: where the library collects the answer (default: a list).
            cancel_after: cancel at IB after the answer too (head timestamps stay open).
        """
        client = self.ib.client
        req_id = client.getReqId()
        future = self.ib.wrapper.startReq(req_id, contract, container)
        self._live[req_id] = (future, running)
        try:
            start(req_id)
            if self._pacer is not None and running.call.grant is not None:
                self._pacer.mark_sent(running.call.grant)
            running.clock.start()
            result = await future
            if cancel_after and cancel is not None:
                self._cancel_at_ib(cancel, req_id)
            return result
        except asyncio.CancelledError:
            if cancel is not None and running.lost is None:
                self._cancel_at_ib(cancel, req_id)
            raise
        finally:
            self._live.pop(req_id, None)
            self.ib.wrapper._endReq(req_id)  # forget it, whatever happened

    def _cancel_at_ib(self, cancel: Callable[[int], None], req_id: int) -> None:
        """Send ``cancel(req_id)`` as soon as the message rate allows (a burst of cancels
        counts against it like any other message: IB disconnects a client over 50 a second)."""
        if self._stopping or not self.ib.isConnected():
            return

        async def send() -> None:
            if self._pacer is not None:
                await self._pacer.acquire_messages(1)
            if self.ib.isConnected():
                cancel(req_id)

        task = asyncio.get_running_loop().create_task(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _op_bars(self, running: _Running, contract: Contract, end: str, duration: str,
                       bar_size: str, what_to_show: str, use_rth: bool) -> _Bars:
        client = self.ib.client
        bars = BarDataList()
        try:
            await self._request(
                running, lambda rid: client.reqHistoricalData(
                    rid, contract, end, duration, bar_size, what_to_show, use_rth, 2, False, []),
                client.cancelHistoricalData, contract, bars)
        except RequestError as exc:
            if classify(exc.code, exc.message) is not ErrorKind.NO_DATA:
                raise
            bars = BarDataList()
        return _Bars(self.settings.schema_message, bars)

    async def _op_head_timestamp(self, running: _Running, contract: Contract, what_to_show: str,
                                 use_rth: bool) -> datetime:
        client = self.ib.client
        stamp = await self._request(
            running, lambda rid: client.reqHeadTimeStamp(rid, contract, what_to_show, use_rth, 2),
            client.cancelHeadTimeStamp, contract, cancel_after=True)
        return _utc(stamp)

    async def _op_contract_details(self, running: _Running, contract: Contract) -> list:
        client = self.ib.client
        return await self._request(running, lambda rid: client.reqContractDetails(rid, contract),
                                   None, contract)

    async def _op_fn(self, running: _Running, blob: bytes) -> Any:
        fn, args, kwargs = pickle.loads(blob)
        running.clock.start()
        result = fn(self.ib, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    # ----------------------------------------------------------------- idle and orphan watch

    async def _watch(self) -> None:
        tick = min(1.0, max(0.02, self.settings.idle_timeout / 4))
        while not self._stopping:
            await asyncio.sleep(tick)
            if self._orphaned():
                log.warning("worker %d: the manager is gone; exiting", self.worker_id)
                self.stop()
                return
            idle_for = time.monotonic() - self._last_active
            if not self._calls and not self._idle_sent and idle_for >= self.settings.idle_timeout:
                self._idle_sent = True
                self._send(Idle())

    def _orphaned(self) -> bool:
        if os.getppid() != self._ppid:
            return True
        pid = self.settings.parent_pid
        if pid:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return False


class _Bars:
    """Bars as the chunks of an Arrow IPC stream in the bar schema."""

    __slots__ = ("chunks",)

    def __init__(self, schema_message: bytes, bars: list):
        columns = bars_to_columns(bars)
        self.chunks = [schema_message, *arrow_ipc.record_batch_message(columns, len(bars)),
                       arrow_ipc.END_OF_STREAM]


def bars_to_columns(bars: list) -> list[array]:
    """The library's ``BarData`` as the eight columns of the bar schema.

    Intraday bars (formatDate=2) carry UTC datetimes; daily and longer bars carry dates, which
    become 00:00 UTC of that day. Values are as IB sends them (-1: no value, e.g. the volume
    of MIDPOINT bars).
    """
    stamps = array("q", (_epoch(bar.date) for bar in bars))
    return [
        stamps,
        array("d", [bar.open for bar in bars]),
        array("d", [bar.high for bar in bars]),
        array("d", [bar.low for bar in bars]),
        array("d", [bar.close for bar in bars]),
        array("d", [float(bar.volume) for bar in bars]),
        array("d", [bar.average for bar in bars]),
        array("q", [int(bar.barCount) for bar in bars]),
    ]


def _epoch(stamp: datetime | date) -> int:
    if isinstance(stamp, datetime):
        return int(stamp.timestamp())  # naive would mean local time; formatDate=2 is aware
    return (stamp.toordinal() - _EPOCH_ORDINAL) * 86400


def _utc(stamp: datetime | date) -> datetime:
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return datetime(stamp.year, stamp.month, stamp.day, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- starting a worker


class WorkerPopen(popen_forkserver.Popen):
    """Forkserver start without importing the caller's ``__main__`` in the worker.

    A worker runs only ``ibfarm.worker.main``; importing the caller's main script (a CLI that
    pulls in pandas, a benchmark, a web app) would slow every worker's start and grow it.
    ``_launch`` is CPython's ``popen_forkserver.Popen._launch`` with the two ``pop`` lines
    added; ``tests/farm/test_units.py`` checks that CPython's method is still the one this
    copy was made from, so a Python release that changes it fails that test instead of
    starting workers wrongly.
    """

    def _launch(self, process_obj):
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        popen_forkserver.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            popen_forkserver.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = popen_forkserver.util.Finalize(
            self, popen_forkserver.util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _WorkerProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return WorkerPopen(process_obj)


def process_factory() -> tuple[type, Any]:
    """The process class and ``Pipe`` of the start method workers use.

    forkserver (the caller may have threads, so no plain fork) with this module preloaded in
    the server, so a worker starts by forking a ready interpreter; spawn where there is none.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        server = forkserver._forkserver
        if server._forkserver_pid is None and server._preload_modules == ["__main__"]:
            ctx.set_forkserver_preload([__name__])
        return _WorkerProcess, ctx.Pipe
    ctx = multiprocessing.get_context("spawn")
    return ctx.Process, ctx.Pipe


# --------------------------------------------------------------------------- entry point


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when our parent process dies (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def main(conn, worker_id: int, client_id: int, settings: WorkerSettings) -> None:
    """Entry point of a worker process.

    Args:
        conn: the worker's end of a duplex ``multiprocessing.Pipe``.
        worker_id: the manager's number for this worker.
        client_id: the first client id to connect with.
        settings: see ``WorkerSettings``.
    """
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's business
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s ibfarm-worker-{worker_id}[%(process)d] %(levelname)s %(message)s")
    if settings.log_level > logging.DEBUG:
        logging.getLogger(backend.NAME).setLevel(logging.CRITICAL)  # we report its errors
    backend.check(settings.backend)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    asyncio.run(Worker(sock, worker_id, client_id, settings).run())


__all__ = ["CONNECT_MESSAGES", "CallClock", "Worker", "WorkerPopen", "WorkerSettings",
           "bars_to_columns", "main", "process_factory"]
