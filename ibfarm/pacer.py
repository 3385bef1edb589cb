"""The shared pacer: one gateway's pacing budget in named shared memory.

IB applies its pacing rules (``ibfarm.pacing``) to the gateway as a whole, so ``SharedPacer``
keeps one budget per gateway (host:port) in a shared-memory segment that every process on the
host attaches to: every farm's manager, its workers, benchmark baselines. All times are
``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on a host). Every window is
widened by a margin (``max(margin, margin_ratio * window)``), because the gateway stamps a
request when it reads it, a little after the pacer granted it, and more so on a loaded machine
with scaled-down windows. A lock file next to the segment (``fcntl.flock``, released by the
kernel when its holder dies) guards every read and write; it is held for microseconds, never
across a wait.

How a request gets its turn::

    Waiter(want)            one acquisition: a historical request (slot + rules + a message)
      .poll() ──► granted?  or a number of messages
         │  no: a Ticket in the shared queue (arrival order, every process), and
         │      ``waiter.eta`` = seconds until the blocking rule may let it pass
         │  yes: a Grant (the open slot held, the small-bar record written)
         ▼
    Grant ──► mark_sent(grant)   the request left: its record is re-dated to the send
          └─► release(grant)     answered, failed or cancelled: the slot is free again

The farm's manager holds one ``Waiter`` per gateway for the head of its queue (not one per
queued request), so a queue of 20,000 costs the pacer what a queue of one does. The asyncio
helpers (``historical()``, ``acquire_messages()``) poll a waiter with ``asyncio.sleep``.

Shared layout (little-endian; one segment ``<namespace>_<blake2b(host:port)>`` per gateway)::

    +-----------------------------------------------------------------------------+
    | header   magic "IBFPACER" | version | size | next_ticket | hist_head |      |
    |          msg_head | next_token | last_hist | last_purge | stats (grants,    |
    |          messages, waits, wait_time, max_wait, one wait count per rule)     |
    +-----------------------------------------------------------------------------+
    | users    256 x (pid, start_time)              attached pacers; last out unlinks |
    | slots     64 x (pid, start_time, since, token) open historical requests       |
    | tickets 1024 x (ticket, pid, start_time, arrived, seen, key#, contract#,      |
    |                 weight, kind)                 waiters in arrival order        |
    | history 4096 x (granted_at, key#, contract#, weight)   ring of small-bar grants |
    | messages 1024 x granted_at                     ring of messages sent          |
    +-----------------------------------------------------------------------------+

``key#`` is an 8-byte blake2b digest of ``repr(key)`` (stable across processes, unlike
``hash()``). A ``(pid, start_time)`` pair names a process; entries whose process is gone (or is a
zombie, or whose pid was reused) are purged, so a SIGKILLed process's slots and tickets come back.

Fairness: at each poll the waiting tickets are replayed in arrival order against the current
state: each earlier waiter that the rules allow is granted virtually (it takes its share first);
an earlier waiter held by a gateway-wide rule (open slots, the ten-minute window, spacing,
message rate) also holds every later waiter that needs the same resource, while one held by a
per-contract rule (identical, same contract) is skipped, so one blocked contract does not hold
back the others. A waiter is granted when it is allowed after that replay. Tickets whose owner
has not polled for ``STALE_AFTER`` seconds (a stalled process) are skipped until it polls again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import psutil

from ibfarm.pacing import GLOBAL_RULES, PacedRequest, PacingPolicy, Rule, RuleState

log = logging.getLogger(__name__)

MAGIC, VERSION = b"IBFPACER", 2
N_USERS, N_SLOTS, N_TICKETS, N_HISTORY, N_MESSAGES = 256, 64, 1024, 4096, 1024
STALE_AFTER = 2.0  # a waiter that has not polled for this long does not hold others back
PURGE_EVERY = 0.25  # seconds between scans for dead processes
POLL = 0.01  # seconds between polls when no rule says how long to wait
MAX_SLEEP = 0.25  # longest wait between polls (keeps tickets fresh, notices purges)
RULES = tuple(Rule)


class TicketKind(enum.IntEnum):
    """What a ticket (or an acquisition) asks for."""

    FREE = 0  # an empty ticket row
    MESSAGES = 1  # messages only (weight = how many)
    HISTORICAL = 2  # a historical request outside the small-bar rules
    SMALL_BARS = 3  # a historical request the small-bar rules cover (weight = its weight)


_HEADER = np.dtype([
    ("magic", "S8"), ("version", "<u4"), ("size", "<u4"), ("next_ticket", "<u8"),
    ("hist_head", "<u8"), ("msg_head", "<u8"), ("next_token", "<u8"), ("last_hist", "<f8"),
    ("last_purge", "<f8"), ("grants", "<u8"), ("messages", "<u8"), ("waits", "<u8"),
    ("wait_time", "<f8"), ("max_wait", "<f8"), ("rule_waits", "<u8", (len(RULES),)),
])
_USER = np.dtype([("pid", "<i8"), ("start", "<f8")])
_SLOT = np.dtype([("pid", "<i8"), ("start", "<f8"), ("since", "<f8"), ("token", "<u8")])
_TICKET = np.dtype([
    ("ticket", "<u8"), ("pid", "<i8"), ("start", "<f8"), ("arrived", "<f8"), ("seen", "<f8"),
    ("key", "<u8"), ("contract", "<u8"), ("weight", "<i8"), ("kind", "<i8"),
])
_RECORD = np.dtype([("t", "<f8"), ("key", "<u8"), ("contract", "<u8"), ("weight", "<i8")])
_TABLES = (("users", _USER, N_USERS), ("slots", _SLOT, N_SLOTS), ("tickets", _TICKET, N_TICKETS),
           ("history", _RECORD, N_HISTORY), ("msgs", np.dtype("<f8"), N_MESSAGES))


def _layout() -> tuple[dict[str, int], int]:
    offsets, offset = {}, -(-_HEADER.itemsize // 64) * 64
    for name, dtype, count in _TABLES:
        offsets[name] = offset
        offset += -(-dtype.itemsize * count // 64) * 64
    return offsets, offset


_OFFSETS, SEGMENT_SIZE = _layout()


def _digest(value: object) -> int:
    """8-byte hash of ``repr(value)``, the same in every process."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little")


def segment_name(key: str, namespace: str = "ibfarm") -> str:
    """Short shared-memory name for a gateway ``key`` ("host:port")."""
    return f"{namespace[:16]}_{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}"


def _start_time(pid: int) -> float | None:
    """Start time of a live process, None if it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time()
    except psutil.Error:
        return None


def _open_lock(path: str) -> int:
    """Open and lock ``path``, retrying if it was removed or replaced while we waited."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@dataclass(frozen=True)
class Want:
    """What one acquisition asks for."""

    kind: TicketKind
    key: int = 0
    contract: int = 0
    weight: int = 0  # window weight of a small-bar request
    messages: int = 1

    @property
    def historical(self) -> bool:
        return self.kind in (TicketKind.HISTORICAL, TicketKind.SMALL_BARS)

    @classmethod
    def from_ticket(cls, row: tuple) -> Want:
        _, _, _, _, _, key, contract, weight, kind = row
        if kind == TicketKind.MESSAGES:
            return cls(TicketKind.MESSAGES, messages=weight)
        return cls(TicketKind(kind), key, contract, weight)

    def ticket_weight(self) -> int:
        return self.messages if self.kind == TicketKind.MESSAGES else self.weight


@dataclass(frozen=True)
class Grant:
    """A granted acquisition: the open slot a historical request holds (-1: none), the
    small-bar record it wrote (-1: none) and the sequence numbers of the messages it took
    (``messages`` from ``message``; -1: none). It pickles, so the process that sends the
    request (a worker) can re-date it while the one that asked (the manager) releases it."""

    slot: int = -1
    token: int = 0
    record: int = -1
    key: int = 0
    message: int = -1
    messages: int = 0

    @property
    def empty(self) -> bool:
        """Nothing to re-date or release (pacing off, or a forced record)."""
        return self.slot < 0 and self.message < 0


#: The grant when pacing is off (nothing to re-date or release).
MESSAGES_GRANTED = Grant()


class _Snapshot:
    """The budget at ``now``, with earlier waiters granted virtually during the replay."""

    def __init__(self, pacer: SharedPacer, now: float):
        policy = pacer.policy
        self.policy, self.now = policy, now
        hist = pacer._t["history"]
        horizon = max(policy.window, policy.identical_window, policy.same_contract_window)
        rows = hist[(hist["weight"] > 0) & (hist["t"] > now - horizon - pacer.widen(horizon))]
        self.rules = RuleState(policy, np.sort(rows, order="t").tolist(), now, pacer.widen)
        self.message_window = policy.message_window + pacer.widen(policy.message_window)
        msgs = pacer._t["msgs"]
        self.msgs = np.sort(msgs[msgs > now - self.message_window]).tolist()
        self.open = int(np.count_nonzero(pacer._t["slots"]["pid"]))
        self.last_hist = float(pacer._h["last_hist"])
        self.exhausted: dict[Rule, float | None] = {}  # gateway-wide rules earlier waiters await

    def blocking(self, want: Want) -> list[tuple[Rule, float | None]]:
        """Rules holding ``want`` back, each with seconds to wait (None: unknown)."""
        policy, now = self.policy, self.now
        out: list[tuple[Rule, float | None]] = []
        if want.historical:
            if self.open >= policy.max_open_requests:
                out.append((Rule.OPEN_REQUESTS, None))
            if want.kind == TicketKind.SMALL_BARS:
                out += self.rules.blocking(want.key, want.contract, want.weight)
            if policy.min_spacing > 0 and now - self.last_hist < policy.min_spacing:
                out.append((Rule.MIN_SPACING, self.last_hist + policy.min_spacing - now))
        excess = len(self.msgs) + want.messages - policy.message_rate
        if excess > 0:
            out.append((Rule.MESSAGE_RATE, self.msgs[excess - 1] + self.message_window - now))
        held = {rule for rule, _ in out}
        for rule, eta in self.exhausted.items():
            if rule not in held and (rule == Rule.MESSAGE_RATE or want.historical) and (
                    rule != Rule.WINDOW or want.kind == TicketKind.SMALL_BARS):
                out.append((rule, eta))
        return out

    def grant(self, want: Want) -> None:
        """Take ``want``'s share virtually."""
        if want.kind == TicketKind.SMALL_BARS:
            self.rules.add(want.key, want.contract, want.weight)
        if want.historical:
            self.open += 1
            self.last_hist = self.now
        self.msgs += [self.now] * want.messages

    def hold(self, blocked: list[tuple[Rule, float | None]]) -> None:
        """An earlier waiter is held: later ones queue behind it for gateway-wide resources."""
        for rule, eta in blocked:
            if rule in GLOBAL_RULES:
                self.exhausted.setdefault(rule, eta)


class Waiter:
    """One acquisition waiting its turn: ``poll()`` until it returns a ``Grant``.

    While blocked it holds a ticket in the shared queue (so other processes let it go first in
    arrival order) and ``eta`` says how many seconds to wait before polling again (at most
    ``MAX_SLEEP``: polling keeps the ticket fresh). ``blocked`` names the rules holding it.
    ``close()`` gives the ticket back (a cancelled or abandoned acquisition).
    """

    def __init__(self, pacer: SharedPacer, want: Want):
        self.pacer, self.want = pacer, want
        self.eta = 0.0
        self.blocked: list[tuple[Rule, float | None]] = []
        self.granted: Grant | None = None
        self._ticket: tuple[int, int] | None = None  # (index, number)
        self._first_block: float | None = None
        self._seen: set[Rule] = set()

    def poll(self) -> Grant | None:
        """The grant if the rules allow it now (taking it), else None (see ``eta``)."""
        if self.granted is not None:
            return self.granted
        pacer, want = self.pacer, self.want
        if not pacer.policy.enabled:
            pacer._count_off(want)
            self.granted = MESSAGES_GRANTED  # pacing off: nothing is held
            return self.granted
        with pacer._locked():
            now = time.monotonic()
            pacer._maybe_purge(now)
            if self._first_block is not None:
                self._ticket = pacer._refresh_ticket(self._ticket, want, now)
            blocked = pacer._evaluate(want, self._ticket, now)
            if not blocked:
                pacer._free_ticket(self._ticket)
                self._ticket = None
                if self._first_block is not None:
                    pacer._note_wait(now - self._first_block)
                self.granted = pacer._grant(want, now)
                self.blocked, self.eta = [], 0.0
                return self.granted
            if self._first_block is None:
                self._first_block = now
                pacer._h["waits"] += 1
                self._ticket = pacer._refresh_ticket(None, want, now)
            for rule, _ in blocked:
                if rule not in self._seen:
                    self._seen.add(rule)
                    pacer._h["rule_waits"][RULES.index(rule)] += 1
        self.blocked, self.eta = blocked, _delay(blocked)
        return None

    def close(self) -> None:
        """Give the ticket back if still waiting (idempotent; a grant is not released)."""
        pacer = self.pacer
        if self._ticket is None or pacer._closed:
            self._ticket = None
            return
        with pacer._locked():
            pacer._free_ticket(self._ticket)
            if self._first_block is not None and self.granted is None:
                pacer._note_wait(time.monotonic() - self._first_block)
        self._ticket = None


class SharedPacer:
    """One gateway's pacing budget in named shared memory, shared by every process on the host.

    Create one in each process (it pickles as "attach to the same gateway"); ``close()`` detaches
    and the last user to detach removes the segment. The policy is the caller's: every user of a
    gateway should pass the same one.

    Args:
        key: the gateway, "host:port".
        policy: a ``PacingPolicy`` or a preset name.
        namespace: prefix of the segment's name (separate budgets for separate purposes).
        margin: seconds added to every window, at least.
        margin_ratio: fraction of each window added to it, when that is more than ``margin``.
    """

    def __init__(self, key: str, policy: PacingPolicy | str | None = None, *,
                 namespace: str = "ibfarm", margin: float = 0.05, margin_ratio: float = 0.02):
        self.key, self.policy = key, PacingPolicy.coerce(policy)
        self.namespace, self.margin, self.margin_ratio = namespace, margin, margin_ratio
        self._check_policy()
        self.name = segment_name(key, namespace)
        lock_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self._lock_path = os.path.join(lock_dir, self.name + ".lock")
        self._pid, self._start = os.getpid(), psutil.Process().create_time()
        self._thread_lock = threading.Lock()
        self._held: set[int] = set()
        self._closed = False
        self._fd = _open_lock(self._lock_path)  # returned locked
        try:
            self._shm = self._attach()
            self._user = self._register_user()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __reduce__(self) -> tuple:
        return (_reattach, (self.key, self.policy, self.namespace, self.margin,
                            self.margin_ratio))

    def __enter__(self) -> SharedPacer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def widen(self, window: float) -> float:
        """The margin added to a window of ``window`` seconds."""
        return max(self.margin, self.margin_ratio * window)

    # ------------------------------------------------------------------ acquisitions

    def want_messages(self, n: int = 1) -> Want:
        """An acquisition of ``n`` messages (1 to the policy's ``message_rate``)."""
        if not 1 <= n <= self.policy.message_rate:
            raise ValueError(f"can take 1 to {self.policy.message_rate} messages at once, not {n}")
        return Want(TicketKind.MESSAGES, messages=n)

    def want_historical(self, request: PacedRequest) -> Want:
        """An acquisition for one historical request: the rules, an open slot, one message."""
        if not self.policy.applies_to(request.bar_seconds):
            return Want(TicketKind.HISTORICAL)
        return Want(TicketKind.SMALL_BARS, _digest(request.key), _digest(request.contract_key),
                    self.policy.weight(request.what_to_show))

    def waiter(self, want: Want) -> Waiter:
        """A ``Waiter`` for ``want`` (nothing is taken until its ``poll()`` grants)."""
        return Waiter(self, want)

    def mark_sent(self, grant: Grant) -> None:
        """The request of ``grant`` went out now: re-date its grant, and its messages, to now
        (only ever later, so the rules stay satisfied: the gateway counts a message when it
        reads it, and a worker may send it a while after the grant). Any process attached to
        the gateway may call it."""
        if grant.empty or self._closed:
            return
        with self._locked():
            now = time.monotonic()
            h, t = self._h, self._t
            head = int(h["msg_head"])
            if grant.message >= 0 and head - grant.message <= N_MESSAGES - grant.messages:
                # (still in the ring: not yet overwritten by later messages)
                where = np.arange(grant.message, grant.message + grant.messages) % N_MESSAGES
                t["msgs"][where] = np.maximum(t["msgs"][where], now)
            if grant.slot < 0:
                return
            h["last_hist"] = max(float(h["last_hist"]), now)
            if grant.record >= 0:
                record = t["history"][grant.record]
                if int(record["key"]) == grant.key and float(record["t"]) < now:
                    record["t"] = now

    def release(self, grant: Grant) -> None:
        """Free the open slot of ``grant`` (idempotent; a slot reclaimed meanwhile is left)."""
        if grant.slot < 0 or self._closed:
            return
        with self._locked():
            self._held.discard(grant.slot)
            row = self._t["slots"][grant.slot]
            if int(row["token"]) == grant.token:
                self._t["slots"][grant.slot] = (0, 0.0, 0.0, 0)

    async def acquire(self, want: Want) -> Grant:
        """Wait (asyncio) until ``want`` is granted."""
        waiter = self.waiter(want)
        try:
            while (grant := waiter.poll()) is None:
                await asyncio.sleep(waiter.eta)
            return grant
        finally:
            waiter.close()

    async def acquire_messages(self, n: int = 1) -> None:
        """Wait until ``n`` more messages may be sent to the gateway, and take them."""
        await self.acquire(self.want_messages(n))

    def try_acquire_messages(self, n: int = 1) -> float:
        """Take ``n`` messages now and return 0.0, or return the seconds to wait (nothing taken)."""
        want = self.want_messages(n)
        if not self.policy.enabled:
            self._count_off(want)
            return 0.0
        with self._locked():
            now = time.monotonic()
            blocked = self._evaluate(want, None, now)
            if not blocked:
                self._grant(want, now)
                return 0.0
            known = [eta for _, eta in blocked if eta is not None]
            return max(max(known, default=POLL), 1e-6)

    def record_messages(self, n: int = 1) -> None:
        """Count ``n`` messages that must go out now whatever the budget (a cancel, the connect
        handshake): later messages wait for them."""
        if not self.policy.enabled or self._closed:
            return
        with self._locked():
            self._grant(self.want_messages(n), time.monotonic())

    @contextlib.asynccontextmanager
    async def historical(self, request: PacedRequest) -> AsyncIterator[Callable[[], None]]:
        """Wait for the rules, spacing, an open slot and one message; hold the slot in the block.

        The block receives ``sent``: call it right after the request went out. The grant is
        then dated by the send, not by the grant, so a process descheduled between the two
        cannot make the gateway see requests closer together than the rules allow. The slot
        is freed on leaving the block, whether by return, exception or cancellation.
        """
        grant = await self.acquire(self.want_historical(request))
        try:
            yield lambda: self.mark_sent(grant)
        finally:
            self.release(grant)

    def stats(self) -> dict:
        """Gateway-wide counters: open and waiting requests, waits, and the rules behind them."""
        with self._locked():
            h, t = self._h, self._t
            live = t["tickets"]["kind"] != TicketKind.FREE
            arrived = t["tickets"]["arrived"][live]
            return {
                "key": self.key, "segment": self.name,
                "users": int(np.count_nonzero(t["users"]["pid"])),
                "open": int(np.count_nonzero(t["slots"]["pid"])),
                "max_open": self.policy.max_open_requests,
                "waiting": int(np.count_nonzero(live)),
                "oldest_wait": float(time.monotonic() - arrived.min()) if arrived.size else 0.0,
                "granted": int(h["grants"]), "messages": int(h["messages"]),
                "waits": int(h["waits"]), "wait_seconds": float(h["wait_time"]),
                "max_wait": float(h["max_wait"]),
                "rule_waits": {rule.value: int(count)
                               for rule, count in zip(RULES, h["rule_waits"], strict=True)},
            }

    def close(self) -> None:
        """Detach; the last user removes the segment and its lock file. Idempotent."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._free_own()
                self._purge(time.monotonic())
                last = not np.count_nonzero(self._t["users"]["pid"])
                self._drop_views()
                if last:
                    _unlink(self._shm)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._lock_path)
                    log.debug("pacer %s: last user left, segment removed", self.name)
                self._shm.close()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ the rules

    def _evaluate(self, want: Want, ticket: tuple[int, int] | None, now: float) -> list:
        """Replay the earlier waiters, then return the rules still holding ``want`` back."""
        snap = _Snapshot(self, now)
        tickets = self._t["tickets"]
        waiting = (tickets["kind"] != TicketKind.FREE) & (tickets["seen"] > now - STALE_AFTER)
        if ticket is not None:
            waiting &= tickets["ticket"] < ticket[1]
        for row in np.sort(tickets[waiting], order="ticket").tolist():
            earlier = Want.from_ticket(row)
            blocked = snap.blocking(earlier)
            if blocked:
                snap.hold(blocked)
            else:
                snap.grant(earlier)
        return snap.blocking(want)

    def _grant(self, want: Want, now: float) -> Grant:
        h, t = self._h, self._t
        record = -1
        if want.kind == TicketKind.SMALL_BARS:
            record = int(h["hist_head"]) % N_HISTORY
            t["history"][record] = (now, want.key, want.contract, want.weight)
            h["hist_head"] += 1
        head = int(h["msg_head"])
        t["msgs"][np.arange(head, head + want.messages) % N_MESSAGES] = now
        h["msg_head"] += want.messages
        h["messages"] += want.messages
        if not want.historical:
            return Grant(message=head, messages=want.messages)
        h["last_hist"] = now
        h["grants"] += 1
        slot = int(np.flatnonzero(t["slots"]["pid"] == 0)[0])
        token = int(h["next_token"]) + 1
        h["next_token"] = token
        t["slots"][slot] = (self._pid, self._start, now, token)
        self._held.add(slot)
        return Grant(slot, token, record, want.key if record >= 0 else 0, head, want.messages)

    def _refresh_ticket(self, ticket: tuple[int, int] | None, want: Want,
                        now: float) -> tuple[int, int] | None:
        """Mark our ticket fresh; take one if we have none (or lost it to a reinitialisation)."""
        tickets = self._t["tickets"]
        if self._owns(ticket):
            tickets["seen"][ticket[0]] = now
            return ticket
        free = np.flatnonzero(tickets["kind"] == TicketKind.FREE)
        if not free.size:
            return None  # queue full: we are evaluated as the newest arrival
        number = int(self._h["next_ticket"]) + 1
        self._h["next_ticket"] = number
        tickets[free[0]] = (number, self._pid, self._start, now, now, want.key, want.contract,
                            want.ticket_weight(), want.kind)
        return int(free[0]), number

    def _owns(self, ticket: tuple[int, int] | None) -> bool:
        if ticket is None:
            return False
        row = self._t["tickets"][ticket[0]]
        return int(row["ticket"]) == ticket[1] and int(row["pid"]) == self._pid

    def _free_ticket(self, ticket: tuple[int, int] | None) -> None:
        if self._owns(ticket):
            self._t["tickets"][ticket[0]] = np.zeros((), _TICKET)

    def _note_wait(self, seconds: float) -> None:
        self._h["wait_time"] += seconds
        self._h["max_wait"] = max(float(self._h["max_wait"]), seconds)

    def _count_off(self, want: Want) -> None:
        with self._locked():
            self._h["messages"] += want.messages
            self._h["grants"] += want.historical

    # ------------------------------------------------------------------ segment

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._closed:
                raise RuntimeError(f"pacer {self.name} is closed")
            if os.getpid() != self._pid:
                raise RuntimeError("a SharedPacer belongs to the process that made it; "
                                   "make (or unpickle) one in each process")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _attach(self) -> shared_memory.SharedMemory:
        """Attach to the gateway's segment (validating it) or create it. Called under the lock."""
        try:
            shm = _shared_memory(self.name, create=False)
        except FileNotFoundError:
            return self._create()
        if shm.size < SEGMENT_SIZE:
            log.warning("pacer %s: stale segment of the wrong size, replacing it", self.name)
            _unlink(shm)
            shm.close()
            return self._create()
        self._map(shm)
        now = time.monotonic()
        if not self._valid(now):
            log.warning("pacer %s: stale segment fails validation, reinitialising", self.name)
            self._initialise()
        self._purge(now)
        return shm

    def _create(self) -> shared_memory.SharedMemory:
        shm = _shared_memory(self.name, create=True, size=SEGMENT_SIZE)
        self._map(shm)
        self._initialise()
        return shm

    def _map(self, shm: shared_memory.SharedMemory) -> None:
        self._raw = np.ndarray((SEGMENT_SIZE,), np.uint8, shm.buf, 0)
        self._h = np.ndarray((), _HEADER, shm.buf, 0)
        self._t = {name: np.ndarray((count,), dtype, shm.buf, _OFFSETS[name])
                   for name, dtype, count in _TABLES}

    def _drop_views(self) -> None:
        # numpy views pin the buffer: SharedMemory.close() needs them gone
        del self._raw, self._h, self._t

    def _initialise(self) -> None:
        self._raw[:] = 0
        self._t["history"]["t"] = -np.inf
        self._t["msgs"][:] = -np.inf
        self._h["last_hist"] = -np.inf
        self._h["magic"], self._h["version"], self._h["size"] = MAGIC, VERSION, SEGMENT_SIZE

    def _valid(self, now: float) -> bool:
        h, t = self._h, self._t
        if bytes(h["magic"]) != MAGIC or int(h["version"]) != VERSION or int(
                h["size"]) != SEGMENT_SIZE:
            return False
        times = [h["last_hist"][None], t["history"]["t"], t["msgs"],
                 t["slots"]["since"], t["tickets"]["arrived"], t["tickets"]["seen"]]
        if any(np.isnan(a).any() or (a > now + 1.0).any() for a in times):
            return False
        kinds = t["tickets"]["kind"]
        return bool(((kinds >= TicketKind.FREE) & (kinds <= TicketKind.SMALL_BARS)).all() and (
            t["history"]["weight"] >= 0).all() and all(
            (t[name]["pid"] >= 0).all() for name in ("users", "slots", "tickets")))

    def _register_user(self) -> int:
        users = self._t["users"]
        free = np.flatnonzero(users["pid"] == 0)
        if not free.size:
            raise RuntimeError(f"pacer {self.name}: more than {N_USERS} users attached")
        users[free[0]] = (self._pid, self._start)
        return int(free[0])

    def _free_own(self) -> None:
        """On close: drop our user entry and any slots this pacer still holds."""
        t = self._t
        if int(t["users"]["pid"][self._user]) == self._pid:
            t["users"][self._user] = (0, 0.0)
        for slot in self._held:
            if int(t["slots"]["pid"][slot]) == self._pid:
                t["slots"][slot] = (0, 0.0, 0.0, 0)
        self._held.clear()

    def _maybe_purge(self, now: float) -> None:
        if now - float(self._h["last_purge"]) >= PURGE_EVERY:
            self._purge(now)

    def _purge(self, now: float) -> None:
        """Free users, slots and tickets whose process has died."""
        self._h["last_purge"] = now
        alive: dict[tuple[int, float], bool] = {(self._pid, self._start): True}
        for name in ("users", "slots", "tickets"):
            table = self._t[name]
            for i in np.flatnonzero(table["pid"] != 0):
                owner = (int(table["pid"][i]), float(table["start"][i]))
                if owner not in alive:
                    start = _start_time(owner[0])
                    alive[owner] = start is not None and abs(start - owner[1]) < 0.5
                if not alive[owner]:
                    log.info("pacer %s: reclaiming %s entry of dead process %d",
                             self.name, name, owner[0])
                    table[i] = np.zeros((), table.dtype)

    def _check_policy(self) -> None:
        policy = self.policy
        if not policy.enabled:
            return
        for value, limit, what in ((policy.max_open_requests, N_SLOTS, "max_open_requests"),
                                   (policy.message_rate, N_MESSAGES, "message_rate"),
                                   (policy.window_max, N_HISTORY, "window_max")):
            if not 1 <= value <= limit:
                raise ValueError(f"SharedPacer supports {what} from 1 to {limit}, not {value}")


def _reattach(key: str, policy: PacingPolicy, namespace: str, margin: float,
              margin_ratio: float = 0.02) -> SharedPacer:
    return SharedPacer(key, policy, namespace=namespace, margin=margin,
                       margin_ratio=margin_ratio)


def _delay(blocked: list[tuple[Rule, float | None]]) -> float:
    """How long to wait before polling again."""
    known = [eta for _, eta in blocked if eta is not None]
    delay = max(known) if known else POLL
    return min(max(delay, 0.0005), MAX_SLEEP)


def _shared_memory(name: str, *, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    """Open a segment that no resource tracker will unlink behind our back."""
    shm = shared_memory.SharedMemory(name, create=create, size=size)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def _unlink(shm: shared_memory.SharedMemory) -> None:
    resource_tracker.register(shm._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        shm.unlink()  # unlinks and unregisters again
    except FileNotFoundError:  # another process removed it first (e.g. all killed at once)
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


__all__ = ["MESSAGES_GRANTED", "Grant", "SharedPacer", "TicketKind", "Waiter", "Want",
           "segment_name"]
