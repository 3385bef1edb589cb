"""The farm's manager: the queue of waiting work, the gateways and their workers, one thread.

Data flow (the caller's process on the left, one process per client id on the right)::

  caller threads / asyncio         manager (caller's process)                  worker processes
  ────────────────────────         ──────────────────────────                  ────────────────
  submit() ─► WorkItem ─► WorkQueue (oldest first; retries wait until due)
  (FarmFuture)                      │ dispatch: for the oldest item the rules allow now,
                                    │ the gateway (Lane) whose SharedPacer grants it
                                    │ (one Waiter per lane, for the queue's head only),
                                    │ then that lane's least-loaded READY worker
                                    ├──── Call(budget, grant) ══ that worker's Pipe ══► Worker
                                    │ manager thread: one selector over                own loop,
                                    │ pipes, sentinels, a wake-up pipe                 own IB
  FarmFuture resolved ◄── value ────┤ ◄══ Result | bars frame (Arrow IPC) ═══════════  connection
                                    │ ◄══ Interrupted: back to the queue (any worker)
                                    │ ◄══ StateChanged, ConnectFailed, ClientIdRefused, Idle
                                    │ ◄── sentinel: a worker died -> its calls back to the
                                    │     queue (max_retries deaths each), then fail
                                    └──── deadlines: only calls out at IB have one

Waiting work lives here, not in the workers: a worker holds only calls the pacer has granted
(at most the gateway's open-request limit), so 20,000 queued requests cost what 100 do, and
only time at IB counts against ``request_timeout``. A transient IB error, a lost connection,
a dead worker: the call goes back to the queue with its place (its arrival number), so it is
sent next, to whichever worker is free. A request the gateway closes the connection on is sent
alone from then on and fails after ``max_resends`` such closes.

Threads: callers place work under ``Manager.lock`` and, when the pacer and a worker are ready,
write the ``Call`` themselves (no hop through the manager thread for a request that can go at
once); the manager thread alone reads pipes, resolves futures (outside the lock), retries,
respawns and retires workers. Workers write through asyncio and never block, so they always
drain what the manager writes.

Failures are states: a dead worker is noticed through its sentinel at once; every call out at
IB has a deadline; queued work waits for a gateway that went down at most ``outage_timeout``;
a gateway nobody could ever reach fails its work after the first failed connect; after
``shutdown()`` or a manager failure every future ends with an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import heapq
import itertools
import logging
import math
import os
import pickle
import selectors
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing import connection
from typing import Any

import psutil
import pyarrow as pa

from ibfarm import backend
from ibfarm import worker as worker_mod
from ibfarm.bars import BAR_SCHEMA
from ibfarm.config import FarmConfig, GatewayAddress
from ibfarm.errors import (
    ClientIdInUseError,
    ErrorKind,
    FarmShutdownError,
    IbConnectionError,
    IbError,
    InvalidRequestError,
    RequestTimeoutError,
    WorkerCrashedError,
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
    is_bars_frame,
    read_bars_header,
)
from ibfarm.pacer import Grant, SharedPacer, Waiter, Want
from ibfarm.pacing import GLOBAL_RULES, PacedRequest

log = logging.getLogger(__name__)

#: Seconds the manager waits past a call's budget for the worker's own timeout report.
TIMEOUT_GRACE = 2.0
#: Seconds a worker gets to exit on its own at shutdown before it is killed.
EXIT_GRACE = 5.0
#: Seconds the manager waits for a worker whose exit status the forkserver took with it.
WORKER_GONE_WAIT = 1.0
#: How long a client id refused with 326 is left alone.
ID_IN_USE_COOLDOWN = 60.0
#: A request the gateway closed the connection on this many times (right after it was sent,
#: with the others sent at that moment) is sent alone from then on: a single close is usually
#: a restart or a network fault, and blames everything sent in the same instant. Only the
#: closes while it is alone count towards ``max_resends``.
ALONE_AFTER = 2
#: A request sent alone (after the gateway closed the connection on it) is cleared after this
#: long in flight without another close: other work may join it on its worker.
QUARANTINE_CLEAR = 1.0
#: Calls one worker holds at most (historical ones are bounded by the pacer's open slots).
WORKER_SLOTS = 64
#: How long a worker drains (takes no new work) so that a suspect request can go alone.
RESERVE_FOR = 5.0
#: Queued items passed over in one dispatch round because a per-contract rule holds them.
MAX_SKIP = 32
#: Longest sleep of the manager thread (it also wakes on every message and death).
TICK = 0.25


class FarmFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` that asyncio code can ``await`` without blocking, and
    that can be cancelled until its answer arrives: queued, it leaves the queue; sent, it is
    cancelled at the gateway and its pacer slot freed. (Cancelling the asyncio task that awaits
    it does the same.)"""

    def __init__(self, on_cancel: Callable[[], None] | None = None):
        super().__init__()
        self._on_cancel = on_cancel
        self._cancel_lock = threading.Lock()
        self._cancel_seen = False

    def cancel(self) -> bool:
        """Cancel it unless its answer has arrived; safe to call again, from any thread."""
        if not super().cancel():
            return False
        with self._cancel_lock:
            first, self._cancel_seen = not self._cancel_seen, True
            hook, self._on_cancel = self._on_cancel, None
        if first:
            self.set_running_or_notify_cancel()  # wake ``wait`` / ``as_completed``
            if hook is not None:
                hook()
        return True

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


class ItemState(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    DONE = "done"


@dataclass(eq=False)
class WorkItem:
    """One request, from ``submit`` to its answer: what to run, its place in line, its budget."""

    call_id: int
    op: Op
    args: tuple
    future: FarmFuture
    seq: int  # arrival number: its place in the queue, kept across retries
    budget: float  # seconds it may still spend at IB
    paced: PacedRequest | None = None  # a historical request (the pacer's rules)
    messages: int = 0  # messages it takes from the budget when not historical
    state: ItemState = ItemState.QUEUED
    not_before: float = 0.0  # a retry waits until then
    failures: int = 0  # transient IB errors so far
    deaths: int = 0  # workers that died with it in flight
    suspects: int = 0  # connections the gateway closed right after it was sent
    alone_closes: int = 0  # ... of them while it was the only request on its connection
    lane: Lane | None = None
    worker: WorkerHandle | None = None
    grant: Grant | None = None
    sent_at: float = 0.0
    deadline: float = math.inf
    paused_left: float | None = None  # budget left while its worker's IB link is down


class WorkQueue:
    """Items waiting to be sent, oldest first; retries wait in a second heap until due.

    Removal is lazy: an item that leaves the queue changes state and is dropped when it reaches
    the top, so cancelling one of 20,000 queued items costs O(1).
    """

    def __init__(self) -> None:
        self._ready: list[tuple[int, WorkItem]] = []
        self._later: list[tuple[float, int, WorkItem]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, item: WorkItem, now: float) -> None:
        item.state = ItemState.QUEUED
        if item.not_before > now:
            heapq.heappush(self._later, (item.not_before, item.seq, item))
        else:
            heapq.heappush(self._ready, (item.seq, item))
        self._live += 1

    def promote(self, now: float) -> None:
        """Move retries that are due into line."""
        while self._later and self._later[0][0] <= now:
            _, seq, item = heapq.heappop(self._later)
            if item.state is ItemState.QUEUED:
                heapq.heappush(self._ready, (seq, item))

    def peek(self) -> WorkItem | None:
        ready = self._ready
        while ready and ready[0][1].state is not ItemState.QUEUED:
            heapq.heappop(ready)
        return ready[0][1] if ready else None

    def pop(self) -> WorkItem:
        item = heapq.heappop(self._ready)[1]
        self._live -= 1
        item.state = ItemState.DONE  # the caller sets SENT (or queues it again)
        return item

    def discard(self, item: WorkItem) -> None:
        if item.state is ItemState.QUEUED:
            item.state = ItemState.DONE
            self._live -= 1

    def next_due(self) -> float:
        later = self._later
        while later and later[0][2].state is not ItemState.QUEUED:
            heapq.heappop(later)
        return later[0][0] if later else math.inf

    def waiting_retries(self) -> int:
        return sum(1 for _, _, item in self._later if item.state is ItemState.QUEUED)

    def drain(self) -> list[WorkItem]:
        """Every queued item, removed."""
        items = [i for _, i in self._ready if i.state is ItemState.QUEUED]
        items += [i for _, _, i in self._later if i.state is ItemState.QUEUED]
        for item in items:
            item.state = ItemState.DONE
        self._ready.clear()
        self._later.clear()
        self._live = 0
        return items


@dataclass(eq=False)
class WorkerHandle:
    """The manager's view of one worker process."""

    worker_id: int
    lane: Lane
    process: Any  # multiprocessing.process.BaseProcess
    conn: connection.Connection
    client_id: int
    started: float
    state: WorkerState = WorkerState.STARTING
    detail: str = ""
    retiring: bool = False
    signalled: bool = False  # it said it leaves on SIGTERM
    in_flight: dict[int, WorkItem] = field(default_factory=dict)
    served: int = 0
    errors: int = 0
    last_active: float = 0.0
    ready_after: float | None = None
    exclusive: WorkItem | None = None  # a suspect request it carries alone
    reserved_until: float = 0.0  # draining (no new work) so a suspect request can go alone
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    ps: psutil.Process | None = None

    def send(self, msg: Any) -> None:
        """Write ``msg`` to the worker; a broken pipe is left to the death handler."""
        try:
            with self.send_lock:
                self.conn.send(msg)
        except (OSError, ValueError) as exc:
            log.debug("worker %d: send failed: %r", self.worker_id, exc)

    @property
    def takes_work(self) -> bool:
        return (self.state is WorkerState.READY and not self.retiring and self.exclusive is None
                and not self.lane.ib_down and len(self.in_flight) < WORKER_SLOTS
                and (not self.reserved_until or time.monotonic() >= self.reserved_until))


@dataclass(eq=False)
class Lane:
    """One gateway: its address and client ids, its pacer, its workers, and how it is doing."""

    address: GatewayAddress
    pacer: SharedPacer | None
    settings: worker_mod.WorkerSettings
    workers: dict[int, WorkerHandle] = field(default_factory=dict)
    blocked_ids: dict[int, float] = field(default_factory=dict)
    ever_ready: bool = False
    connect_failures: int = 0
    refused: bool = False
    last_error: str = ""
    served: int = 0
    #: IB is away from this gateway (a worker saw 1100; IB's link is the gateway's, so every
    #: worker on it waits, also one that connected after the 1100 and never heard it).
    ib_down: bool = False
    #: The pacer's waiter of each queued item this lane has asked for (the queue's head, and
    #: items passed over because one contract is held): few, whatever the queue's length.
    waiters: dict[int, Waiter] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.address.key

    def ready_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.takes_work]

    def in_flight(self) -> int:
        return sum(len(w.in_flight) for w in self.workers.values())

    def state(self) -> str:
        """``up``, ``maintenance`` (IB away from the gateway), ``connecting``,
        ``unreachable`` (never reached; failing), ``down`` (was up), or ``idle``."""
        states = {w.state for w in self.workers.values() if not w.retiring}
        if self.ib_down or WorkerState.LINK_DOWN in states:
            return "maintenance"
        if WorkerState.READY in states:
            return "up"
        if not states:
            return "idle"
        if not self.ever_ready:
            return "unreachable" if self.connect_failures else "connecting"
        return "down"

    def want(self, item: WorkItem) -> Want | None:
        if self.pacer is None:
            return None
        if item.paced is not None:
            return self.pacer.want_historical(item.paced)
        if item.messages:
            return self.pacer.want_messages(item.messages)
        return None

    def poll(self, item: WorkItem) -> tuple[Grant | None, Waiter | None]:
        """Ask this gateway's pacer for ``item``: its grant, or None and the waiter (``eta``,
        ``blocked``), which keeps the item's place in the shared queue until it is granted
        or forgotten."""
        want = self.want(item)
        if want is None:
            return Grant(), None
        waiter = self.waiters.get(item.call_id)
        if waiter is None:
            waiter = self.waiters[item.call_id] = self.pacer.waiter(want)
        grant = waiter.poll()
        if grant is not None:
            del self.waiters[item.call_id]
        return grant, waiter

    def forget(self, item: WorkItem) -> None:
        """Drop the waiter held for ``item`` (its ticket leaves the shared queue)."""
        waiter = self.waiters.pop(item.call_id, None)
        if waiter is not None and not self.pacer.closed:
            waiter.close()

    def forget_all(self) -> None:
        for waiter in self.waiters.values():
            if not self.pacer.closed:
                waiter.close()
        self.waiters.clear()


#: The exit status ``multiprocessing`` reports for a forkserver child when the forkserver
#: itself is gone (it relays its children's statuses): the real status is lost.
STATUS_LOST = 255


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode == STATUS_LOST:
        return "ended (exit status unknown: the forkserver is gone, as after a group SIGTERM)"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` s for process ``pid`` to exit (a zombie has)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:  # gone (or not ours to look at)
            return
        time.sleep(0.01)


def _resolve(future: FarmFuture, value: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile


Sends = list[tuple[WorkerHandle, Any]]
Fails = list[tuple[WorkItem, BaseException | None, Any]]


class Manager:
    """The farm's state and its manager thread (see the module docstring)."""

    def __init__(self, config: FarmConfig, log_level: int):
        self.config = config
        self.backend = backend.check(config.backend)
        self.lock = threading.Lock()
        self.queue = WorkQueue()
        self.items: dict[int, WorkItem] = {}  # every item not yet answered
        self.shutting_down = False
        self.broken: str | None = None
        self.totals: Counter[str] = Counter()
        self.ib_retries: Counter[str] = Counter()  # retries after transient IB errors, by kind
        self.ib_errors: Counter[int] = Counter()  # IB error codes that ended a request
        self.outcomes: dict[str, Counter[str]] = {op.value: Counter() for op in Op}
        self._call_ids = itertools.count(1)
        self._worker_ids = itertools.count(1)
        self._process_cls, self._pipe = worker_mod.process_factory()
        policy = config.pacing_policy
        schema = BAR_SCHEMA.serialize().to_pybytes()
        self.lanes: list[Lane] = []
        for address in config.addresses:
            pacer = SharedPacer(address.key, policy, margin=config.pacing_margin,
                                margin_ratio=config.pacing_margin_ratio) \
                if policy.enabled else None
            settings = worker_mod.WorkerSettings(
                host=address.host, port=address.port, connect_timeout=config.connect_timeout,
                idle_timeout=config.idle_timeout, readonly=config.readonly,
                schema_message=schema, pacer=pacer, parent_pid=os.getpid(),
                log_level=log_level, backend=self.backend)
            self.lanes.append(Lane(address, pacer, settings))
        self.retry = config.retry_policy
        self.next_check = math.inf  # earliest deadline of a call out at IB
        self.next_poll = math.inf  # when a blocked head of the queue may pass the pacer
        self.down_since: float | None = None  # since when queued work has had no gateway
        self._crowded = False  # a call went to a busy worker: another may be worth spawning
        # The wake-up pipe's fds are closed once, under this lock, and never used after: a
        # stray write to a closed (and reused) fd number would corrupt someone else's stream.
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched: dict[int, WorkerHandle] = {}
        self.thread = threading.Thread(target=self._run, name="ibfarm-manager", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- placing work

    def submit(self, op: Op, args: tuple, paced: PacedRequest | None = None,
               messages: int = 0) -> FarmFuture:
        with self.lock:
            if self.shutting_down or self.broken:
                raise RuntimeError(f"cannot schedule new futures after "
                                   f"{'shutdown' if self.shutting_down else self.broken}")
            call_id = next(self._call_ids)
            future = FarmFuture(lambda: self.cancel(call_id))
            item = WorkItem(call_id, op, args, future, call_id, self.config.request_timeout,
                            paced, messages)
            self.items[call_id] = item
            self.totals["submitted"] += 1
            self.queue.push(item, time.monotonic())
            sends = self._dispatch()
            fails = self._fail_unreachable()
        self._flush(sends)
        self._finish(fails)
        if self.next_poll < math.inf or self.queue:
            self.wake()  # the manager thread takes over what could not go at once
        return future

    def cancel(self, call_id: int) -> None:
        """A future was cancelled: drop its item from the queue, or cancel it at its worker."""
        sends: Sends = []
        with self.lock:
            item = self.items.pop(call_id, None)
            if item is None:
                return
            self.totals["cancelled"] += 1
            self.outcomes[item.op.value]["cancelled"] += 1
            if item.state is ItemState.QUEUED:
                self.queue.discard(item)
                for lane in self.lanes:
                    lane.forget(item)
            elif item.state is ItemState.SENT:
                handle = item.worker
                handle.in_flight.pop(call_id, None)
                self._unsend(item)
                sends.append((handle, Cancel(call_id)))
            item.state = ItemState.DONE
            if not self.shutting_down:
                sends += self._dispatch()
        self._flush(sends)

    def _dispatch(self) -> Sends:
        """Send what the pacer and the workers allow now, oldest first (under the lock)."""
        now = time.monotonic()
        self.queue.promote(now)
        self.next_poll = math.inf
        sends: Sends = []
        skipped: list[WorkItem] = []
        passed = 0  # items passed over because one contract is held
        while (item := self.queue.peek()) is not None:
            if item.suspects >= ALONE_AFTER:
                outcome = self._dispatch_alone(item, now, sends)
                if outcome == "sent":
                    continue
                if outcome == "wait":  # no idle worker yet: the others go meanwhile
                    skipped.append(self.queue.pop())
                    continue
                break
            lanes = [lane for lane in self.lanes if lane.ready_workers()]
            if not lanes:
                self._grow()
                break
            placed, per_contract = self._try_lanes(item, lanes, now, sends)
            if placed:
                continue
            if per_contract and passed < MAX_SKIP:
                skipped.append(self.queue.pop())  # one contract held; others may go
                passed += 1
                continue
            break
        for item in skipped:
            self.queue.push(item, now)
        if self.queue or self._crowded:
            self._grow()
            self._crowded = False
        return sends

    def _try_lanes(self, item: WorkItem, lanes: list[Lane], now: float,
                   sends: Sends) -> tuple[bool, bool]:
        """Give ``item`` to the lane that can send it now; (placed, held only per contract)."""
        per_contract = True
        for lane in sorted(lanes, key=lambda lane: lane.in_flight()):
            grant, waiter = lane.poll(item)
            if grant is not None:
                for other in self.lanes:
                    if other is not lane:
                        other.forget(item)
                handle = min(lane.ready_workers(), key=lambda w: (len(w.in_flight),
                                                                   w.worker_id))
                self._crowded |= bool(handle.in_flight)  # no idle worker was there for it
                sends.append(self._send_call(self.queue.pop(), lane, handle, grant, now))
                return True, False
            self.next_poll = min(self.next_poll, now + waiter.eta)
            if any(rule in GLOBAL_RULES for rule, _ in waiter.blocked):
                per_contract = False
        return False, per_contract

    def _dispatch_alone(self, item: WorkItem, now: float, sends: Sends) -> str:
        """A suspect request goes to a worker with nothing else in flight: "sent", "wait"
        (no such worker yet: one is draining for it), or "blocked" (the pacer holds it)."""
        idle = [(lane, w) for lane in self.lanes for w in lane.workers.values()
                if w.state is WorkerState.READY and not w.retiring and not w.in_flight
                and w.exclusive is None]
        if not idle:
            busy = [w for lane in self.lanes for w in lane.workers.values()
                    if w.state is WorkerState.READY and not w.retiring and w.exclusive is None]
            if busy and not any(w.reserved_until > now for w in busy):
                min(busy, key=lambda w: len(w.in_flight)).reserved_until = now + RESERVE_FOR
            self._grow()
            return "wait"
        for lane, handle in idle:
            grant, waiter = lane.poll(item)
            if grant is not None:
                for other in self.lanes:
                    if other is not lane:
                        other.forget(item)
                for w in (w for lane in self.lanes for w in lane.workers.values()):
                    w.reserved_until = 0.0
                sends.append(self._send_call(self.queue.pop(), lane, handle, grant, now))
                return "sent"
            self.next_poll = min(self.next_poll, now + waiter.eta)
        return "blocked"

    def _send_call(self, item: WorkItem, lane: Lane, handle: WorkerHandle, grant: Grant,
                   now: float) -> tuple[WorkerHandle, Call]:
        item.state = ItemState.SENT
        item.lane, item.worker = lane, handle
        item.grant = None if grant.empty else grant
        item.sent_at = now
        item.deadline = now + item.budget + TIMEOUT_GRACE
        item.paused_left = None
        if item.suspects >= ALONE_AFTER:
            handle.exclusive = item
        handle.in_flight[item.call_id] = item
        handle.last_active = now
        self.next_check = min(self.next_check, item.deadline)
        return handle, Call(item.call_id, item.op, item.args, item.budget, item.grant)

    def _unsend(self, item: WorkItem) -> None:
        """``item`` is no longer out at IB: give its pacer slot back."""
        handle = item.worker
        if handle is not None and handle.exclusive is item:
            handle.exclusive = None
        if item.grant is not None and item.lane.pacer is not None:
            item.lane.pacer.release(item.grant)
        item.grant = item.worker = None

    def _requeue(self, item: WorkItem, now: float, delay: float = 0.0) -> None:
        item.not_before = now + delay
        self.queue.push(item, now)

    def _grow(self) -> None:
        """Work is waiting, or went to a busy worker: spawn a worker on each lane whose workers
        are all busy (or that has none), up to ``max_workers``. Until a lane has connected
        once, one worker tries for it."""
        if self.shutting_down or self.broken:
            return
        for lane in self.lanes:
            live = [w for w in lane.workers.values() if not w.retiring]
            if len(live) >= self.config.max_workers:
                continue
            if live and not lane.ever_ready:
                continue  # not reached yet: its first worker is trying
            if any(w.state in (WorkerState.STARTING, WorkerState.CONNECTING)
                   or (w.takes_work and not w.in_flight) for w in live):
                continue  # one is on its way, or idle
            self._spawn(lane)

    def _free_client_id(self, lane: Lane) -> int | None:
        now = time.monotonic()
        used = {w.client_id for w in lane.workers.values()}
        for cid in lane.address.client_ids:
            if cid not in used and lane.blocked_ids.get(cid, 0.0) <= now:
                return cid
        return None

    def _spawn(self, lane: Lane) -> WorkerHandle | None:
        client_id = self._free_client_id(lane)
        if client_id is None:
            return None
        worker_id = next(self._worker_ids)
        parent_end, child_end = self._pipe(duplex=True)
        process = self._process_cls(
            target=worker_mod.main, args=(child_end, worker_id, client_id, lane.settings),
            name=f"ibfarm-worker-{worker_id}", daemon=True)
        process.start()
        child_end.close()
        handle = WorkerHandle(worker_id, lane, process, parent_end, client_id, time.monotonic())
        handle.last_active = handle.started
        lane.workers[worker_id] = handle
        self.totals["spawned"] += 1
        log.info("worker %d: spawned for %s (pid %s, client id %d)", worker_id, lane.key,
                 process.pid, client_id)
        self.wake()
        return handle

    def _fail_unreachable(self) -> Fails:
        """No gateway was ever reached and every one has failed to connect: fail the queue
        now (the workers keep trying; work submitted after they connect runs)."""
        if not self.queue or any(lane.ever_ready or not lane.connect_failures
                                 for lane in self.lanes):
            return []
        where = "; ".join(f"{lane.key} ({lane.last_error})" if lane.last_error else lane.key
                          for lane in self.lanes)
        error = IbConnectionError(502, (
            f"Couldn't connect to TWS / IB Gateway at {where}. Check that it is running and "
            "logged in, that its API port is this one (IB_HOST / IB_PORT), and that 'Enable "
            "ActiveX and Socket Clients' is on; or use the simulated gateway."))
        return [(item, error, None) for item in self._take_queue()]

    def _take_queue(self) -> list[WorkItem]:
        items = self.queue.drain()
        for item in items:
            self.items.pop(item.call_id, None)
            for lane in self.lanes:
                lane.forget(item)
        return items

    @staticmethod
    def _flush(sends: Iterable[tuple[WorkerHandle, Any]]) -> None:
        for handle, msg in sends:
            handle.send(msg)

    def _finish(self, fails: Fails) -> None:
        """Resolve futures (outside the lock) and count their outcomes."""
        for item, error, value in fails:
            _resolve(item.future, value, error)

    def _count(self, item: WorkItem, error: BaseException | None) -> None:
        """Count how ``item`` ended (under the lock)."""
        if error is None:
            outcome = "completed"
        elif isinstance(error, IbError) and error.kind is ErrorKind.TIMEOUT:
            outcome = "timed_out"
        else:
            outcome = "failed"
        self.totals[outcome if outcome != "timed_out" else "failed"] += 1
        if outcome == "timed_out":
            self.totals["timed_out"] += 1
        self.outcomes[item.op.value][outcome] += 1
        if isinstance(error, IbError) and error.code:
            self.ib_errors[error.code] += 1

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
            if self.shutting_down and not self.items:
                return False
            current = {w.worker_id: w for lane in self.lanes for w in lane.workers.values()}
            wake_at = min(self.next_check, self.next_poll, self.queue.next_due(),
                          self._next_housekeeping())
        self._sync_selector(current)
        timeout = max(0.0, min(TICK, wake_at - time.monotonic()))
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
        self._housekeeping()
        return True

    def _next_housekeeping(self) -> float:
        times = [item.sent_at + QUARANTINE_CLEAR for lane in self.lanes
                 for w in lane.workers.values() if (item := w.exclusive) is not None]
        if self.down_since is not None:
            times.append(self.down_since + self.config.outage_timeout)
        return min(times, default=math.inf)

    def _housekeeping(self) -> None:
        """Deadlines, due retries, the pacer's next turn, outages, shutdown leftovers."""
        now = time.monotonic()
        fails: Fails = []
        sends: Sends = []
        with self.lock:
            if now >= self.next_check:
                self._expire(now, sends, fails)
            for lane in self.lanes:
                for handle in lane.workers.values():
                    if handle.exclusive is not None and \
                            now - handle.exclusive.sent_at >= QUARANTINE_CLEAR:
                        handle.exclusive = None  # it did not take the connection down
            if self.shutting_down and self.queue and not any(
                    w for lane in self.lanes for w in lane.workers.values() if not w.retiring):
                error = FarmShutdownError(0, "the farm was shut down before this request "
                                             "could be sent")
                fails += [(item, error, None) for item in self._take_queue()]
            fails += self._check_outage(now)
            sends += self._dispatch()
        self._flush(sends)
        self._finish(fails)

    def _check_outage(self, now: float) -> Fails:
        usable = any(w.state is WorkerState.READY for lane in self.lanes
                     for w in lane.workers.values())
        if usable or not self.queue:
            self.down_since = None
            return []
        if not any(lane.ever_ready for lane in self.lanes):
            return self._fail_unreachable()
        if self.down_since is None:
            self.down_since = now
            return []
        if now - self.down_since < self.config.outage_timeout:
            return []
        states = ", ".join(f"{lane.key} {lane.state()}" for lane in self.lanes)
        error = IbConnectionError(0, (
            f"no gateway has been usable for {self.config.outage_timeout:g} s ({states}); "
            "check IB Gateway / TWS, or raise outage_timeout (IBFARM_OUTAGE_TIMEOUT)"))
        self.down_since = None
        return [(item, error, None) for item in self._take_queue()]

    def _sync_selector(self, current: dict[int, WorkerHandle]) -> None:
        """Watch the pipe and sentinel of every current worker (manager thread only)."""
        for worker_id in current.keys() - self._watched.keys():
            handle = current[worker_id]
            self._selector.register(handle.conn, selectors.EVENT_READ, ("conn", handle))
            self._selector.register(handle.process.sentinel, selectors.EVENT_READ,
                                    ("death", handle))
            self._watched[worker_id] = handle
        for worker_id in self._watched.keys() - current.keys():
            self._unwatch(self._watched[worker_id])

    def _unwatch(self, handle: WorkerHandle) -> None:
        if self._watched.pop(handle.worker_id, None) is not None:
            for fileobj in (handle.conn, handle.process.sentinel):
                try:
                    self._selector.unregister(fileobj)
                except (KeyError, ValueError, OSError):
                    pass

    def _drain(self, handle: WorkerHandle) -> None:
        """Read every message waiting on ``handle``'s pipe."""
        while True:
            try:
                if not handle.conn.poll(0):
                    return
                data = handle.conn.recv_bytes()
            except (EOFError, OSError):
                return
            self._on_frame(handle, data)

    def _on_frame(self, handle: WorkerHandle, data: bytes) -> None:
        if is_bars_frame(data):
            call_id, stream = read_bars_header(data)
            try:
                self._on_result(handle, call_id, pa.ipc.open_stream(pa.py_buffer(stream))
                                .read_all(), None)
            except Exception as exc:  # a frame that does not parse: the call fails with it
                self._on_result(handle, call_id, None, exc)
            return
        try:
            msg = pickle.loads(data)
        except Exception as exc:
            log.error("worker %d: unreadable message: %r", handle.worker_id, exc)
            return
        match msg:
            case Result(call_id=call_id, value=value, error=error):
                self._on_result(handle, call_id, value, error)
            case Interrupted():
                self._on_interrupted(handle, msg)
            case StateChanged():
                self._on_state(handle, msg)
            case ConnectFailed():
                self._on_connect_failed(handle, msg)
            case ClientIdRefused():
                self._on_id_refused(handle, msg)
            case Idle():
                self._on_idle(handle)
            case _:
                log.error("worker %d: unexpected message %r", handle.worker_id, msg)

    def _on_result(self, handle: WorkerHandle, call_id: int, value: Any,
                   error: BaseException | None) -> None:
        now = time.monotonic()
        fails: Fails = []
        with self.lock:
            item = handle.in_flight.pop(call_id, None)
            if item is None:
                return  # timed out or cancelled already
            self._unsend(item)
            handle.last_active = now
            handle.served += 1
            handle.lane.served += 1
            delay = None
            if isinstance(error, IbError) and error.kind is ErrorKind.TIMEOUT and \
                    handle.lane.ib_down:
                # A worker that never heard the 1100 timed the call out while IB was away:
                # not the request's fault. It waits in the queue for IB like the others.
                self.totals["requeued"] += 1
                self._requeue(item, now)
            elif isinstance(error, IbError) and error.kind is not ErrorKind.TIMEOUT:
                delay = self.retry.delay(item.failures + 1, error.kind)
            if item.state is ItemState.QUEUED:
                pass
            elif delay is not None:
                item.failures += 1
                self.ib_retries[error.kind.value] += 1
                log.info("call %d got %s; retry %d in %.2f s", call_id, error, item.failures,
                         delay)
                self._requeue(item, now, delay)
            else:
                if error is not None:
                    handle.errors += 1
                self.items.pop(call_id, None)
                item.state = ItemState.DONE
                self._count(item, error)
                fails.append((item, error, value))
        self._finish(fails)

    def _on_interrupted(self, handle: WorkerHandle, msg: Interrupted) -> None:
        now = time.monotonic()
        fails: Fails = []
        with self.lock:
            item = handle.in_flight.pop(msg.call_id, None)
            if item is None:
                return
            alone = handle.exclusive is item
            self._unsend(item)
            item.budget -= msg.at_ib
            item.suspects += msg.suspect
            item.alone_closes += msg.suspect and alone
            if msg.reason is Interruption.NOT_CONNECTED and handle.state is WorkerState.READY:
                handle.state = WorkerState.RECONNECTING  # its own news is on the way
            self.totals["requeued"] += 1
            if item.alone_closes >= self.config.max_resends:
                # only closes while it was alone on its connection count: a close in a burst
                # blames every request sent in that instant
                error: IbError = InvalidRequestError(0, (
                    f"the gateway closed its connection each time this request was sent "
                    f"({item.suspects} times, {item.alone_closes} of them alone): it cannot "
                    "read it. Check the symbol and the request's fields for characters IB "
                    "does not accept."))
            elif item.budget <= 0:
                error = RequestTimeoutError(0, f"no answer from IB within "
                                               f"{self.config.request_timeout:g} s")
            else:
                log.info("call %d interrupted (%s%s); queued again", msg.call_id,
                         msg.reason.value, ", suspect" if msg.suspect else "")
                self._requeue(item, now)
                error = None
            if error is not None:
                self.items.pop(item.call_id, None)
                item.state = ItemState.DONE
                self._count(item, error)
                fails.append((item, error, None))
        self._finish(fails)

    def _on_state(self, handle: WorkerHandle, msg: StateChanged) -> None:
        now = time.monotonic()
        with self.lock:
            previous, handle.state, handle.detail = handle.state, msg.state, msg.detail
            handle.client_id = msg.client_id or handle.client_id
            if msg.state is WorkerState.RETIRING and msg.detail == SIGNALLED:
                handle.signalled = handle.retiring = True  # no new work; not a crash
            if handle.retiring:
                handle.state = WorkerState.RETIRING
            if msg.state is WorkerState.READY:
                handle.lane.ever_ready = True
                handle.lane.connect_failures = 0
                handle.lane.last_error = ""
                if handle.ready_after is None:
                    handle.ready_after = now - handle.started
            lane = handle.lane
            if msg.state is WorkerState.LINK_DOWN and not lane.ib_down:
                lane.ib_down = True  # IB is away: every call's clock on this gateway stops
                for item in (i for w in lane.workers.values() for i in w.in_flight.values()):
                    item.paused_left = max(0.0, item.deadline - TIMEOUT_GRACE - now)
                    item.deadline = math.inf
            elif previous is WorkerState.LINK_DOWN and msg.state is WorkerState.READY \
                    and lane.ib_down:
                lane.ib_down = False
                for item in (i for w in lane.workers.values() for i in w.in_flight.values()):
                    if item.paused_left is not None:
                        item.deadline = now + item.paused_left + TIMEOUT_GRACE
                        item.paused_left = None
                        self.next_check = min(self.next_check, item.deadline)

    def _on_connect_failed(self, handle: WorkerHandle, msg: ConnectFailed) -> None:
        with self.lock:
            lane = handle.lane
            lane.connect_failures += 1
            lane.refused = msg.refused
            lane.last_error = msg.detail
            handle.detail = msg.detail
            fails = self._fail_unreachable()
        self._finish(fails)

    def _on_id_refused(self, handle: WorkerHandle, msg: ClientIdRefused) -> None:
        sends: Sends = []
        with self.lock:
            lane = handle.lane
            lane.blocked_ids[msg.client_id] = time.monotonic() + ID_IN_USE_COOLDOWN
            handle.client_id = -1  # free the id it had while we choose
            new_id = self._free_client_id(lane)
            log.warning("worker %d: client id %d is taken by another client on %s; moving to %s",
                        handle.worker_id, msg.client_id, lane.key, new_id)
            if new_id is None:
                handle.client_id = msg.client_id
                handle.retiring, handle.state = True, WorkerState.RETIRING
                sends.append((handle, Exit()))
                fails = self._fail_ids_exhausted(lane)
            else:
                handle.client_id = new_id
                sends.append((handle, UseClientId(new_id)))
                fails = []
        self._flush(sends)
        self._finish(fails)

    def _fail_ids_exhausted(self, lane: Lane) -> Fails:
        """Every client id of every gateway is taken by other programs: fail the queue."""
        if any(self._free_client_id(other) is not None or other.ready_workers()
               for other in self.lanes):
            return []
        ids = lane.address.client_ids
        error = ClientIdInUseError(326, (
            f"every client id in {ids.start}..{ids.stop - 1} is in use by another client; "
            "free one or give the farm others (IBFARM_CLIENT_IDS)"))
        return [(item, error, None) for item in self._take_queue()]

    def _on_idle(self, handle: WorkerHandle) -> None:
        sends: Sends = []
        with self.lock:
            if not handle.in_flight and not handle.retiring:
                handle.retiring, handle.state = True, WorkerState.RETIRING
                self.totals["idle_exits"] += 1
                sends.append((handle, Exit()))
        self._flush(sends)

    def _on_death(self, handle: WorkerHandle) -> None:
        self._drain(handle)
        handle.process.join(0.5)
        exitcode = handle.process.exitcode
        if exitcode == STATUS_LOST:
            # the forkserver died (a signal to the whole group): the worker itself may still
            # be in its SIGTERM handler, saying why it leaves; let it finish, then read it
            _wait_gone(handle.process.pid, WORKER_GONE_WAIT)
            self._drain(handle)
        now = time.monotonic()
        fails: Fails = []
        with self.lock:
            handle.lane.workers.pop(handle.worker_id, None)
            items = list(handle.in_flight.values())
            handle.in_flight.clear()
            clean = (handle.retiring or self.shutting_down) and exitcode == 0
            # a worker stopped by SIGTERM said so, whatever status the forkserver reports
            if handle.signalled or not clean:
                if not handle.signalled:
                    self.totals["crashed"] += 1
                # during shutdown a worker ended by the same signal as its parent is expected
                quiet = handle.signalled or self.shutting_down
                log.log(logging.INFO if quiet else logging.WARNING,
                        "worker %d (pid %s, client id %d) %s with %d request(s) in flight",
                        handle.worker_id, handle.process.pid, handle.client_id,
                        SIGNALLED if handle.signalled else describe_exit(exitcode), len(items))
            for item in items:
                self._unsend(item)
                if not handle.signalled:  # stopped from outside is not the request's doing
                    item.deaths += 1
                if item.deaths > self.config.max_retries:
                    error = WorkerCrashedError(0, (
                        f"worker {handle.worker_id} (pid {handle.process.pid}, client id "
                        f"{handle.client_id}) {describe_exit(exitcode)} with this request in "
                        f"flight; {item.deaths} workers died with it, giving up"))
                    self.items.pop(item.call_id, None)
                    item.state = ItemState.DONE
                    self._count(item, error)
                    fails.append((item, error, None))
                else:
                    self.totals["retried"] += 1
                    self._requeue(item, now)
        self._unwatch(handle)
        self._close_handle(handle)
        self._finish(fails)

    def _expire(self, now: float, sends: Sends, fails: Fails) -> None:
        """Fail the calls whose time at IB ran out and cancel them at their worker."""
        next_check = math.inf
        for lane in self.lanes:
            if lane.ib_down:
                continue  # clocks stopped while IB is away
            for handle in lane.workers.values():
                for item in list(handle.in_flight.values()):
                    if item.deadline > now:
                        next_check = min(next_check, item.deadline)
                        continue
                    del handle.in_flight[item.call_id]
                    handle.errors += 1
                    self._unsend(item)
                    sends.append((handle, Cancel(item.call_id)))
                    self.items.pop(item.call_id, None)
                    item.state = ItemState.DONE
                    error = RequestTimeoutError(0, (
                        f"no answer from worker {handle.worker_id} within "
                        f"{self.config.request_timeout:g} s at IB"))
                    self._count(item, error)
                    fails.append((item, error, None))
        self.next_check = next_check

    # ----------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool, cancel_futures: bool, cancel_running: bool = False) -> None:
        with self.lock:
            self.shutting_down = True
            queued = self._take_queue() if cancel_futures else []
            sent = [i for i in self.items.values() if i.state is ItemState.SENT] \
                if cancel_running else []
        for item in queued:
            with self.lock:
                self.totals["cancelled"] += 1
                self.outcomes[item.op.value]["cancelled"] += 1
            if not item.future.cancel():
                _resolve(item.future, error=FarmShutdownError(0, "the farm was shut down"))
        for item in sent:
            item.future.cancel()
        self.wake()
        if wait and threading.current_thread() is not self.thread:
            self.thread.join()

    def _break(self, reason: str) -> None:
        with self.lock:
            self.broken = reason
            items = list(self.items.values())
            self.items.clear()
            self.queue.drain()
            for lane in self.lanes:
                for handle in lane.workers.values():
                    handle.in_flight.clear()
        for item in items:
            _resolve(item.future, error=FarmShutdownError(0, reason))

    def _stop_workers(self) -> None:
        with self.lock:
            workers = [w for lane in self.lanes for w in lane.workers.values()]
            for lane in self.lanes:
                lane.workers.clear()
                lane.forget_all()
        for handle in workers:
            handle.send(Exit())
        deadline = time.monotonic() + EXIT_GRACE
        for handle in workers:
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.exitcode is None:
                log.warning("worker %d did not exit; killing it", handle.worker_id)
                handle.process.kill()
                handle.process.join(1.0)
            self._unwatch(handle)
            self._close_handle(handle)

    @staticmethod
    def _close_handle(handle: WorkerHandle) -> None:
        handle.conn.close()
        if handle.process.exitcode is not None:
            handle.process.close()  # its sentinel and the forkserver's pipe

    def _close(self) -> None:
        for handle in list(self._watched.values()):
            self._unwatch(handle)
        self._selector.close()
        for lane in self.lanes:
            if lane.pacer is not None:
                lane.pacer.close()
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
            pairs = [(lane, w) for lane in self.lanes for w in lane.workers.values()]
            rows = [{
                "worker_id": w.worker_id, "pid": w.process.pid, "client_id": w.client_id,
                "gateway": lane.key, "state": w.state.value, "detail": w.detail,
                "in_flight": len(w.in_flight), "served": w.served, "errors": w.errors,
                "idle_s": 0.0 if w.in_flight else round(now - w.last_active, 3),
                "age_s": round(now - w.started, 3), "ready_after_s": w.ready_after,
            } for lane, w in pairs]
            in_flight = sum(r["in_flight"] for r in rows)
            farm = {name: self.totals[name] for name in (
                "submitted", "completed", "failed", "cancelled", "retried", "requeued",
                "timed_out", "spawned", "crashed", "idle_exits")}
            farm.update(
                workers=len(rows), max_workers=self.config.max_workers, in_flight=in_flight,
                pending=len(self.queue), waiting_retry=self.queue.waiting_retries(),
                shutdown=self.shutting_down, broken=self.broken, backend=self.backend,
                ib_retries=dict(self.ib_retries), ib_errors=dict(self.ib_errors),
                requests={op: dict(c) for op, c in self.outcomes.items() if c})
            lanes = [{"gateway": lane.key, "state": lane.state(),
                      "client_ids": f"{lane.address.client_ids.start}-"
                                    f"{lane.address.client_ids.stop - 1}",
                      "workers": len(lane.workers), "in_flight": lane.in_flight(),
                      "served": lane.served, "last_error": lane.last_error,
                      "refused": lane.refused and not lane.ever_ready,
                      "ib_down": lane.ib_down}
                     for lane in self.lanes]
        for (_, handle), row in zip(pairs, rows, strict=True):
            row.update(_process_usage(handle))
        for lane, entry in zip(self.lanes, lanes, strict=True):
            entry["pacer"] = _pacer_stats(lane.pacer)
        return {"workers": rows, "farm": farm, "gateways": lanes, "pacer": lanes[0]["pacer"]}


def _pacer_stats(pacer: SharedPacer | None) -> dict | None:
    if pacer is None or pacer.closed:
        return None
    try:
        return pacer.stats()
    except Exception as exc:  # closed meanwhile
        return {"error": repr(exc)}


def _process_usage(handle: WorkerHandle) -> dict:
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


__all__ = ["FarmFuture", "Lane", "Manager", "WorkItem", "WorkQueue", "WorkerHandle"]
