"""The worker process: one ib_insync connection on its own asyncio loop, fed through a pipe.

Data flow inside one worker::

    manager ══ pipe (socketpair) ══► _read_pipe ──► Call ──► task _serve(call)
                                         │                     │ waits for the connection,
                                         │ Control             │ paces (SharedPacer), asks IB,
                                         ▼                     │ times out and cancels at IB,
                         client id / cancel / exit             │ resends after a reconnect
    manager ◄══ Result (pickle) or bars frame (Arrow IPC) ◄────┘

    _keep_connected   connects with the client id the manager gave; on 326 asks the manager
                      for another; when the gateway drops the socket, reconnects with backoff
                      (calls in flight wait for it and are sent again).
    _watch            idle for ``idle_timeout`` -> Event("idle") (the manager answers "exit");
                      the manager gone (pipe EOF, parent changed, pid gone) -> exit.

Frames on the pipe use ``multiprocessing.connection``'s framing (a 4-byte big-endian length),
so the manager reads them with ``Connection.recv_bytes``. A frame is a pickle, or ``b"B"``, the
call id (8 bytes) and an Arrow IPC stream of bars. The worker writes through asyncio and never
blocks, so it always drains the requests the manager writes.

This module imports neither pandas nor pyarrow: a worker stays small and starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
    IbConnectionError,
    RequestTimeoutError,
    classify,
    connection_effect,
    error_from,
)
from ibfarm.pacing import PacedRequest

log = logging.getLogger(__name__)

BARS_FRAME = b"B"
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_BACKOFF = 5.0
#: Messages ib_insync's read-only connect sends (START_API, positions, account data, account
#: updates, executions, and one spare); they count against the shared message rate.
CONNECT_MESSAGES = 6


# --------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Call:
    """A request from the manager: run ``op`` with ``args``, answer within ``timeout`` s.

    ``op`` is "bars" (contract, end, duration, bar size, what to show, use RTH, PacedRequest),
    "head_timestamp" (contract, what to show, use RTH, PacedRequest), "contract_details"
    (contract,) or "fn" (the pickled ``(fn, args, kwargs)``, unpickled in the worker so that
    an unimportable function fails only its own call).
    """

    call_id: int
    op: str
    args: tuple
    timeout: float


@dataclass(slots=True)
class Control:
    """From the manager: "client_id" (use ``value`` next), "cancel" (call ``value``), "exit"."""

    kind: str
    value: int = 0


@dataclass(slots=True)
class Result:
    """The answer to a call: ``value``, or ``error`` (an exception)."""

    call_id: int
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Event:
    """News from the worker: "state" (``state``, ``detail``), "id_in_use", "idle",
    "retry" (call ``call_id`` got a transient IB error of kind ``state``; retried after
    ``delay`` seconds), "pacing" (call ``call_id`` waits for the pacer, at most ``delay``
    seconds) and "paced" (it goes out now): each restarts the call's clock after ``delay``."""

    kind: str
    state: str = ""
    client_id: int = 0
    detail: str = ""
    call_id: int = 0
    delay: float = 0.0


@dataclass
class WorkerSettings:
    """What a worker needs to know, sent once at spawn.

    Args:
        host, port: the gateway.
        connect_timeout: seconds per connection attempt.
        idle_timeout: seconds without work before the worker offers to exit.
        readonly: connect read-only.
        schema_message: the Arrow schema message that starts every bars stream.
        pacer: a ``SharedPacer`` (pickled as "attach to the same budget") or None.
        retry: the ``RetryPolicy`` for transient IB errors (None: never retry).
        parent_pid: the manager's pid, watched so the worker never outlives it.
        log_level: level of the worker's own log (ib_insync's stays quieter).
    """

    host: str
    port: int
    connect_timeout: float
    idle_timeout: float
    readonly: bool
    schema_message: bytes
    pacer: Any = None
    retry: Any = None
    parent_pid: int = 0
    log_level: int = logging.WARNING


class _IdInUse(Exception):
    """The gateway refused our client id (326)."""


class _Resend(Exception):
    """The gateway lost what was in flight (1101): send it again."""


def _then(start, after):
    """``start(req_id)``, then ``after()``: a request sent, then its pacing grant re-dated."""
    def go(req_id: int) -> None:
        start(req_id)
        after()
    return go


#: (call id, timer extender) of the call a task serves; ops use it to report pacing waits.
_current_call: contextvars.ContextVar[tuple[int, Any]] = contextvars.ContextVar("ibfarm_call")
#: A pacing wait longer than this stops the attempt's clock until the grant (and is reported).
PACED_NOTICE_AFTER = 0.05
#: Longest a request may wait for the pacer (IB's longest window is ten minutes).
PACING_HOLD = 3600.0


class _NoPacer:
    """Stands in for a ``SharedPacer`` when pacing is off."""

    async def acquire_messages(self, n: int = 1) -> None:
        return None

    def record_messages(self, n: int = 1) -> None:
        return None

    @contextlib.asynccontextmanager
    async def historical(self, request: PacedRequest):
        yield lambda: None

    def close(self) -> None:
        return None


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
            # The shared pacer meters messages for every process; ib_insync's own per-client
            # throttle would only delay sends after their grant, which the gateway then sees
            # bunched together.
            self.ib.client.MaxRequests = 0
        self._calls: dict[int, asyncio.Task] = {}
        self._live: dict[int, asyncio.Future] = {}  # IB request id -> its future
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._connector: asyncio.Task | None = None
        self._rejected: asyncio.Future | None = None
        self._new_id: asyncio.Future | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_active = time.monotonic()
        self._idle_sent = False
        self._last_error = ""
        self._ever_connected = False
        self._ppid = os.getppid()
        self._pacer = settings.pacer or _NoPacer()

    async def run(self) -> None:
        """Serve until told to exit, idle, or orphaned."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
        reader, self._writer = await asyncio.open_connection(sock=self.sock)
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected
        self._start_connecting("connecting")
        helpers = [asyncio.create_task(self._read_pipe(reader)),
                   asyncio.create_task(self._watch())]
        try:
            await self._stop.wait()
        finally:
            self._stopping = True
            tasks = [*helpers, *self._calls.values()]
            if self._connector is not None:
                tasks.append(self._connector)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.ib.disconnect()
            self._pacer.close()
            with contextlib.suppress(Exception):
                self._writer.close()
            log.info("worker %d: exit", self.worker_id)

    def stop(self) -> None:
        """Leave ``run`` soon."""
        self._stopping = True
        self._stop.set()

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

    def _on_message(self, msg: Call | Control) -> None:
        if isinstance(msg, Call):
            self._last_active = time.monotonic()
            self._idle_sent = False
            task = asyncio.create_task(self._serve(msg))
            self._calls[msg.call_id] = task
            task.add_done_callback(lambda _t, cid=msg.call_id: self._call_done(cid))
        elif msg.kind == "cancel":
            task = self._calls.get(msg.value)
            if task is not None:
                task.cancel()
        elif msg.kind == "client_id":
            if self._new_id is not None and not self._new_id.done():
                self._new_id.set_result(msg.value)
        elif msg.kind == "exit":
            self.stop()

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

    def _send(self, msg: Result | Event) -> None:
        try:
            payload = pickle.dumps(msg, protocol=5)
        except Exception as exc:  # an unpicklable value or exception from user code
            error = TypeError(f"result could not be sent back: {exc!r}")
            payload = pickle.dumps(Result(getattr(msg, "call_id", 0), None, error), protocol=5)
        self._write_frame([payload])

    def _state(self, state: str, detail: str = "") -> None:
        self._send(Event("state", state, self.client_id, detail))

    # ----------------------------------------------------------------- the connection

    def _start_connecting(self, state: str) -> None:
        if self._stopping or (self._connector is not None and not self._connector.done()):
            return
        self._connected.clear()
        self._state(state)
        self._connector = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        delay = 0.05  # a restarted gateway is usually back within a second: look again soon
        while not self._stopping:
            try:
                await self._connect_once()
            except _IdInUse:
                log.warning("worker %d: client id %d in use", self.worker_id, self.client_id)
                self._new_id = asyncio.get_running_loop().create_future()
                self._send(Event("id_in_use", client_id=self.client_id))
                self.client_id = await self._new_id
                continue
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.info("worker %d: connect failed (%s); retry in %.1f s",
                         self.worker_id, self._last_error, delay)
                self._state("connecting", self._last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, _MAX_BACKOFF)
                continue
            self._last_error = ""
            self._ever_connected = True
            self._connected.set()
            self._state("ready")
            log.info("worker %d: connected as client %d", self.worker_id, self.client_id)
            return

    async def _connect_once(self) -> None:
        s = self.settings
        self._rejected = asyncio.get_running_loop().create_future()
        connect = asyncio.ensure_future(self.ib.connectAsync(
            s.host, s.port, self.client_id, timeout=s.connect_timeout, readonly=s.readonly))
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
        # Counted once the handshake went through: a refused attempt sends nothing, and
        # waiting for budget before each attempt would starve the requests resent after it.
        self._pacer.record_messages(CONNECT_MESSAGES)

    def _on_error(self, req_id: int, code: int, message: str, contract: Any) -> None:
        if code == 326 and self._rejected is not None and not self._rejected.done():
            self._rejected.set_result(code)
        live = self._live.get(req_id)
        if live is not None and not live.done() and classify(code, message) not in (
                ErrorKind.INFO, ErrorKind.NO_DATA):
            # Our own requests fail on every error the gateway sends for them, whatever the
            # library counts as a warning (ib_async lets 321 pass).
            live.set_exception(RequestError(req_id, code, message))
        effect = connection_effect(code) if req_id == -1 else None
        if effect is ConnectionEffect.RESTORED_DATA_LOST:
            log.warning("worker %d: gateway lost requests in flight (%d); resending",
                        self.worker_id, code)
            for future in list(self._live.values()):
                if not future.done():
                    future.set_exception(_Resend(code))
        elif effect is not None:
            log.info("worker %d: gateway notice %d %s", self.worker_id, code, message)

    def _on_disconnected(self) -> None:
        if not self._stopping:
            log.warning("worker %d: gateway dropped the connection; reconnecting",
                        self.worker_id)
            self._start_connecting("reconnecting")

    # ----------------------------------------------------------------- serving calls

    async def _serve(self, call: Call) -> None:
        task = asyncio.current_task()
        expired = False

        def expire() -> None:  # a timer rather than wait_for: no extra task per call
            nonlocal expired
            expired = True
            task.cancel()

        loop = asyncio.get_running_loop()
        timer = loop.call_later(call.timeout, expire)

        def extend(delay: float) -> None:  # a retry's back-off is not the attempt's time
            nonlocal timer
            timer.cancel()
            timer = loop.call_later(delay + call.timeout, expire)

        _current_call.set((call.call_id, extend))
        try:
            value = await self._attempts(call, extend)
        except asyncio.CancelledError:
            if expired:
                self._send(Result(call.call_id, error=self._timeout_error(call)))
            # else: the manager cancelled it (and answered the caller) or we are exiting
            return
        except RequestError as exc:
            self._send(Result(call.call_id, error=error_from(exc.code, exc.message)))
        except BaseException as exc:  # IbError, errors from user functions
            self._send(Result(call.call_id, error=exc))
        else:
            if isinstance(value, _Bars):
                self._write_frame([BARS_FRAME, struct.pack("<q", call.call_id), *value.chunks])
            else:
                self._send(Result(call.call_id, value))
        finally:
            timer.cancel()

    def _timeout_error(self, call: Call) -> RequestTimeoutError:
        detail = f"no answer within {call.timeout:g} s"
        if not self._connected.is_set():
            detail += f"; not connected to {self.settings.host}:{self.settings.port}"
            if self._last_error:
                detail += f" ({self._last_error})"
        return RequestTimeoutError(0, detail)

    async def _until_connected(self) -> None:
        """Wait for the connection. A worker that has never reached the gateway gives up
        after one connect timeout: nobody is listening, and the caller should hear so now."""
        if self._connected.is_set():
            return
        if self._ever_connected:
            await self._connected.wait()  # a dropped gateway usually returns: wait for it
            return
        try:
            await asyncio.wait_for(self._connected.wait(), self.settings.connect_timeout)
        except asyncio.TimeoutError:
            s = self.settings
            raise IbConnectionError(502, (
                f"Couldn't connect to TWS / IB Gateway at {s.host}:{s.port}"
                f"{f' ({self._last_error})' if self._last_error else ''}. Check that it is "
                "running and logged in, that its API port is this one, and that "
                "'Enable ActiveX and Socket Clients' is on (or use the simulated gateway)."
            )) from None

    async def _attempts(self, call: Call, extend) -> Any:
        handler = getattr(self, "_op_" + call.op)
        failures = 0
        while True:
            await self._until_connected()
            try:
                return await handler(*call.args)
            except RequestError as exc:
                failures += 1
                error = error_from(exc.code, exc.message)
                retry = self.settings.retry
                delay = retry.delay(failures, error.kind) if retry is not None else None
                if delay is None:
                    raise error from None
                log.warning("worker %d: call %d got %s; retry %d in %.2f s", self.worker_id,
                            call.call_id, error, failures, delay)
                extend(delay)
                self._send(Event("retry", error.kind.value, call_id=call.call_id, delay=delay))
                await asyncio.sleep(delay)
            except (ConnectionError, _Resend) as exc:
                if self._stopping:
                    raise
                log.info("worker %d: call %d interrupted (%r); resending",
                         self.worker_id, call.call_id, exc)
                if not self.ib.isConnected():
                    self._start_connecting("reconnecting")
                await asyncio.sleep(0.01)

    async def _request(self, start, cancel=None, contract: Contract | None = None,
                       container: list | None = None, cancel_after: bool = False) -> Any:
        """Send one IB request and await its answer; cancel it at IB if we give up.

        Args:
            start: sends the request, given its request id.
            cancel: cancels it at IB, given its request id (None: cannot be cancelled).
            contract: the request's contract (ib_insync names it in its log).
            container: where ib_insync collects the answer (default: a list).
            cancel_after: cancel at IB after the answer too (head timestamps stay open).
        """
        client = self.ib.client
        req_id = client.getReqId()
        future = self.ib.wrapper.startReq(req_id, contract, container)
        self._live[req_id] = future
        try:
            start(req_id)
            result = await future
            if cancel_after and cancel is not None:
                self._pacer.record_messages(1)
                cancel(req_id)
            return result
        except asyncio.CancelledError:
            if cancel is not None and self.ib.isConnected():
                with contextlib.suppress(Exception):
                    self._pacer.record_messages(1)
                    cancel(req_id)
            raise
        finally:
            self._live.pop(req_id, None)
            self.ib.wrapper._endReq(req_id)  # forget it, whatever happened

    @contextlib.asynccontextmanager
    async def _paced(self, paced: PacedRequest):
        """The pacer's grant for ``paced``; time spent waiting for it is not the request's.

        When the wait outlasts ``PACED_NOTICE_AFTER``, the attempt's clock stops (and the
        manager is told, "pacing") until the grant, then starts afresh ("paced"): a request
        queued behind IB's ten-minute rule does not time out before it is even sent.
        """
        call_id, extend = _current_call.get((0, None))
        waiting = False

        def note_wait() -> None:
            nonlocal waiting
            waiting = True
            if extend is not None:
                extend(PACING_HOLD)
            self._send(Event("pacing", call_id=call_id, delay=PACING_HOLD))

        notice = asyncio.get_running_loop().call_later(PACED_NOTICE_AFTER, note_wait)
        try:
            async with self._pacer.historical(paced) as sent:
                notice.cancel()
                if waiting:
                    if extend is not None:
                        extend(0.0)
                    self._send(Event("paced", call_id=call_id))
                yield sent
        finally:
            notice.cancel()

    async def _op_bars(self, contract: Contract, end: str, duration: str, bar_size: str,
                       what_to_show: str, use_rth: bool, paced: PacedRequest) -> _Bars:
        client = self.ib.client
        bars = BarDataList()
        try:
            async with self._paced(paced) as sent:
                await self._request(
                    _then(lambda rid: client.reqHistoricalData(
                        rid, contract, end, duration, bar_size, what_to_show, use_rth, 2,
                        False, []), sent),
                    client.cancelHistoricalData, contract, bars)
        except RequestError as exc:
            if classify(exc.code, exc.message) is not ErrorKind.NO_DATA:
                raise
            bars = BarDataList()
        return _Bars(self.settings.schema_message, bars)

    async def _op_head_timestamp(self, contract: Contract, what_to_show: str, use_rth: bool,
                                 paced: PacedRequest) -> datetime:
        client = self.ib.client
        async with self._paced(paced) as sent:
            stamp = await self._request(
                _then(lambda rid: client.reqHeadTimeStamp(rid, contract, what_to_show, use_rth,
                                                          2), sent),
                client.cancelHeadTimeStamp, contract, cancel_after=True)
        return _utc(stamp)

    async def _op_contract_details(self, contract: Contract) -> list:
        client = self.ib.client
        await self._pacer.acquire_messages(1)
        return await self._request(lambda rid: client.reqContractDetails(rid, contract),
                                   None, contract)

    async def _op_fn(self, blob: bytes) -> Any:
        fn, args, kwargs = pickle.loads(blob)
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
                self._send(Event("idle", client_id=self.client_id))

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
    """ib_insync ``BarData`` as the eight columns of the bar schema.

    Intraday bars (formatDate=2) carry UTC datetimes; daily and longer bars carry dates, which
    become 00:00 UTC of that day.
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


class _WorkerPopen(popen_forkserver.Popen):
    """Forkserver start without importing the caller's ``__main__`` in the worker.

    A worker runs only ``ibfarm.worker.main``; importing the caller's main script (a CLI that
    pulls in pandas, a benchmark, a web app) would slow every worker's start and grow it.
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
        return _WorkerPopen(process_obj)


def _process_factory():
    """The process class and Pipe of the start method we use (forkserver, else spawn)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        forkserver = multiprocessing.forkserver._forkserver
        if forkserver._forkserver_pid is None and forkserver._preload_modules == ["__main__"]:
            ctx.set_forkserver_preload(["ibfarm.worker"])
        return _WorkerProcess, ctx.Pipe
    ctx = multiprocessing.get_context("spawn")
    return ctx.Process, ctx.Pipe


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
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    asyncio.run(Worker(sock, worker_id, client_id, settings).run())
