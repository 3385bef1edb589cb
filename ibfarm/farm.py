"""IbFarm: a ``concurrent.futures.Executor`` whose workers each hold one IB connection.

Data flow (the caller's process on the left, one process per client id on the right)::

  caller threads / asyncio code        manager (caller's process)          worker processes
  ─────────────────────────────        ──────────────────────────          ────────────────
  submit() / historical_bars()  ──►  _WorkItem ─► least-loaded worker
      returns a FarmFuture             (spawned lazily, one per free
      (await it, or .result())         client id, up to max_workers)
                                            │  Call ══ that worker's Pipe ══►  Worker
                                            │                                  own asyncio loop,
                                            │  manager thread:                 own IB connection,
                                            │  wait(pipes + sentinels +        idle timeout,
                                            │       wake-up pipe)              reconnect + resend
  FarmFuture resolved  ◄── Table ◄──────────┤ ◄══ Result / bars (Arrow IPC) ══
                                            │ ◄── Event: state, 326 (next id), idle (-> exit)
                                            │ ◄── sentinel: worker died -> its items go to
                                            │     another worker (up to max_retries), then fail
                                            └──── deadlines: no answer -> RequestTimeoutError

Threads: callers place work under ``_Manager.lock`` and write the ``Call`` to the chosen
worker's pipe themselves (under that worker's send lock); the manager thread alone reads
pipes, resolves futures (outside the lock), retries, respawns and retires workers. Workers
write through asyncio and never block, so they always drain what the manager writes.

Failures are states: a dead worker is noticed through its sentinel at once; every request
has a deadline; after ``shutdown()`` or a manager failure every future ends with an error.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import selectors
import signal
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import connection
from typing import Any

import psutil
import pyarrow as pa

from ibfarm import worker as worker_mod
from ibfarm.bars import BAR_SCHEMA, BarRequest, bar_seconds, normalize_bar_size, parse_duration
from ibfarm.config import FarmConfig
from ibfarm.contracts import make_contract
from ibfarm.errors import (
    ClientIdInUseError,
    FarmShutdownError,
    InvalidRequestError,
    RequestTimeoutError,
    WorkerCrashedError,
)
from ibfarm.pacing import PacedRequest, SharedPacer

log = logging.getLogger(__name__)

#: Seconds the manager waits past ``request_timeout`` for the worker's own timeout report.
TIMEOUT_GRACE = 2.0
#: Seconds a worker gets to exit on its own at shutdown before it is killed.
EXIT_GRACE = 5.0
#: How long a client id refused with 326 is left alone.
ID_IN_USE_COOLDOWN = 60.0
#: Longest sleep of the manager thread (it also wakes on every message and death).
_TICK = 0.25


class FarmFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` that asyncio code can ``await`` without blocking."""

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


@dataclass(eq=False)
class _WorkItem:
    """One request: its future, what to run, and how often it has been tried."""

    call_id: int
    op: str
    args: tuple
    future: FarmFuture
    deadline: float = 0.0
    attempts: int = 0
    worker: _WorkerHandle | None = None
    failure: BaseException | None = None  # fail with this at the deadline, not a timeout


@dataclass(eq=False)
class _WorkerHandle:
    """The manager's view of one worker process."""

    worker_id: int
    process: multiprocessing.process.BaseProcess
    conn: connection.Connection
    client_id: int
    started: float
    state: str = "starting"
    detail: str = ""
    retiring: bool = False
    in_flight: dict[int, _WorkItem] = field(default_factory=dict)
    served: int = 0
    errors: int = 0
    last_active: float = 0.0
    ready_after: float | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    ps: psutil.Process | None = None

    def send(self, msg: worker_mod.Call | worker_mod.Control) -> None:
        """Write ``msg`` to the worker; a broken pipe is left to the death handler."""
        try:
            with self.send_lock:
                self.conn.send(msg)
        except (OSError, ValueError) as exc:
            log.debug("worker %d: send failed: %r", self.worker_id, exc)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _resolve(future: FarmFuture, value: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


class _Manager:
    """The farm's state and its manager thread (see the module docstring)."""

    def __init__(self, config: FarmConfig, log_level: int):
        self.config = config
        self.lock = threading.Lock()
        self.workers: dict[int, _WorkerHandle] = {}
        self.pending: deque[_WorkItem] = deque()
        self.blocked_ids: dict[int, float] = {}
        self.shutting_down = False
        self.broken: str | None = None
        self.totals = dict.fromkeys(
            ("submitted", "completed", "failed", "retried", "timed_out", "spawned",
             "crashed", "idle_exits"), 0)
        self.ib_retries: dict[str, int] = {}  # retries after transient IB errors, by kind
        self._call_ids = itertools.count(1)
        self._worker_ids = itertools.count(1)
        self._process_cls, self._pipe = worker_mod.process_factory()
        policy = config.pacing_policy
        self.pacer = SharedPacer(f"{config.host}:{config.port}", policy,
                                 margin=config.pacing_margin) \
            if policy.enabled else None
        self.settings = worker_mod.WorkerSettings(
            host=config.host, port=config.port, connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout, readonly=config.readonly,
            schema_message=BAR_SCHEMA.serialize().to_pybytes(), pacer=self.pacer,
            retry=config.retry_policy,
            parent_pid=os.getpid(), log_level=log_level)
        self.next_check = math.inf  # earliest deadline of any item (or later)
        # The wake-up pipe's fds are closed once, under this lock, and never used after: a
        # stray write to a closed (and reused) fd number would corrupt someone else's stream.
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched: dict[int, _WorkerHandle] = {}
        self.thread = threading.Thread(target=self._run, name="ibfarm-manager", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- placing work

    def submit(self, op: str, args: tuple) -> FarmFuture:
        future = FarmFuture()
        with self.lock:
            if self.shutting_down or self.broken:
                raise RuntimeError(f"cannot schedule new futures after "
                                   f"{'shutdown' if self.shutting_down else self.broken}")
            item = _WorkItem(next(self._call_ids), op, args, future)
            self.totals["submitted"] += 1
            sends = self._place(item)
        self._flush(sends)
        return future

    def _place(self, item: _WorkItem) -> list[tuple[_WorkerHandle, Any]]:
        """Give ``item`` to a worker (under the lock); returns what to send."""
        if item.attempts == 0 and not item.future.set_running_or_notify_cancel():
            return []
        now = time.monotonic()
        if item.attempts == 0 or item.worker is not None:
            item.deadline = self._deadline()
        self.next_check = min(self.next_check, item.deadline)
        handle = self._pick()
        if handle is None:
            item.worker = None
            self.pending.append(item)
            if not self.workers and self._free_client_id() is None:
                ids = self.config.client_ids
                item.failure = ClientIdInUseError(326, (
                    f"every client id in {ids.start}..{ids.stop - 1} is in use by another "
                    "client; free one or give the farm others (IBFARM_CLIENT_IDS)"))
                item.deadline = self.next_check = now  # the manager fails it at once
                self.wake()
            return []
        item.attempts += 1
        item.worker = handle
        handle.in_flight[item.call_id] = item
        handle.last_active = now
        call = worker_mod.Call(item.call_id, item.op, item.args, self.config.request_timeout)
        return [(handle, call)]

    def _deadline(self, delay: float = 0.0) -> float:
        """When a call given to a worker now (its clock starting after ``delay``) is late."""
        return time.monotonic() + delay + self.config.request_timeout + TIMEOUT_GRACE

    @staticmethod
    def _flush(sends: Iterable[tuple[_WorkerHandle, Any]]) -> None:
        for handle, msg in sends:
            handle.send(msg)

    def _pick(self) -> _WorkerHandle | None:
        """The least-loaded worker taking work, spawning one when all are busy."""
        live = [w for w in self.workers.values() if not w.retiring]
        idle = [w for w in live if not w.in_flight]
        if idle:
            return min(idle, key=lambda w: (w.state != "ready", w.worker_id))
        if len(self.workers) < self.config.max_workers:
            handle = self._spawn()
            if handle is not None:
                return handle
        if live:
            return min(live, key=lambda w: (len(w.in_flight), w.state != "ready"))
        return None

    def _free_client_id(self) -> int | None:
        now = time.monotonic()
        used = {w.client_id for w in self.workers.values()}
        for cid in self.config.client_ids:
            if cid not in used and self.blocked_ids.get(cid, 0.0) <= now:
                return cid
        return None

    def _spawn(self) -> _WorkerHandle | None:
        client_id = self._free_client_id()
        if client_id is None:
            return None
        worker_id = next(self._worker_ids)
        parent_end, child_end = self._pipe(duplex=True)
        process = self._process_cls(
            target=worker_mod.main, args=(child_end, worker_id, client_id, self.settings),
            name=f"ibfarm-worker-{worker_id}", daemon=True)
        process.start()
        child_end.close()
        handle = _WorkerHandle(worker_id, process, parent_end, client_id, time.monotonic())
        handle.last_active = handle.started
        self.workers[worker_id] = handle
        self.totals["spawned"] += 1
        log.info("worker %d: spawned (pid %s, client id %d)", worker_id, process.pid, client_id)
        self.wake()
        return handle

    def wake(self) -> None:
        with self._wake_lock:
            if self._wake_w is None:
                return
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    # ----------------------------------------------------------------- the manager thread

    def _run(self) -> None:
        try:
            while self._loop_once():
                pass
        except BaseException as exc:  # the farm is broken: say so, fail everything
            log.exception("farm manager failed")
            self._break(f"farm manager failed: {exc!r}")
        finally:
            self._stop_workers()
            self._close()

    def _loop_once(self) -> bool:
        with self.lock:
            if self.shutting_down and not self.pending and \
                    not any(w.in_flight for w in self.workers.values()):
                return False
            current = dict(self.workers)
            next_check = self.next_check
        self._sync_selector(current)
        timeout = max(0.0, min(_TICK, next_check - time.monotonic()))
        deaths = []
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif key.data[0] == "conn":
                self._drain(key.data[1])
            else:
                deaths.append(key.data[1])
        for handle in deaths:
            self._on_death(handle)
        if time.monotonic() >= next_check:
            self._expire()
        return True

    def _sync_selector(self, current: dict[int, _WorkerHandle]) -> None:
        """Watch the pipe and sentinel of every current worker (manager thread only)."""
        for worker_id in current.keys() - self._watched.keys():
            handle = current[worker_id]
            self._selector.register(handle.conn, selectors.EVENT_READ, ("conn", handle))
            self._selector.register(handle.process.sentinel, selectors.EVENT_READ,
                                    ("death", handle))
            self._watched[worker_id] = handle
        for worker_id in self._watched.keys() - current.keys():
            self._unwatch(self._watched[worker_id])

    def _unwatch(self, handle: _WorkerHandle) -> None:
        if self._watched.pop(handle.worker_id, None) is not None:
            for fileobj in (handle.conn, handle.process.sentinel):
                try:
                    self._selector.unregister(fileobj)
                except (KeyError, ValueError, OSError):
                    pass

    def _drain(self, handle: _WorkerHandle) -> None:
        """Read every message waiting on ``handle``'s pipe."""
        while True:
            try:
                if not handle.conn.poll(0):
                    return
                data = handle.conn.recv_bytes()
            except (EOFError, OSError):
                return
            self._on_frame(handle, data)

    def _on_frame(self, handle: _WorkerHandle, data: bytes) -> None:
        error: BaseException | None = None
        value: Any = None
        if data[:1] == worker_mod.BARS_FRAME:
            (call_id,) = struct.unpack_from("<q", data, 1)
            try:
                value = pa.ipc.open_stream(pa.py_buffer(memoryview(data)[9:])).read_all()
            except Exception as exc:
                error = exc
        else:
            try:
                msg = pickle.loads(data)
            except Exception as exc:
                log.error("worker %d: unreadable message: %r", handle.worker_id, exc)
                return
            if isinstance(msg, worker_mod.Event):
                self._on_event(handle, msg)
                return
            call_id, value, error = msg.call_id, msg.value, msg.error
        with self.lock:
            item = handle.in_flight.pop(call_id, None)
            if item is None:
                return  # timed out or cancelled already
            handle.last_active = time.monotonic()
            handle.served += 1
            if error is not None:
                handle.errors += 1
            self.totals["failed" if error is not None else "completed"] += 1
        _resolve(item.future, value, error)

    def _on_event(self, handle: _WorkerHandle, event: worker_mod.Event) -> None:
        sends: list = []
        with self.lock:
            if event.kind == "state":
                handle.state, handle.detail = event.state, event.detail
                handle.client_id = event.client_id or handle.client_id
                if event.state == "ready" and handle.ready_after is None:
                    handle.ready_after = time.monotonic() - handle.started
                if event.state == "ready":
                    sends = self._place_pending()
            elif event.kind == "id_in_use":
                self.blocked_ids[event.client_id] = time.monotonic() + ID_IN_USE_COOLDOWN
                handle.client_id = -1  # free the id it had while we choose
                new_id = self._free_client_id()
                log.warning("worker %d: client id %d is taken by another client; moving to %s",
                            handle.worker_id, event.client_id, new_id)
                if new_id is None:
                    handle.client_id = event.client_id
                    handle.retiring, handle.state = True, "retiring"
                    sends = [(handle, worker_mod.Control("exit"))]
                else:
                    handle.client_id = new_id
                    sends = [(handle, worker_mod.Control("client_id", new_id))]
            elif event.kind in ("retry", "pacing", "paced"):
                # The worker restarted the call's clock after ``delay`` (a back-off, a wait
                # for the pacer); the deadline follows it.
                if event.kind == "retry":
                    self.ib_retries[event.state] = self.ib_retries.get(event.state, 0) + 1
                item = handle.in_flight.get(event.call_id)
                if item is not None:
                    item.deadline = self._deadline(event.delay)
            elif event.kind == "idle" and not handle.in_flight and not handle.retiring:
                handle.retiring, handle.state = True, "retiring"
                self.totals["idle_exits"] += 1
                sends = [(handle, worker_mod.Control("exit"))]
        self._flush(sends)

    def _place_pending(self) -> list:
        sends: list = []
        for _ in range(len(self.pending)):
            sends += self._place(self.pending.popleft())
        return sends

    def _on_death(self, handle: _WorkerHandle) -> None:
        self._drain(handle)
        handle.process.join(0.5)
        exitcode = handle.process.exitcode
        failed: list[tuple[_WorkItem, BaseException]] = []
        with self.lock:
            self.workers.pop(handle.worker_id, None)
            items = list(handle.in_flight.values())
            handle.in_flight.clear()
            clean = handle.retiring and exitcode == 0
            if not clean:
                self.totals["crashed"] += 1
                log.warning("worker %d (pid %s, client id %d) %s with %d request(s) in flight",
                            handle.worker_id, handle.process.pid, handle.client_id,
                            _describe_exit(exitcode), len(items))
            sends = []
            for item in items:
                if item.attempts > self.config.max_retries:
                    failed.append((item, WorkerCrashedError(0, (
                        f"worker {handle.worker_id} (pid {handle.process.pid}, client id "
                        f"{handle.client_id}) {_describe_exit(exitcode)} with this request in "
                        f"flight; gave up after {item.attempts} attempts"))))
                    self.totals["failed"] += 1
                else:
                    self.totals["retried"] += 1
                    sends += self._place(item)
            sends += self._place_pending()
        self._unwatch(handle)
        handle.conn.close()
        self._flush(sends)
        for item, error in failed:
            _resolve(item.future, error=error)

    def _expire(self) -> None:
        """Fail the items whose deadline passed and cancel them at their worker."""
        now = time.monotonic()
        expired: list[_WorkItem] = []
        sends = []
        with self.lock:
            for handle in self.workers.values():
                for item in [i for i in handle.in_flight.values() if i.deadline <= now]:
                    del handle.in_flight[item.call_id]
                    handle.errors += 1
                    expired.append(item)
                    sends.append((handle, worker_mod.Control("cancel", item.call_id)))
            for item in [i for i in self.pending if i.deadline <= now]:
                self.pending.remove(item)
                expired.append(item)
            self.totals["timed_out"] += len(expired)
            self.totals["failed"] += len(expired)
            deadlines = [i.deadline for w in self.workers.values() for i in w.in_flight.values()]
            deadlines += [i.deadline for i in self.pending]
            self.next_check = min(deadlines, default=math.inf)
        self._flush(sends)
        for item in expired:
            where = f"worker {item.worker.worker_id}" if item.worker else "any worker"
            _resolve(item.future, error=item.failure or RequestTimeoutError(0, (
                f"no answer from {where} within {self.config.request_timeout:g} s")))

    # ----------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            self.shutting_down = True
            cancelled = list(self.pending) if cancel_futures else []
            if cancel_futures:
                self.pending.clear()
        for item in cancelled:
            if not item.future.cancel():
                _resolve(item.future, error=FarmShutdownError(0, "the farm was shut down"))
        self.wake()
        if wait and threading.current_thread() is not self.thread:
            self.thread.join()

    def _break(self, reason: str) -> None:
        with self.lock:
            self.broken = reason
            items = list(self.pending)
            self.pending.clear()
            for handle in self.workers.values():
                items += handle.in_flight.values()
                handle.in_flight.clear()
        for item in items:
            _resolve(item.future, error=FarmShutdownError(0, reason))

    def _stop_workers(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
            self.workers.clear()
        for handle in workers:
            handle.send(worker_mod.Control("exit"))
        deadline = time.monotonic() + EXIT_GRACE
        for handle in workers:
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.exitcode is None:
                log.warning("worker %d did not exit; killing it", handle.worker_id)
                handle.process.kill()
                handle.process.join(1.0)
            handle.conn.close()

    def _close(self) -> None:
        self._selector.close()
        if self.pacer is not None:
            self.pacer.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = None

    # ----------------------------------------------------------------- status

    def status(self) -> dict:
        now = time.monotonic()
        with self.lock:
            workers = list(self.workers.values())
            rows = [{
                "worker_id": w.worker_id, "pid": w.process.pid, "client_id": w.client_id,
                "state": w.state, "detail": w.detail, "in_flight": len(w.in_flight),
                "served": w.served, "errors": w.errors,
                "idle_s": 0.0 if w.in_flight else round(now - w.last_active, 3),
                "age_s": round(now - w.started, 3), "ready_after_s": w.ready_after,
            } for w in workers]
            farm = dict(self.totals, workers=len(workers), max_workers=self.config.max_workers,
                        in_flight=sum(r["in_flight"] for r in rows), pending=len(self.pending),
                        shutdown=self.shutting_down, broken=self.broken,
                        ib_retries=dict(self.ib_retries))
        for handle, row in zip(workers, rows, strict=True):
            row.update(_process_usage(handle))
        pacer = None
        if self.pacer is not None and not self.shutting_down:
            try:
                pacer = self.pacer.stats()
            except Exception as exc:  # a closed pacer
                pacer = {"error": repr(exc)}
        return {"workers": rows, "farm": farm, "pacer": pacer}


def _process_usage(handle: _WorkerHandle) -> dict:
    try:
        if handle.ps is None:
            handle.ps = psutil.Process(handle.process.pid)
        with handle.ps.oneshot():
            times = handle.ps.cpu_times()
            return {"rss_bytes": handle.ps.memory_info().rss,
                    "cpu_percent": handle.ps.cpu_percent(None),
                    "cpu_s": round(times.user + times.system, 3)}
    except (psutil.Error, TypeError, ValueError):
        return {"rss_bytes": None, "cpu_percent": None, "cpu_s": None}


_live_farms: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for farm in list(_live_farms):
        farm.shutdown(wait=True, cancel_futures=True)


class IbFarm(concurrent.futures.Executor):
    """Worker processes, one IB connection each, behind the ``Executor`` interface.

    Args:
        config: the settings (default ``FarmConfig()``; see ``FarmConfig.from_env``).
        log_level: level of the workers' own log.
        overrides: ``FarmConfig`` fields that replace the ones in ``config``.

    Every method returns a ``FarmFuture``: call ``.result()`` or, in asyncio code,
    ``await`` it (the caller's loop is never blocked).
    """

    def __init__(self, config: FarmConfig | None = None, *, log_level: int = logging.WARNING,
                 **overrides):
        config = config or FarmConfig()
        self.config = config.replace(**overrides) if overrides else config
        self._manager = _Manager(self.config, log_level)
        weakref.finalize(self, self._manager.shutdown, False, False)
        _live_farms.add(self)

    def submit(self, fn, /, *args, **kwargs) -> FarmFuture:
        """Run ``fn(ib, *args, **kwargs)`` in a worker with its connected ``IB``.

        ``fn`` must be importable by name (a module-level function); a coroutine function
        (or one returning an awaitable) is awaited on the worker's loop, so use ib_insync's
        ``...Async`` methods inside it. Its result must pickle.
        """
        try:
            blob = pickle.dumps((fn, args, kwargs), protocol=5)
        except Exception as exc:
            return _failed(TypeError(f"cannot send {fn!r} to a worker: {exc}"))
        return self._manager.submit("fn", (blob,))

    def historical_bars(self, request: BarRequest) -> FarmFuture:
        """Bars for ``request`` as a ``pyarrow.Table`` in ``BAR_SCHEMA`` (empty if IB has none).

        An illegal bar size or duration fails at once with ``InvalidRequestError``.
        """
        try:
            bar_size = normalize_bar_size(request.bar_size)
            parse_duration(request.duration)
        except ValueError as exc:
            return _failed(InvalidRequestError(0, str(exc)))
        contract = make_contract(request.symbol, request.sec_type, request.exchange,
                                 request.currency)
        end = request.ib_end()
        what = request.what_to_show.upper()
        paced = PacedRequest(
            key=(_contract_key(contract), end, request.duration, bar_size, what,
                 request.use_rth),
            contract_key=(_contract_key(contract), what), what_to_show=what,
            bar_seconds=bar_seconds(bar_size))
        return self._manager.submit("bars", (contract, end, request.duration, bar_size, what,
                                             bool(request.use_rth), paced))

    def map_bars(self, requests: Iterable[BarRequest], timeout: float | None = None
                 ) -> Iterator[pa.Table]:
        """Submit every request now; yield their tables in order (like ``Executor.map``)."""
        futures = [self.historical_bars(request) for request in requests]
        end = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[pa.Table]:
            try:
                futures.reverse()
                while futures:
                    left = None if end is None else end - time.monotonic()
                    yield futures.pop().result(left)
            finally:
                for future in futures:
                    future.cancel()
        return results()

    def head_timestamp(self, symbol_or_contract, what_to_show: str = "TRADES",
                       use_rth: bool = True) -> FarmFuture:
        """The earliest time IB has data for (an aware UTC ``datetime``)."""
        contract = make_contract(symbol_or_contract)
        what = what_to_show.upper()
        paced = PacedRequest(key=("head", _contract_key(contract), what, use_rth),
                             contract_key=(_contract_key(contract), what), what_to_show=what,
                             bar_seconds=None)
        return self._manager.submit("head_timestamp", (contract, what, bool(use_rth), paced))

    def contract_details(self, symbol_or_contract) -> FarmFuture:
        """IB's ``ContractDetails`` list for a symbol or contract (empty: unknown)."""
        return self._manager.submit("contract_details", (make_contract(symbol_or_contract),))

    def status(self) -> dict:
        """Each worker (pid, client id, state, in flight, served, errors, idle seconds, RSS,
        CPU), the farm's totals and the pacer's counters."""
        return self._manager.status()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish what is in flight; stop the workers.

        Args:
            wait: return only when every worker has exited.
            cancel_futures: cancel requests not yet given to a worker.
        """
        self._manager.shutdown(wait, cancel_futures)


def _contract_key(contract) -> tuple:
    return (contract.conId, contract.symbol, contract.secType, contract.exchange,
            contract.currency, contract.lastTradeDateOrContractMonth)


def _failed(error: BaseException) -> FarmFuture:
    future = FarmFuture()
    future.set_running_or_notify_cancel()
    future.set_exception(error)
    return future


__all__ = ["FarmFuture", "IbFarm"]
