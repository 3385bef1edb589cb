"""Is the IB Gateway reachable? A cached TCP probe of its API port.

The probe opens and closes a TCP connection (no API handshake, so no client id is used). It
runs when asked (``/health``, before work that needs IB) and at most once per
``max_age`` seconds; the result says since when the gateway has been unreachable, which the
operations use to fail with a clear error instead of waiting for time-outs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from ktrdr.api.errors import ApiError
from ktrdr.api.models import GatewayHealth
from ktrdr.data.external_data_interface import DataErrorKind

log = logging.getLogger(__name__)


class GatewayMonitor:
    """Reachability of ``host:port`` with a cache of ``max_age`` seconds."""

    def __init__(self, host: str, port: int, *, timeout: float = 1.0, max_age: float = 1.0,
                 simulated: bool = False):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_age = max_age
        self.simulated = simulated
        self.reachable: bool | None = None
        self.error: str | None = None
        self.checked_at: datetime | None = None
        self._checked_mono = float("-inf")
        self._down_since: datetime | None = None
        self._down_since_mono: float | None = None
        self._lock = asyncio.Lock()

    async def check(self, max_age: float | None = None) -> GatewayHealth:
        """Probe unless the last probe is younger than ``max_age`` seconds."""
        max_age = self.max_age if max_age is None else max_age
        async with self._lock:
            if time.monotonic() - self._checked_mono >= max_age:
                await self._probe()
        return self.health()

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
        self.checked_at = datetime.now(timezone.utc)
        self._checked_mono = now_mono
        was = self.reachable
        self.reachable = error is None
        self.error = error
        if error is None:
            self._down_since = self._down_since_mono = None
            if was is False:
                log.info("IB Gateway %s:%d is reachable again", self.host, self.port)
        elif self._down_since is None:
            self._down_since, self._down_since_mono = self.checked_at, now_mono
            log.warning("IB Gateway %s:%d is unreachable: %s", self.host, self.port, error)

    def down_for(self) -> float:
        """Seconds the gateway has been unreachable (0 when reachable or never probed)."""
        if self._down_since_mono is None:
            return 0.0
        return time.monotonic() - self._down_since_mono

    def health(self) -> GatewayHealth:
        return GatewayHealth(host=self.host, port=self.port, reachable=bool(self.reachable),
                             checked_at=self.checked_at, unreachable_since=self._down_since,
                             error=self.error, simulated=self.simulated)

    def unavailable(self) -> ApiError:
        """The problem to answer while the gateway is unreachable."""
        since = f" since {self._down_since:%Y-%m-%d %H:%M:%S} UTC" if self._down_since else ""
        return ApiError(DataErrorKind.UNAVAILABLE,
                        f"IB Gateway at {self.host}:{self.port} is unreachable{since}"
                        f" ({self.error or 'no connection'})",
                        hint="wait and retry; check that IB Gateway/TWS is running and logged "
                             "in")

    async def require(self) -> None:
        """Raise the 503 problem if the gateway is unreachable now."""
        health = await self.check()
        if not health.reachable:
            raise self.unavailable()
