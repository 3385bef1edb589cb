"""What every session of one simulated gateway shares: one object, handed to each session.

::

    SimGateway ── owns ──► House ◄── reads/writes ── Session, Session, ... (one per connection)
      (lifecycle, knobs)     settings, clock, market, pacing rules, stats, client ids (and
                             ids held after a restart), outage state (historical farm,
                             IB connectivity, maintenance, generation), encoder, bar builder

Everything here runs on the gateway's event loop thread, except ``build`` (the bar builder
thread) and ``stats_snapshot`` (called through the loop).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import time
from datetime import datetime
from typing import Any, Protocol

from ibfarm.pacing import PacingPolicy, PacingRules
from ibfarm.sim import hmds
from ibfarm.sim.market import MarketModel
from ibfarm.sim.settings import SimSettings

log = logging.getLogger(__name__)


class Peer(Protocol):
    """What the house needs of a session."""

    client_id: int | None

    def error(self, req_id: int, code: int, text: str) -> None: ...

    def drop(self) -> None: ...


class Stats:
    """Counters the gateway keeps; read with ``SimGateway.stats()``."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.bars_sent = 0
        self.ticks_sent = 0
        self.open_requests = 0
        self.max_open_requests = 0
        self.pacing_violations = 0
        self.pacing_rules: collections.Counter[str] = collections.Counter()
        self.errors_sent: collections.Counter[int] = collections.Counter()
        self.dropped = 0
        self.poisoned = 0
        self.per_client: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)

    def client(self, client_id: int | None) -> collections.Counter[str]:
        return self.per_client[-1 if client_id is None else client_id]


class House:
    """The gateway's shared state.

    Args:
        settings: the gateway's settings (read live: a change applies to the next request).
        market: the market model; one on the settings' seed and clock if None.
    """

    def __init__(self, settings: SimSettings, market: MarketModel | None = None) -> None:
        self.settings = settings
        self._clock = settings.clock()
        self.market = market or MarketModel(seed=settings.seed, now=self.now)
        self.policy: PacingPolicy = settings.policy()
        self.rules = PacingRules(self.policy)
        self.stats = Stats()
        self.encoder = hmds.BarEncoder()
        self.faults = random.Random(settings.fault_seed)
        self.sessions: set[Any] = set()
        self.client_ids: dict[int, Peer] = {}
        self.held_ids: dict[int, float] = {}  # client id -> monotonic time its hold ends
        self.stall_next = 0
        self.hmds_down = False
        self.maintenance = False
        self.refusing = False        # a maintenance window answering valid symbols with 200
        self.generation = 0          # bumped when connectivity returns with data lost (1101)
        self.ib_up: asyncio.Event | None = None  # cleared while IB is unreachable
        self.hmds_slots: asyncio.Semaphore | None = None
        self.builder: concurrent.futures.ThreadPoolExecutor | None = None
        self.build_cpu = 0.0
        self._order_id = 1

    # ------------------------------------------------------------------ clock
    def now(self) -> datetime:
        """The gateway's clock."""
        return self._clock()

    def reset_clock(self) -> None:
        """Rebuild the clock from the settings (after ``now`` or ``clock_speed`` changed)."""
        self._clock = self.settings.clock()

    def epoch(self) -> int:
        """The gateway clock in whole seconds."""
        return int(self.now().timestamp())

    def next_order_id(self) -> int:
        self._order_id += 1
        return self._order_id

    # ------------------------------------------------------------------ loop-side state
    def on_loop(self) -> None:
        """Create the loop-bound primitives (called on the gateway's loop when it starts)."""
        if self.ib_up is None:
            self.ib_up = asyncio.Event()
            self.ib_up.set()
        limit = self.settings.hmds_concurrency
        self.hmds_slots = asyncio.Semaphore(limit) if limit > 0 else None

    def broadcast(self, code: int, text: str) -> None:
        """A notice (reqId -1) to every connected session."""
        for session in list(self.sessions):
            session.error(-1, code, text)

    # ------------------------------------------------------------------ client ids
    def claim(self, client_id: int, session: Peer) -> bool:
        """Give ``client_id`` to ``session``; False while another session has it or an old
        session (before a restart) still holds it."""
        until = self.held_ids.get(client_id)
        if until is not None:
            if time.monotonic() < until:
                return False
            del self.held_ids[client_id]
        if client_id in self.client_ids:
            return False
        self.client_ids[client_id] = session
        return True

    def release(self, session: Peer) -> None:
        cid = session.client_id
        if cid is not None and self.client_ids.get(cid) is session:
            del self.client_ids[cid]

    def hold(self, client_ids: list[int], seconds: float) -> None:
        """Keep ``client_ids`` taken for ``seconds`` (an old session IB has not let go of)."""
        until = time.monotonic() + seconds
        for cid in client_ids:
            self.held_ids[cid] = max(until, self.held_ids.get(cid, 0.0))

    def drop_all(self) -> list[int]:
        """Drop every connection; returns the client ids they had."""
        sessions = list(self.sessions)
        ids = [s.client_id for s in sessions if s.client_id is not None]
        for session in sessions:
            session.drop()
        return ids

    # ------------------------------------------------------------------ symbols
    def names(self, knob: str, *names: str) -> bool:
        """Whether any of ``names`` is in the settings' symbol list ``knob``."""
        listed = set(getattr(self.settings, knob))
        return bool(listed.intersection(n for n in names if n))

    # ------------------------------------------------------------------ bars
    def build(self, *args) -> tuple[bytes, int]:
        """``BarEncoder.build`` on the builder thread, counting its CPU time."""
        started = time.thread_time()
        try:
            return self.encoder.build(*args)
        finally:
            self.build_cpu += time.thread_time() - started

    def stats_snapshot(self) -> dict:
        s = self.stats
        return {
            "connections_total": s.connections_total,
            "connections_open": len(self.sessions),
            "client_ids": sorted(self.client_ids),
            "held_client_ids": sorted(cid for cid, until in self.held_ids.items()
                                      if until > time.monotonic()),
            "requests": dict(s.requests),
            "bars_sent": s.bars_sent,
            "ticks_sent": s.ticks_sent,
            "open_requests": s.open_requests,
            "max_open_requests": s.max_open_requests,
            "pacing_violations": s.pacing_violations,
            "pacing_rules": dict(s.pacing_rules),
            "errors_sent": dict(s.errors_sent),
            "dropped": s.dropped,
            "poisoned": s.poisoned,
            "maintenance": self.maintenance,
            "per_client": {cid: dict(c) for cid, c in s.per_client.items()},
            # called on the loop's thread: its CPU time plus the bar builder's
            "cpu_seconds": time.thread_time() + self.build_cpu,
        }
