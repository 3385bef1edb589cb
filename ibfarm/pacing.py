"""IB's pacing rules as data, a checker that applies them, and the farm's shared pacer.

``PacingPolicy`` states the limits; the simulated gateway enforces one (``PacingRules`` tells it
whether a request breaks a rule) and the farm's shared-memory pacer (``SharedPacer``) keeps every
worker inside the same one. A policy scaled by ``scaled(10)`` runs ten times faster, so tests and
benchmarks exercise the ten-minute rule in a minute and a scaled farm and a scaled simulator still
agree.

IB's rules (historical_limitations, order_limitations in IB's API docs):

* no identical historical request within 15 s;
* fewer than 6 requests for the same contract, exchange and tick type within 2 s;
* at most 60 requests in any 10 minutes, a BID_ASK request counting twice;
* these three apply to bars of 30 s or less (larger bars were lifted from them), and head
  timestamp requests follow the small-bar limits;
* at most 50 historical requests open at once, and at most 50 messages a second.

IB applies them to the gateway as a whole, so ``SharedPacer`` keeps one budget per gateway
(host:port) in named shared memory that every worker process of every farm on the host attaches
to. All times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on a host).
Every window gets ``margin`` extra seconds, because the gateway stamps a request a little after
the pacer grants it. A lock file next to the segment (``fcntl.flock``, released by the kernel when
its holder dies) guards every read and write; it is held for microseconds, never across an await.

Shared layout (little-endian; one segment ``<namespace>_<blake2b(host:port)>`` per gateway)::

    +-----------------------------------------------------------------------------+
    | header   magic "IBFPACER" | version | size | next_ticket | hist_head |      |
    |          msg_head | last_hist | last_purge | stats (grants, messages,       |
    |          waits, wait_time, max_wait, one wait count per rule)               |
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
zombie, or whose pid was reused) are purged, so a SIGKILLed worker's slots and tickets come back.

Fairness: a waiter takes a ticket and polls with ``asyncio.sleep``. At each poll the waiting
tickets are replayed in arrival order against the current state: each earlier waiter that the rules
allow is granted virtually (it takes its share first); an earlier waiter held by a gateway-wide
rule (open slots, the ten-minute window, spacing, message rate) also holds every later waiter that
needs the same resource, while one held by a per-contract rule (identical, same contract) is
skipped, so one blocked contract does not hold back the others. A waiter is granted when it is
allowed after that replay. Tickets whose owner has not polled for ``STALE_AFTER`` seconds (a
stalled event loop) are skipped until it polls again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import psutil

log = logging.getLogger(__name__)

RULES = ("message_rate", "open_requests", "identical", "same_contract", "window", "min_spacing")
_GLOBAL_RULES = frozenset({"message_rate", "open_requests", "window", "min_spacing"})


@dataclass(frozen=True)
class PacingPolicy:
    """Every limit and window of IB's pacing rules; ``enabled=False`` turns them all off.

    Attributes:
        message_rate: messages per ``message_window`` seconds to the gateway (IB: 50 per s).
        max_open_requests: historical requests open at once (IB: 50).
        identical_window: seconds in which an identical request is a violation (IB: 15).
        same_contract_max: requests per ``same_contract_window`` for one contract, exchange and
            tick type (IB: fewer than 6 in 2 s, so 5).
        window_max: requests per ``window`` seconds (IB: 60 per 600 s).
        bid_ask_weight: how many requests one BID_ASK request counts as (IB: 2).
        small_bar_max_s: the three historical rules apply to bars this long or shorter (IB: 30).
        min_spacing: seconds between any two historical requests (0 = none; the conservative
            preset's 2 s).
        head_timestamp_counts: head-timestamp requests count against the small-bar rules.
    """

    enabled: bool = True
    message_rate: int = 50
    message_window: float = 1.0
    max_open_requests: int = 50
    identical_window: float = 15.0
    same_contract_max: int = 5
    same_contract_window: float = 2.0
    window_max: int = 60
    window: float = 600.0
    bid_ask_weight: int = 2
    small_bar_max_s: int = 30
    min_spacing: float = 0.0
    head_timestamp_counts: bool = True

    @classmethod
    def preset(cls, name: str) -> PacingPolicy:
        """``"ib"`` (IB's documented rules), ``"conservative"`` (plus 2 s spacing), ``"off"``."""
        if name == "ib":
            return cls()
        if name == "conservative":
            return cls(min_spacing=2.0)
        if name == "off":
            return cls(enabled=False)
        raise ValueError(f"unknown pacing preset {name!r}; use 'ib', 'conservative' or 'off'")

    @classmethod
    def coerce(cls, value: PacingPolicy | str | None) -> PacingPolicy:
        """Accept a policy, a preset name or None (IB's rules)."""
        if value is None:
            return cls()
        return value if isinstance(value, PacingPolicy) else cls.preset(value)

    def scaled(self, factor: float) -> PacingPolicy:
        """The same policy with every time window divided by ``factor``."""
        if factor <= 0:
            raise ValueError("scale factor must be positive")
        return dataclasses.replace(
            self,
            message_window=self.message_window / factor,
            identical_window=self.identical_window / factor,
            same_contract_window=self.same_contract_window / factor,
            window=self.window / factor,
            min_spacing=self.min_spacing / factor,
        )

    def applies_to(self, bar_seconds: int | None) -> bool:
        """Whether the three historical rules cover a request (None = head timestamp)."""
        if not self.enabled:
            return False
        if bar_seconds is None:
            return self.head_timestamp_counts
        return bar_seconds <= self.small_bar_max_s

    def weight(self, what_to_show: str) -> int:
        """How many requests one request counts as in the ten-minute window."""
        return self.bid_ask_weight if what_to_show.upper() == "BID_ASK" else 1

    def max_rate(self) -> float:
        """Highest sustained rate of small-bar requests (per second) the rules allow."""
        rate = self.window_max / self.window
        if self.min_spacing > 0:
            rate = min(rate, 1.0 / self.min_spacing)
        return rate


@dataclass(frozen=True)
class PacedRequest:
    """What the historical rules look at in one request."""

    key: Hashable  # everything that makes two requests identical
    contract_key: Hashable  # contract, exchange and tick type
    what_to_show: str
    bar_seconds: int | None  # None for a head-timestamp request



class _RuleState:
    """The three historical rules at one instant ``now``: which a request breaks and for how long.

    Records are ``(stamp, key, contract_key, weight)`` in ascending stamp order; ``add`` records a
    grant at ``now``. A record counts while ``now - stamp < window + margin``.
    """

    def __init__(self, policy: PacingPolicy, records: Iterable[tuple], now: float,
                 margin: float = 0.0):
        self.policy, self.now = policy, now
        self._identical_w = policy.identical_window + margin
        self._contract_w = policy.same_contract_window + margin
        self._window_w = policy.window + margin
        self._last_identical: dict[Hashable, float] = {}
        self._contract: dict[Hashable, list[float]] = {}
        self._window: list[tuple[float, int]] = []
        self._weight = 0
        for stamp, key, contract, weight in records:
            self.add(key, contract, weight, stamp)

    def add(self, key: Hashable, contract: Hashable, weight: int,
            stamp: float | None = None) -> None:
        stamp = self.now if stamp is None else stamp
        age = self.now - stamp
        if age < self._identical_w:
            self._last_identical[key] = stamp
        if age < self._contract_w:
            self._contract.setdefault(contract, []).append(stamp)
        if age < self._window_w:
            self._window.append((stamp, weight))
            self._weight += weight

    def blocking(self, key: Hashable, contract: Hashable, weight: int) -> list[tuple[str, float]]:
        """Each rule the request would break now, with the seconds until it no longer would."""
        policy, now, out = self.policy, self.now, []
        if key in self._last_identical:
            out.append(("identical", self._last_identical[key] + self._identical_w - now))
        stamps = self._contract.get(contract, ())
        excess = len(stamps) - policy.same_contract_max + 1
        if excess > 0:
            out.append(("same_contract", stamps[excess - 1] + self._contract_w - now))
        excess = self._weight + weight - policy.window_max
        if excess > 0:
            out.append(("window", self._window_expiry(excess)))
        return out

    def _window_expiry(self, weight: int) -> float:
        """Seconds until records weighing at least ``weight`` have left the window."""
        expired = 0
        for stamp, w in self._window:
            expired += w
            if expired >= weight:
                return stamp + self._window_w - self.now
        return math.inf  # the request alone outweighs window_max


class PacingRules:
    """Checks requests against a policy's three historical rules (single process, not shared).

    The simulated gateway uses it to decide when to answer with a pacing violation. Only
    accepted requests enter the history, so a client that backs off is not punished twice.
    """

    def __init__(self, policy: PacingPolicy):
        self.policy = policy
        self._history: collections.deque[tuple[float, PacedRequest]] = collections.deque()

    def check(self, request: PacedRequest, now: float) -> str | None:
        """Record ``request`` at ``now`` and return None, or the broken rule's name."""
        policy = self.policy
        if not policy.applies_to(request.bar_seconds):
            return None
        self._expire(now)
        broken = self._broken_rule(request, now)
        if broken is None:
            self._history.append((now, request))
        return broken

    def _broken_rule(self, request: PacedRequest, now: float) -> str | None:
        weight = self.policy.weight
        state = _RuleState(self.policy, (
            (stamp, seen.key, seen.contract_key, weight(seen.what_to_show))
            for stamp, seen in self._history), now)
        broken = state.blocking(request.key, request.contract_key, weight(request.what_to_show))
        return broken[0][0] if broken else None

    def _expire(self, now: float) -> None:
        policy = self.policy
        horizon = max(policy.window, policy.identical_window, policy.same_contract_window)
        while self._history and now - self._history[0][0] >= horizon:
            self._history.popleft()


# ----------------------------------------------------------------------------- shared pacer

MAGIC, VERSION = b"IBFPACER", 1
N_USERS, N_SLOTS, N_TICKETS, N_HISTORY, N_MESSAGES = 256, 64, 1024, 4096, 1024
STALE_AFTER = 2.0  # a waiter that has not polled for this long does not hold others back
PURGE_EVERY = 0.25  # seconds between scans for dead processes
POLL = 0.01  # seconds between polls when no rule says how long to wait
MAX_SLEEP = 0.25  # longest sleep between polls (keeps tickets fresh, notices purges)

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

# ticket kinds; weight holds the message count for MESSAGES, the request's weight otherwise
_FREE, _MESSAGES, _HIST, _SMALL_HIST = 0, 1, 2, 3


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
class _Want:
    """What one acquisition asks for."""

    kind: int
    key: int = 0
    contract: int = 0
    weight: int = 0  # window weight of a small-bar request
    messages: int = 1

    @property
    def historical(self) -> bool:
        return self.kind in (_HIST, _SMALL_HIST)

    @classmethod
    def from_ticket(cls, row: tuple) -> _Want:
        _, _, _, _, _, key, contract, weight, kind = row
        if kind == _MESSAGES:
            return cls(kind, messages=weight)
        return cls(kind, key, contract, weight)

    def ticket_weight(self) -> int:
        return self.messages if self.kind == _MESSAGES else self.weight


class _Snapshot:
    """The budget at ``now``, with earlier waiters granted virtually during the replay."""

    def __init__(self, pacer: SharedPacer, now: float):
        policy, margin = pacer.policy, pacer.margin
        self.policy, self.now = policy, now
        hist = pacer._t["history"]
        horizon = max(policy.window, policy.identical_window, policy.same_contract_window)
        rows = hist[(hist["weight"] > 0) & (hist["t"] > now - horizon - margin)]
        self.rules = _RuleState(policy, np.sort(rows, order="t").tolist(), now, margin)
        self.message_window = policy.message_window + margin
        msgs = pacer._t["msgs"]
        self.msgs = np.sort(msgs[msgs > now - self.message_window]).tolist()
        self.open = int(np.count_nonzero(pacer._t["slots"]["pid"]))
        self.last_hist = float(pacer._h["last_hist"])
        self.exhausted: dict[str, float | None] = {}  # gateway-wide rules an earlier waiter awaits

    def blocking(self, want: _Want) -> list[tuple[str, float | None]]:
        """Rules holding ``want`` back, each with seconds to wait (None: unknown)."""
        policy, now = self.policy, self.now
        out: list[tuple[str, float | None]] = []
        if want.historical:
            if self.open >= policy.max_open_requests:
                out.append(("open_requests", None))
            if want.kind == _SMALL_HIST:
                out += self.rules.blocking(want.key, want.contract, want.weight)
            if policy.min_spacing > 0 and now - self.last_hist < policy.min_spacing:
                out.append(("min_spacing", self.last_hist + policy.min_spacing - now))
        excess = len(self.msgs) + want.messages - policy.message_rate
        if excess > 0:
            out.append(("message_rate", self.msgs[excess - 1] + self.message_window - now))
        held = {name for name, _ in out}
        for name, eta in self.exhausted.items():
            if name not in held and (name == "message_rate" or want.historical) and (
                    name != "window" or want.kind == _SMALL_HIST):
                out.append((name, eta))
        return out

    def grant(self, want: _Want) -> None:
        """Take ``want``'s share virtually."""
        if want.kind == _SMALL_HIST:
            self.rules.add(want.key, want.contract, want.weight)
        if want.historical:
            self.open += 1
            self.last_hist = self.now
        self.msgs += [self.now] * want.messages

    def hold(self, blocked: list[tuple[str, float | None]]) -> None:
        """An earlier waiter is held: later ones queue behind it for gateway-wide resources."""
        for name, eta in blocked:
            if name in _GLOBAL_RULES:
                self.exhausted.setdefault(name, eta)


class SharedPacer:
    """One gateway's pacing budget in named shared memory, shared by every process on the host.

    Create one in each process (it pickles as "attach to the same gateway"); ``close()`` detaches
    and the last user to detach removes the segment. The policy is the caller's: every user of a
    gateway should pass the same one. ``time.monotonic()`` is the clock.
    """

    def __init__(self, key: str, policy: PacingPolicy | str | None = None, *,
                 namespace: str = "ibfarm", margin: float = 0.05):
        self.key, self.policy = key, PacingPolicy.coerce(policy)
        self.namespace, self.margin = namespace, margin
        self._check_policy()
        self.name = segment_name(key, namespace)
        lock_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self._lock_path = os.path.join(lock_dir, self.name + ".lock")
        self._pid, self._start = os.getpid(), psutil.Process().create_time()
        self._thread_lock = threading.Lock()
        self._held: set[int] = set()
        self._history_of: dict[int, tuple[int, int]] = {}  # slot -> (history index, key#)
        self._closed = False
        self._fd = _open_lock(self._lock_path)  # returned locked
        try:
            self._shm = self._attach()
            self._user = self._register_user()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __reduce__(self) -> tuple:
        return (_reattach, (self.key, self.policy, self.namespace, self.margin))

    def __enter__(self) -> SharedPacer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    async def acquire_messages(self, n: int = 1) -> None:
        """Wait until ``n`` more messages may be sent to the gateway, and take them."""
        await self._acquire(self._message_want(n))

    def try_acquire_messages(self, n: int = 1) -> float:
        """Take ``n`` messages now and return 0.0, or return the seconds to wait (nothing taken)."""
        want = self._message_want(n)
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
        """Count ``n`` messages that must go out now whatever the budget (a cancel): later
        messages wait for them."""
        if not self.policy.enabled or self._closed:
            return
        with self._locked():
            self._grant(self._message_want(n), time.monotonic())

    @contextlib.asynccontextmanager
    async def historical(self, request: PacedRequest) -> AsyncIterator[Callable[[], None]]:
        """Wait for the rules, spacing, an open slot and one message; hold the slot in the block.

        The block receives ``sent``: call it right after the request went out. The grant is
        then dated by the send, not by the grant, so a process descheduled between the two
        cannot make the gateway see requests closer together than the rules allow. The slot
        is freed on leaving the block, whether by return, exception or cancellation.
        """
        slot = await self._acquire(self._historical_want(request))
        try:
            yield lambda: self._sent(slot)
        finally:
            if slot is not None:
                self._release(slot)

    def stats(self) -> dict:
        """Gateway-wide counters: open and waiting requests, waits, and the rules behind them."""
        with self._locked():
            h, t = self._h, self._t
            live = t["tickets"]["kind"] != _FREE
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
                "rule_waits": dict(zip(RULES, (int(c) for c in h["rule_waits"]), strict=True)),
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

    # ------------------------------------------------------------------ waiting

    def _message_want(self, n: int) -> _Want:
        if not 1 <= n <= self.policy.message_rate:
            raise ValueError(f"can take 1 to {self.policy.message_rate} messages at once, not {n}")
        return _Want(_MESSAGES, messages=n)

    def _historical_want(self, request: PacedRequest) -> _Want:
        if not self.policy.applies_to(request.bar_seconds):
            return _Want(_HIST)
        return _Want(_SMALL_HIST, _digest(request.key), _digest(request.contract_key),
                     self.policy.weight(request.what_to_show))

    async def _acquire(self, want: _Want) -> int | None:
        """Wait in line for ``want``; return the slot taken for a historical request."""
        if not self.policy.enabled:
            self._count_off(want)
            return None
        ticket: tuple[int, int] | None = None  # (index, number)
        first_block: float | None = None
        seen: set[str] = set()
        try:
            while True:
                with self._locked():
                    now = time.monotonic()
                    self._maybe_purge(now)
                    if first_block is not None:
                        ticket = self._refresh_ticket(ticket, want, now)
                    blocked = self._evaluate(want, ticket, now)
                    if not blocked:
                        self._free_ticket(ticket)
                        ticket = None
                        if first_block is not None:
                            self._note_wait(now - first_block)
                        return self._grant(want, now)
                    if first_block is None:
                        first_block = now
                        self._h["waits"] += 1
                        ticket = self._refresh_ticket(None, want, now)
                    for name, _ in blocked:
                        if name not in seen:
                            seen.add(name)
                            self._h["rule_waits"][RULES.index(name)] += 1
                await asyncio.sleep(_delay(blocked))
        finally:
            if ticket is not None and not self._closed:  # cancelled or failed while waiting
                with self._locked():
                    self._free_ticket(ticket)
                    if first_block is not None:
                        self._note_wait(time.monotonic() - first_block)

    def _evaluate(self, want: _Want, ticket: tuple[int, int] | None, now: float) -> list:
        """Replay the earlier waiters, then return the rules still holding ``want`` back."""
        snap = _Snapshot(self, now)
        tickets = self._t["tickets"]
        waiting = (tickets["kind"] != _FREE) & (tickets["seen"] > now - STALE_AFTER)
        if ticket is not None:
            waiting &= tickets["ticket"] < ticket[1]
        for row in np.sort(tickets[waiting], order="ticket").tolist():
            earlier = _Want.from_ticket(row)
            blocked = snap.blocking(earlier)
            if blocked:
                snap.hold(blocked)
            else:
                snap.grant(earlier)
        return snap.blocking(want)

    def _grant(self, want: _Want, now: float) -> int | None:
        h, t = self._h, self._t
        index = None
        if want.kind == _SMALL_HIST:
            index = int(h["hist_head"]) % N_HISTORY
            t["history"][index] = (now, want.key, want.contract, want.weight)
            h["hist_head"] += 1
        head = int(h["msg_head"])
        t["msgs"][np.arange(head, head + want.messages) % N_MESSAGES] = now
        h["msg_head"] += want.messages
        h["messages"] += want.messages
        if not want.historical:
            return None
        h["last_hist"] = now
        h["grants"] += 1
        slot = int(np.flatnonzero(t["slots"]["pid"] == 0)[0])
        token = int(h["next_token"]) + 1
        h["next_token"] = token
        t["slots"][slot] = (self._pid, self._start, now, token)
        self._held.add(slot)
        if index is not None:
            self._history_of[slot] = (index, want.key)
        return slot

    def _sent(self, slot: int | None) -> None:
        """Re-date ``slot``'s grant to now (only ever later: the rules stay satisfied)."""
        if slot is None or self._closed:
            return
        with self._locked():
            now = time.monotonic()
            h, t = self._h, self._t
            h["last_hist"] = max(float(h["last_hist"]), now)
            index, key = self._history_of.pop(slot, (None, None))
            if index is not None:
                record = t["history"][index]
                if int(record["key"]) == key and float(record["t"]) < now:
                    record["t"] = now

    def _release(self, slot: int) -> None:
        if self._closed:  # close() already gave the slot back
            return
        with self._locked():
            self._held.discard(slot)
            self._history_of.pop(slot, None)
            row = self._t["slots"][slot]
            if int(row["pid"]) == self._pid:
                self._t["slots"][slot] = (0, 0.0, 0.0, 0)

    def _refresh_ticket(self, ticket: tuple[int, int] | None, want: _Want,
                        now: float) -> tuple[int, int] | None:
        """Mark our ticket fresh; take one if we have none (or lost it to a reinitialisation)."""
        tickets = self._t["tickets"]
        if self._owns(ticket):
            tickets["seen"][ticket[0]] = now
            return ticket
        free = np.flatnonzero(tickets["kind"] == _FREE)
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

    def _count_off(self, want: _Want) -> None:
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
        return bool(((kinds >= _FREE) & (kinds <= _SMALL_HIST)).all() and (
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


def _reattach(key: str, policy: PacingPolicy, namespace: str, margin: float) -> SharedPacer:
    return SharedPacer(key, policy, namespace=namespace, margin=margin)


def _delay(blocked: list[tuple[str, float | None]]) -> float:
    """How long to sleep before polling again."""
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
