"""The gateway a benchmark runs against: the simulator in a process of its own, or a real one.

The simulated gateway runs in a child process (``SimGateway`` on its own loop there), so its CPU
time is not taken from the measured process's GIL; the harness talks to it over a pipe to read
its counters, change its answer latency and restart it. On a 2-core machine the child still
shares the cores with the contenders: every figure includes that competition, and the
gateway's own CPU seconds are reported next to it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from ibfarm.pacing import PacingPolicy

log = logging.getLogger(__name__)

#: Seconds any one command to the gateway process may take (a restart adds its downtime).
COMMAND_TIMEOUT = 20.0


def _serve(conn: Connection, policy: PacingPolicy, now_iso: str | None, latency: float | str,
           knobs: dict[str, Any]) -> None:
    """The child: run a ``SimGateway`` and answer commands until told to stop."""
    import psutil

    from ibfarm.sim import SimGateway

    fixed = datetime.fromisoformat(now_iso) if now_iso else None
    gw = SimGateway(port=0, pacing=policy, latency=latency,
                    now=(lambda: fixed) if fixed else None, **knobs)
    arrivals = _record_arrivals(gw)
    gw.start()
    me = psutil.Process()
    conn.send(("ready", gw.port))
    try:
        while True:
            if not conn.poll(5.0):
                if mp.parent_process() is not None and not mp.parent_process().is_alive():
                    break
                continue
            cmd, arg = conn.recv()
            if cmd == "stop":
                break
            if cmd == "stats":
                stats = gw.stats()
                times = me.cpu_times()
                stats["process_cpu_seconds"] = times.user + times.system
                conn.send(stats)
            elif cmd == "set":
                for name, value in arg.items():
                    setattr(gw, name, value)
                conn.send(True)
            elif cmd == "arrivals":
                conn.send(list(arrivals))
                arrivals.clear()
            elif cmd == "restart":
                down = time.monotonic()
                gw.restart(down_for=arg)
                conn.send((down, time.monotonic()))
            else:
                conn.send(ValueError(f"unknown command {cmd!r}"))
    finally:
        gw.stop()
        conn.close()


def _record_arrivals(gw) -> list[float]:
    """Record when the gateway accepts each request its pacing rules cover.

    The stamps (``time.monotonic()``, taken by the gateway as it checks the rules) let the
    benchmark measure the rate requests reached the gateway, apart from how long answers take.
    """
    arrivals: list[float] = []
    rules = gw.rules
    check = rules.check

    def recording(request, now):
        broken = check(request, now)
        if broken is None and rules.policy.applies_to(request.bar_seconds):
            arrivals.append(now)
        return broken

    rules.check = recording
    return arrivals


class SimGatewayProcess:
    """``SimGateway`` in a spawned child process.

    Args:
        policy: the pacing rules it enforces (the same object the contenders are given).
        now: a fixed clock for its market (bars are then the same on every run).
        latency: seconds before each historical answer, or ``"ib"`` (the simulator's model
            of IB's answer times, ``ibfarm/sim/latency.py``).
        knobs: other ``SimGateway`` settings (``latency_scale``, ``hmds_concurrency``, ...).
    """

    simulated = True
    host = "127.0.0.1"

    def __init__(self, policy: PacingPolicy, now: datetime | None = None,
                 latency: float | str = 0.0, wait: bool = True,
                 knobs: dict[str, Any] | None = None):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._restart_pending = False
        self.process = ctx.Process(target=_serve, name="bench-gateway", daemon=True,
                                   args=(child, policy, now.isoformat() if now else None,
                                         latency, dict(knobs or {})))
        self.port = 0
        self.process.start()
        child.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> SimGatewayProcess:
        """Wait until the child listens (``port`` is then known)."""
        if self.port:
            return self
        try:
            if not self._conn.poll(timeout):
                raise TimeoutError(f"the simulated gateway did not start within {timeout} s")
            _, self.port = self._conn.recv()
        except BaseException:
            self.stop()
            raise
        log.info("simulated gateway pid %d on port %d", self.process.pid, self.port)
        return self

    def _ask(self, cmd: str, arg: Any = None, timeout: float = COMMAND_TIMEOUT) -> Any:
        with self._lock:
            self._conn.send((cmd, arg))
            if not self._conn.poll(timeout):
                raise TimeoutError(f"the simulated gateway did not answer {cmd!r}")
            answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def stats(self) -> dict:
        """The simulator's counters, plus the CPU seconds of its whole process."""
        return self._ask("stats")

    def set(self, **knobs: Any) -> None:
        """Change runtime knobs (``latency``, ``latency_per_bar``)."""
        self._ask("set", knobs)

    def arrivals(self) -> list[float]:
        """``time.monotonic()`` of each accepted small-bar request since the last call."""
        return self._ask("arrivals")

    def restart(self, down_for: float = 0.5) -> tuple[float, float]:
        """Drop every connection, keep the port closed ``down_for`` s, reopen it.

        Returns the ``time.monotonic()`` stamps of going down and coming back (one clock
        for every process on the host).
        """
        return self._ask("restart", down_for, timeout=COMMAND_TIMEOUT + down_for)

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                with self._lock:
                    self._conn.send(("stop", None))
            except (OSError, ValueError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()

    def __enter__(self) -> SimGatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RealGateway:
    """A real TWS / IB Gateway: nothing to start, stop or count."""

    simulated = False

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def stats(self) -> dict | None:
        return None

    def set(self, **knobs: Any) -> None:
        raise RuntimeError("a real gateway's latency cannot be changed")

    def restart(self, down_for: float = 0.5) -> tuple[float, float]:
        raise RuntimeError("a real gateway is not restarted by the benchmark")

    def stop(self) -> None:
        pass

    def __enter__(self) -> RealGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
