"""Is IB there? ``ok``, ``maintenance`` (IB's nightly reset) or ``unreachable``.

Two sources, combined by ``Availability.check``::

    ReachabilityMonitor: TCP connect to the gateway's API port
        │  refused / no answer ─────────────────────────────────────────► unreachable
        ▼  answers
    the farm's view of that gateway (IbDataAdapter.farm_status()["gateways"][i]["state"])
        │  "maintenance": a worker heard 1100, IB is away from a gateway that is up ──► maintenance
        └  anything else (up, connecting, idle, down: its workers reconnect) ──────► ok

The two mean different things to running work. During IB's maintenance the farm holds every
request (their clocks stop) and sends them when IB is back (1102), so operations wait through
it, up to ``ApiSettings.maintenance_grace`` (90 min, IB's longest daily window). A gateway
whose port does not answer is a real outage: operations fail after ``outage_grace``
(``operations.OperationRegistry`` applies both). ``/health`` says which (``state``, 503 with
``Retry-After`` either way) and the problems name it: kind ``maintenance`` or kind
``unavailable`` with a hint to check IB Gateway/TWS.

With several gateways the probe is of the first (``IbDataAdapter.settings()``); the API is
``ok`` while any gateway of the farm is up (the farm sends the work there), else the first
gateway's state counts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ktrdr.api.errors import ApiError
from ktrdr.api.models import GatewayHealth
from ktrdr.api.reachability import ReachabilityMonitor
from ktrdr.data.external_data_interface import DataErrorKind

log = logging.getLogger(__name__)

#: Problem kind of IB's maintenance (an API kind: the data layer calls it ``unavailable``).
MAINTENANCE = "maintenance"
#: What each state means for the caller.
MAINTENANCE_HINT = "IB is in its daily maintenance; the operation continues when it ends"
UNREACHABLE_HINT = ("the gateway is unreachable: check that IB Gateway/TWS is running and "
                    "logged in, and its API port")


class GatewayState(str, enum.Enum):
    """What the API says about IB (``Health.state``)."""

    OK = "ok"
    MAINTENANCE = "maintenance"
    UNREACHABLE = "unreachable"


class Availability:
    """The gateway's state from a TCP probe and the farm's status.

    Args:
        probe: the TCP probe of the gateway's API port.
        farm_status: the farm's status (``IbDataAdapter.farm_status``; blocking, run on a
            thread), None when no farm runs.
        simulated: the gateway is the embedded simulator (reported in ``/health``).
    """

    def __init__(self, probe: ReachabilityMonitor, farm_status: Callable[[], dict | None], *,
                 simulated: bool = False):
        self.probe = probe
        self.farm_status = farm_status
        #: The farm's status as the last ``check`` read it (None: no farm, or unreadable).
        self.farm: dict | None = None
        self.simulated = simulated
        self.key = f"{probe.host}:{probe.port}"
        self.state = GatewayState.OK
        self._maintenance_since: datetime | None = None
        self._maintenance_mono: float | None = None
        self._lock = asyncio.Lock()

    async def check(self, max_age: float | None = None) -> GatewayHealth:
        """Probe (unless the last probe is younger than ``max_age`` s) and read the farm."""
        async with self._lock:
            reach = await self.probe.check(max_age)
            lanes = await self._farm_lanes()
            mine = [g for g in lanes if g.get("gateway") == self.key] or lanes
            others_up = any(g.get("state") == "up" for g in lanes if g not in mine)
            if not reach.reachable and not others_up:
                state = GatewayState.UNREACHABLE
            elif any(g.get("state") == "maintenance" for g in mine) and not others_up:
                state = GatewayState.MAINTENANCE
            else:  # (with several gateways, one that is up serves the work)
                state = GatewayState.OK
            self._set(state)
        return self.health()

    async def _farm_lanes(self) -> list[dict]:
        try:
            self.farm = await asyncio.to_thread(self.farm_status)
        except Exception as exc:  # a farm shutting down: no opinion
            log.debug("farm status unavailable: %s", exc)
            self.farm = None
        return [g for g in (self.farm or {}).get("gateways") or [] if isinstance(g, dict)]

    def _set(self, state: GatewayState) -> None:
        was, self.state = self.state, state
        if state is GatewayState.MAINTENANCE and was is not GatewayState.MAINTENANCE:
            self._maintenance_since = datetime.now(timezone.utc)
            self._maintenance_mono = time.monotonic()
            log.warning("IB is in its maintenance (the gateway %s answers, IB is away); "
                        "operations wait for it", self.key)
        elif state is not GatewayState.MAINTENANCE and was is GatewayState.MAINTENANCE:
            self._maintenance_since = self._maintenance_mono = None
            log.info("IB's maintenance is over")

    # ----------------------------------------------------------------- readings

    def down_for(self) -> float:
        """Seconds the gateway's port has not answered (0 while it answers)."""
        return self.probe.down_for() if self.state is GatewayState.UNREACHABLE else 0.0

    def maintenance_for(self) -> float:
        """Seconds IB has been in maintenance (0 when it is not)."""
        if self._maintenance_mono is None:
            return 0.0
        return time.monotonic() - self._maintenance_mono

    def health(self) -> GatewayHealth:
        """The last check's outcome (no probe made)."""
        reach = self.probe.last
        return GatewayHealth(
            host=self.probe.host, port=self.probe.port, reachable=bool(reach.reachable),
            state=self.state.value, checked_at=reach.checked_at,
            unreachable_since=reach.down_since, maintenance_since=self._maintenance_since,
            error=reach.error, simulated=self.simulated, hint=self.hint())

    def hint(self) -> str:
        """What the state means for the caller ("" when all is well)."""
        if self.state is GatewayState.MAINTENANCE:
            return MAINTENANCE_HINT
        if self.state is GatewayState.UNREACHABLE:
            return UNREACHABLE_HINT
        return ""

    def notice(self) -> str:
        """What a running operation waits for, during IB's maintenance."""
        since = self._maintenance_since
        when = f" since {since:%H:%M:%S} UTC" if since else ""
        return (f"waiting: IB is in its daily maintenance{when}; the operation continues "
                f"when it ends")

    # ----------------------------------------------------------------- problems

    def problem(self) -> ApiError | None:
        """The problem of the current state (None when it is ``ok``)."""
        if self.state is GatewayState.UNREACHABLE:
            return self.unreachable()
        if self.state is GatewayState.MAINTENANCE:
            return self.maintenance()
        return None

    def unreachable(self) -> ApiError:
        """The 503 problem of a gateway whose port does not answer."""
        reach = self.probe.last
        since = f" since {reach.down_since:%Y-%m-%d %H:%M:%S} UTC" if reach.down_since else ""
        return ApiError(DataErrorKind.UNAVAILABLE,
                        f"IB Gateway at {self.key} is unreachable{since}"
                        f" ({reach.error or 'no connection'})",
                        hint=UNREACHABLE_HINT + "; retry after Retry-After")

    def maintenance(self, hint: str | None = None) -> ApiError:
        """The 503 problem of IB's maintenance (the gateway is up, IB is away)."""
        since = self._maintenance_since
        when = f" since {since:%H:%M:%S} UTC" if since else ""
        return ApiError(MAINTENANCE,
                        f"IB is in its daily maintenance{when}: the gateway at {self.key} "
                        f"answers, IB is away from it",
                        hint=hint or "IB is in its daily maintenance; operations continue when "
                                     "it ends; retry this request after Retry-After")

    def maintenance_exceeded(self, grace: float) -> ApiError:
        """The problem of an operation that waited out ``grace`` seconds of maintenance."""
        return ApiError(MAINTENANCE,
                        f"IB has been in maintenance for {self.maintenance_for():.0f} s, longer "
                        f"than this server waits ({grace:g} s, KTRDR_API_MAINTENANCE_GRACE)",
                        hint="what was fetched is stored; start the operation again once "
                             "GET /api/v1/health says ok")

    async def require(self, *, maintenance_ok: bool = False) -> None:
        """Raise the 503 problem unless IB can be asked now (``maintenance_ok``: work that
        may wait for the maintenance to end is let through)."""
        await self.check()
        if self.state is GatewayState.UNREACHABLE:
            raise self.unreachable()
        if self.state is GatewayState.MAINTENANCE and not maintenance_ok:
            raise self.maintenance()


__all__ = ["MAINTENANCE", "MAINTENANCE_HINT", "UNREACHABLE_HINT", "Availability",
           "GatewayState"]
