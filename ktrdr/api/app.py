"""The FastAPI application: one adapter (and its farm), one DataManager, shared by every request.

``create_app(settings)`` builds the app; its lifespan starts, in order, (optionally) the
embedded simulated gateway, the ``IbDataAdapter`` with its farm (the API reaches IB only
through the adapter: its provider methods, ``farm_status()`` and ``settings()``), the
``DataManager`` on the adapter, the gateway's ``Availability`` (a TCP probe plus the farm's
view: ok, maintenance, unreachable), the metrics and the ``OperationRegistry``; it stops them
in reverse order (operations cancelled and their tasks awaited first). Requests reach them as
``dependencies.Services`` (``app.state.services``); nothing connects per request::

    create_app ── routes: /api/v1 (token checked) ─┬─ routes/data.py        /data/...
                                                   ├─ routes/operations.py  /operations/...
                                                   └─ routes/ib.py          /health, /ib/status,
                                                                            /symbols/...
               ── /metrics (metrics.py, token checked), /docs, /redoc, /openapi.json

The routes import ``dependencies`` (the services, the token check), never this module.
``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) get their scripts and styles from the
``fastapi-offline`` package, served by the app, so they render without a network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi_offline import FastAPIOffline

from ktrdr.api import errors
from ktrdr.api.availability import Availability
from ktrdr.api.dependencies import Services, require_token, version
from ktrdr.api.loads import KeyLocks
from ktrdr.api.metrics import CONTENT_TYPE, ApiMetrics
from ktrdr.api.operations import OperationRegistry
from ktrdr.api.reachability import ReachabilityMonitor
from ktrdr.api.routes import data, ib, operations
from ktrdr.api.settings import ApiSettings
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter

log = logging.getLogger(__name__)

PREFIX = "/api/v1"


def _start_data_layer(settings: ApiSettings) -> tuple[IbDataAdapter, Any]:
    """The adapter (its farm started) and (with ``settings.sim``) the embedded gateway."""
    if settings.sim:
        from ktrdr.sim import EmbeddedSim

        workers = IbDataAdapter.from_env(config=settings.farm).settings()["max_workers"]
        sim = EmbeddedSim(max_workers=workers).start()
        adapter = sim.provider().start()
        log.info("embedded simulated gateway on 127.0.0.1:%d", sim.gateway.port)
        return adapter, sim
    return IbDataAdapter.from_env(config=settings.farm, source="ib").start(), None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    adapter, sim = _start_data_layer(settings)  # worker processes start from the main thread
    manager: DataManager | None = None
    registry: OperationRegistry | None = None
    try:
        manager = DataManager(data_dir=settings.data_dir, provider=adapter)
        gateway = adapter.settings()
        address = f"{gateway['host']}:{gateway['port']}"
        probe = ReachabilityMonitor(gateway["host"], gateway["port"],
                                    timeout=settings.probe_timeout,
                                    max_age=settings.probe_max_age)
        availability = Availability(probe, adapter.farm_status, simulated=sim is not None)
        metrics = ApiMetrics(lambda: adapter.farm_status() or {}, address)
        registry = OperationRegistry(availability, outage_grace=settings.outage_grace,
                                     maintenance_grace=settings.maintenance_grace,
                                     keep=settings.keep_operations, prefix=PREFIX,
                                     on_finish=metrics.operation_finished)
        metrics.watch_operations(registry.counts)
        app.state.metrics = metrics
        app.state.services = Services(settings, adapter, manager, availability, registry,
                                      KeyLocks(), sim)
        health = await availability.check()
        log.info("API ready (data in %s); IB Gateway %s %s", manager.data_dir, address,
                 health.state if health.reachable else f"unreachable ({health.error})")
        yield
    finally:
        if registry is not None:
            await registry.close()
        if manager is not None:
            await manager.aclose()
        if sim is not None:
            await asyncio.to_thread(sim.stop)
        else:
            await asyncio.to_thread(adapter.shutdown)
        log.info("API stopped")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API application (see the module docstring)."""
    settings = settings or ApiSettings.from_env()
    app = FastAPIOffline(
        title="ktrdr API",
        version=version(),
        summary="Historical bars from Interactive Brokers, fetched once and stored locally.",
        description="Errors are RFC 9457 problems (application/problem+json) carrying IB's "
                    "error code, its kind and a hint. When the server has a token "
                    "(KTRDR_API_TOKEN), every /api/v1 endpoint needs "
                    "`Authorization: Bearer <token>` (so does /metrics).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    api = APIRouter(prefix=PREFIX, dependencies=[Depends(require_token)],
                    responses=errors.responses(401, 422, 500))
    api.include_router(data.router)
    api.include_router(operations.router)
    api.include_router(ib.router)
    app.include_router(api)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], tags=["metrics"],
                      summary="The farm's and the API's metrics (Prometheus text format)",
                      dependencies=[Depends(require_token)], response_class=Response,
                      responses={200: {"content": {CONTENT_TYPE: {}},
                                       "description": "Prometheus text exposition format"},
                                 **errors.responses(401)})
    return app


async def metrics_endpoint(request: Request) -> Response:
    """``ibfarm_*`` (requests by kind and outcome, IB errors by code, pacer waits by rule,
    workers by state, restarts, memory; read from the farm's status now) and ``ktrdr_*``
    (operations by state and duration, bars stored)."""
    metrics: ApiMetrics = request.app.state.metrics
    body = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


__all__ = ["PREFIX", "create_app", "lifespan"]
