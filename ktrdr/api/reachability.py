"""Does the gateway's API port answer? A cached TCP probe.

``ReachabilityMonitor`` opens and closes a TCP connection to ``host:port`` (no API handshake,
so no client id is used) when asked, at most once per ``max_age`` seconds, and remembers since
when the port has not answered. It knows nothing of IB beyond the port: whether IB itself is
there (its nightly maintenance, when the gateway is up and IB is away) is the farm's
knowledge, combined with this probe in ``availability.Availability``::

    Availability.check() ──► ReachabilityMonitor.check(max_age)
                               └─ older than max_age? open_connection(host, port) ─ close
                                  ──► Reachability(reachable, error, checked_at, down_since)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reachability:
    """One probe's outcome.

    Attributes:
        reachable: the port accepted a connection (None: never probed).
        error: why it did not ("Connection refused", "no answer within 1 s").
        checked_at: when it was probed.
        down_since: since when it has not answered (None while it answers).
    """

    reachable: bool | None
    error: str | None = None
    checked_at: datetime | None = None
    down_since: datetime | None = None


class ReachabilityMonitor:
    """Reachability of ``host:port``, probed at most every ``max_age`` seconds.

    Args:
        host, port: the gateway's API address.
        timeout: seconds one probe may take.
        max_age: seconds a probe's outcome is reused.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 1.0, max_age: float = 1.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_age = max_age
        self._last = Reachability(None)
        self._checked_mono = float("-inf")
        self._down_since_mono: float | None = None
        self._lock = asyncio.Lock()

    @property
    def last(self) -> Reachability:
        """The latest probe's outcome (no probe made)."""
        return self._last

    async def check(self, max_age: float | None = None) -> Reachability:
        """Probe unless the last probe is younger than ``max_age`` seconds."""
        max_age = self.max_age if max_age is None else max_age
        async with self._lock:
            if time.monotonic() - self._checked_mono >= max_age:
                await self._probe()
        return self._last

    def down_for(self) -> float:
        """Seconds the port has not answered (0 while it answers, or before any probe)."""
        if self._down_since_mono is None:
            return 0.0
        return time.monotonic() - self._down_since_mono

    async def _probe(self) -> None:
        error = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.timeout)
            except (OSError, asyncio.TimeoutError):
                pass
        except asyncio.TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except OSError as exc:
            error = exc.strerror or str(exc) or type(exc).__name__
        now_mono = time.monotonic()
        now = datetime.now(timezone.utc)
        self._checked_mono = now_mono
        was = self._last
        if error is None:
            self._down_since_mono = None
            self._last = Reachability(True, None, now, None)
            if was.reachable is False:
                log.info("IB Gateway %s:%d answers again", self.host, self.port)
            return
        since = was.down_since
        if since is None:
            since, self._down_since_mono = now, now_mono
            log.warning("IB Gateway %s:%d is unreachable: %s", self.host, self.port, error)
        self._last = Reachability(False, error, now, since)


__all__ = ["Reachability", "ReachabilityMonitor"]
