"""An embedded simulated IB Gateway for ktrdr's ``--sim`` flag (and ``IB_GATEWAY=sim``).

``EmbeddedSim`` starts ``ibfarm.sim.SimGateway`` on a free local port and hands out an
``IbDataAdapter`` connected to it through a farm, so every ktrdr command works on a machine
without IB. Data fetched this way is marked ``source="sim"`` in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ibfarm import clikit, dates  # noqa: F401 (re-exported: ktrdr's command line shares them)
from ibfarm.sim import SimGateway
from ibfarm.sim.latency import check_latency
from ktrdr.data.ib_data_adapter import IbDataAdapter

log = logging.getLogger(__name__)


LATENCY_FORMS = "seconds (0.3), 'ib' (the model of IB's answer times) or 'ib/F' (it divided by F)"


def parse_sim_latency(text: str) -> dict[str, Any]:
    """``--sim-latency``'s text as ``SimGateway`` settings: ``"0.3"`` is 0.3 s before every
    answer; ``"ib"`` the model of IB's answer times; ``"ib/10"`` that model ten times faster.
    Anything else is a ``ValueError`` naming the forms."""
    base, divided, scale = text.strip().partition("/")
    try:
        latency = check_latency(base)
        if not divided:
            return {"latency": latency}
        if latency == "ib" and float(scale) > 0:
            return {"latency": "ib", "latency_scale": float(scale)}
    except ValueError:
        pass
    raise ValueError(f"--sim-latency {text!r}: give {LATENCY_FORMS}")


class EmbeddedSim:
    """A simulated gateway in this process plus the adapter (and farm) that talks to it.

    Args:
        latency: seconds the gateway waits before each historical answer, or "ib": its model
            of IB's answer times (``latency_scale`` divides it).
        pacing: IB's pacing rules for both the gateway and the farm (a preset name or policy).
        now: the gateway's clock (default: real time).
        max_workers: farm worker processes.
        farm_options: further ``FarmConfig`` fields for the farm (request_timeout, ...).
        gateway_options: further ``SimGateway`` knobs.
    """

    def __init__(self, *, latency: float | str = 0.0, pacing: Any = "ib",
                 now: Callable[[], datetime] | None = None, max_workers: int = 4,
                 farm_options: dict[str, Any] | None = None, **gateway_options: Any):
        self.gateway = SimGateway(port=0, latency=latency, pacing=pacing, now=now,
                                  **gateway_options)
        self.pacing = pacing
        self.max_workers = max_workers
        self.farm_options = dict(farm_options or {})
        self._adapter: IbDataAdapter | None = None

    def start(self) -> EmbeddedSim:
        self.gateway.start()
        log.info("simulated IB Gateway on 127.0.0.1:%d", self.gateway.port)
        return self

    def provider(self) -> IbDataAdapter:
        """The adapter (with its own farm) connected to the simulated gateway."""
        if self._adapter is None:
            options = {"max_workers": self.max_workers, "pacing": self.pacing,
                       "idle_timeout": 60.0, **self.farm_options}
            self._adapter = IbDataAdapter("127.0.0.1", self.gateway.port, source="sim",
                                          **options)
        return self._adapter

    def farm_status(self) -> dict | None:
        """The adapter's farm status (None before the first request)."""
        return None if self._adapter is None else self._adapter.farm_status()

    def stop(self) -> None:
        """Stop the farm, then the gateway."""
        if self._adapter is not None:
            self._adapter.shutdown()
        self.gateway.stop()

    def __enter__(self) -> EmbeddedSim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
