"""A simulated IB Gateway: a TCP server speaking the real TWS socket protocol.

Unmodified clients (ib_async, ib_insync, the official ``ibapi``) connect to it::

    client ──TCP── Session (one per connection) ──► House (shared: settings, clock, market,
                      │                               pacing rules, stats, client ids, outages)
                      │                                   ▲
    SimGateway ───────┴── accepts connections, owns the House, runs the loop thread, turns
      (knobs)              knobs (restart, outages, maintenance, stalls) into House state

The server runs an asyncio loop on a thread of its own, so a test or benchmark can start it
in-process (``with SimGateway() as gw: ... gw.port``) or run it as ``ibfarm gateway``.
Its settings are ``ibfarm.sim.settings.SimSettings`` fields, given as keywords and readable
or settable as attributes while it runs (``gw.latency = 0.2``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ibfarm.pacing import PacingPolicy, PacingRules
from ibfarm.sim import texts as t
from ibfarm.sim.house import House
from ibfarm.sim.market import MarketModel
from ibfarm.sim.session import Session
from ibfarm.sim.settings import NAMES, SimSettings

log = logging.getLogger(__name__)


class SimGateway:
    """The simulated gateway.

    Args:
        port: TCP port; 0 picks a free one (read it back from ``.port``).
        host: address to bind; loopback unless told otherwise.
        market: the market model (default: one on ``seed`` and the gateway's clock).
        settings: a ready ``SimSettings``; keywords override its fields.
        **knobs: any ``SimSettings`` field (``seed``, ``pacing``, ``latency``, ``now``, ...;
            see the README's knobs table).

    Raises:
        TypeError: an unknown knob.
        ValueError: a knob's value it does not take.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *,
                 market: MarketModel | None = None, settings: SimSettings | None = None,
                 **knobs: Any):
        unknown = set(knobs) - NAMES
        if unknown:
            raise TypeError(f"unknown SimGateway settings: {', '.join(sorted(unknown))}")
        base = settings or SimSettings()
        values = {name: getattr(base, name) for name in NAMES}
        values.update(knobs, port=port if port or settings is None else base.port,
                      host=host if settings is None or host != "127.0.0.1" else base.host)
        object.__setattr__(self, "_house", House(SimSettings(**values), market))
        object.__setattr__(self, "_loop", None)
        object.__setattr__(self, "_server", None)
        object.__setattr__(self, "_thread", None)
        object.__setattr__(self, "_stopped", threading.Event())
        object.__setattr__(self, "_timers", [])

    # ----------------------------------------------------------------- settings as attributes
    def __getattr__(self, name: str) -> Any:
        if name in NAMES:
            return getattr(self._house.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in NAMES:
            object.__setattr__(self, name, value)
            return
        settings = self._house.settings
        setattr(settings, name, value)
        settings.__post_init__()  # normalise and check the new value
        if name in ("now", "clock_speed"):
            self._house.reset_clock()

    @property
    def settings(self) -> SimSettings:
        """The live settings (the same object the sessions read)."""
        return self._house.settings

    @property
    def now(self) -> Callable[[], datetime]:
        """The gateway's clock: call it for the gateway's current time."""
        return self._house.now

    @property
    def market(self) -> MarketModel:
        return self._house.market

    @property
    def policy(self) -> PacingPolicy:
        """The pacing policy it enforces."""
        return self._house.policy

    @property
    def rules(self) -> PacingRules:
        """The checker of the small-bar rules every session shares (the benchmark harness
        wraps its ``check`` to record when requests arrive)."""
        return self._house.rules

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> SimGateway:
        """Start serving on a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._stopped.clear()
        self._house.builder = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sim-bars")

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
            self._schedule(loop)
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
            self._house.builder.shutdown(wait=False)
            self._loop = None
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
        self._house.builder.shutdown(wait=True, cancel_futures=True)

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
        return self._call(self._house.stats_snapshot)

    def restart(self, down_for: float = 0.5, hold_client_ids: float | None = None) -> None:
        """Drop every connection and close the port for ``down_for`` seconds, then reopen it.

        The old sessions keep their client ids for ``hold_client_ids`` seconds from now
        (default: the ``client_id_hold`` setting): a reconnect with one of them gets 326
        until then, as after a real gateway restart.
        """
        hold = self.client_id_hold if hold_client_ids is None else hold_client_ids
        self._call(self._restart(down_for, hold), timeout=down_for + 10)

    def drop_connections(self) -> int:
        """Drop every client connection now (the port stays open); returns how many."""
        return self._call(lambda: len(self._house.drop_all()))

    def hmds_outage(self, duration: float) -> None:
        """Historical-farm outage: 2105 now, historical requests fail, 2106 after ``duration``."""
        self._call(self._begin_outage, duration)

    def connectivity_outage(self, duration: float, data_lost: bool = True) -> None:
        """IB's servers unreachable: 1100 now; answers wait; after ``duration`` 1101 (requests
        in flight are lost and never answered) or 1102 (they are answered)."""
        self._call(self._begin_connectivity_outage, duration, data_lost)

    def maintenance(self, duration: float, refusals: bool | None = None) -> None:
        """IB's daily reset: 1100 to every session now, 1102 ("data maintained. All data farms
        are connected") after ``duration``.

        Meanwhile requests are held and answered once it ends, or (``refusals``, default the
        ``maintenance_refusals`` setting) valid symbols get a spurious 200 "No security
        definition has been found for the request".
        """
        refusing = self.maintenance_refusals if refusals is None else refusals
        self._call(self._begin_maintenance, duration, refusing)

    def stall_next(self, count: int = 1) -> None:
        """Leave the next ``count`` historical requests unanswered."""
        def bump() -> None:
            self._house.stall_next += count
        self._call(bump)

    def epoch(self) -> int:
        """The gateway clock in whole seconds."""
        return self._house.epoch()

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
        self._house.on_loop()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """The faults the settings schedule from start (``*_after`` settings)."""
        s = self.settings
        if s.hmds_outage_after is not None:
            loop.call_later(s.hmds_outage_after, self._begin_outage, s.hmds_outage_for)
        if s.maintenance_after is not None:
            loop.call_later(s.maintenance_after, self._begin_maintenance, s.maintenance_for,
                            s.maintenance_refusals)
        if s.restart_after is not None:
            loop.call_later(s.restart_after, lambda: loop.create_task(
                self._restart(s.restart_for, s.client_id_hold)))

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        self._house.drop_all()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _restart(self, down_for: float, hold: float) -> None:
        log.info("simulated gateway restarting: down for %.1f s, ids held %.1f s", down_for,
                 hold)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        ids = self._house.drop_all()
        if hold > 0:
            self._house.hold(ids, hold)
        await asyncio.sleep(down_for)
        await self._bind()

    def _begin_outage(self, duration: float) -> None:
        house = self._house
        house.hmds_down = True
        house.broadcast(*t.HMDS_BROKEN)

        def end() -> None:
            house.hmds_down = False
            house.broadcast(*t.HMDS_OK)
        asyncio.get_running_loop().call_later(duration, end)

    def _begin_connectivity_outage(self, duration: float, data_lost: bool) -> None:
        house = self._house
        house.ib_up.clear()
        house.broadcast(1100, t.CONNECTIVITY[1100])

        def end() -> None:
            if data_lost:
                house.generation += 1
            house.ib_up.set()
            code = 1101 if data_lost else 1102
            house.broadcast(code, t.CONNECTIVITY[code])
        asyncio.get_running_loop().call_later(duration, end)

    def _begin_maintenance(self, duration: float, refusing: bool) -> None:
        house = self._house
        house.maintenance = True
        house.refusing = refusing
        house.ib_up.clear()
        house.broadcast(1100, t.CONNECTIVITY[1100])

        def end() -> None:
            house.maintenance = house.refusing = False
            house.ib_up.set()   # held requests are answered now: data maintained
            house.broadcast(1102, t.CONNECTIVITY[1102])
        asyncio.get_running_loop().call_later(duration, end)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        house = self._house
        session = Session(house, reader, writer)
        house.sessions.add(session)
        house.stats.connections_total += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # the gateway is stopping; asyncio's stream callback must not see this
        finally:
            house.sessions.discard(session)
            house.release(session)
            session.close()
