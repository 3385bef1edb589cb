"""The HTTP API's settings, from arguments or the environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class ApiSettings:
    """How the API server runs.

    Args:
        host: address to bind (loopback unless told otherwise).
        port: TCP port.
        token: when set, every ``/api/v1`` request needs ``Authorization: Bearer <token>``.
        data_dir: the store's directory (None: the data layer's default).
        sim: start an embedded simulated gateway and fetch from it.
        farm: the connection farm's settings, an ``ibfarm.FarmConfig`` handed to the data
            provider as it is (None: the provider reads ``IB_HOST``, ``IB_PORT``,
            ``IBFARM_*``).
        probe_timeout: seconds a gateway reachability probe may take.
        probe_max_age: seconds a probe result is reused before probing again.
        outage_grace: seconds the gateway may stay unreachable (its port not answering)
            before running operations fail.
        maintenance_grace: seconds running operations wait through IB's maintenance (the
            gateway up, IB away) before they fail; default 5,400 (IB's longest daily window).
        retry_after_pacing: ``Retry-After`` seconds on a pacing problem (429).
        retry_after_unavailable: ``Retry-After`` seconds when the gateway is down (503).
        retry_after_maintenance: ``Retry-After`` seconds during IB's maintenance (503).
        keep_operations: finished operations remembered for ``GET /operations/{id}``.
        request_timeout: seconds a synchronous endpoint (``/symbols``) may wait for IB,
            pacing waits and retries included, before answering 504.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    data_dir: str | None = None
    sim: bool = False
    farm: Any = None
    probe_timeout: float = 1.0
    probe_max_age: float = 1.0
    outage_grace: float = 10.0
    maintenance_grace: float = 5400.0
    retry_after_pacing: int = 60
    retry_after_unavailable: int = 10
    retry_after_maintenance: int = 60
    keep_operations: int = 200
    request_timeout: float = 30.0

    def replace(self, **changes) -> ApiSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ApiSettings:
        """Settings from ``KTRDR_API_TOKEN``, ``KTRDR_DATA_DIR``, ``IB_GATEWAY=sim``,
        ``KTRDR_API_OUTAGE_GRACE``, ``KTRDR_API_MAINTENANCE_GRACE``,
        ``KTRDR_API_REQUEST_TIMEOUT``, then ``overrides`` (None values are ignored).

        Raises:
            ValueError: a variable that is not a positive number; the message names it.

        The farm's own settings come from ``IB_HOST``, ``IB_PORT`` and ``IBFARM_*``.
        """
        env = os.environ if env is None else env
        values: dict = {
            "token": env.get("KTRDR_API_TOKEN") or None,
            "data_dir": env.get("KTRDR_DATA_DIR") or None,
            "sim": env.get("IB_GATEWAY", "").strip().lower() == "sim",
        }
        for var, name in (("KTRDR_API_OUTAGE_GRACE", "outage_grace"),
                          ("KTRDR_API_MAINTENANCE_GRACE", "maintenance_grace"),
                          ("KTRDR_API_REQUEST_TIMEOUT", "request_timeout")):
            raw = env.get(var)
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a number of seconds") from None
                if not values[name] > 0:
                    raise ValueError(f"{var}={raw!r}: give a positive number of seconds")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
