"""The FastAPI application: one farm, one DataManager, shared by every request.

``create_app(settings)`` builds the app; its lifespan starts (optionally) an embedded
simulated gateway, the ``IbDataAdapter`` with its farm (the API reaches IB only through the
adapter: ``farm_status()``, ``settings()``), the ``DataManager``, the gateway monitor, the
metrics and the operations registry, and shuts them down in reverse order. Requests reach them
through ``Services`` (``request.app.state.services``); nothing connects per request.

Beside ``/api/v1``: ``/metrics`` (Prometheus text format; ``metrics.py``, token-protected like
``/api/v1``), and the OpenAPI pages ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), whose scripts
and styles come from the ``fastapi-offline`` package and are served by the app, so they render
without a network.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline

from ktrdr.api import errors
from ktrdr.api.bridge import KeyLocks
from ktrdr.api.cancel import CancellableProvider
from ktrdr.api.errors import ApiError
from ktrdr.api.gateway import GatewayMonitor
from ktrdr.api.metrics import CONTENT_TYPE, ApiMetrics
from ktrdr.api.operations import OperationRegistry
from ktrdr.api.settings import ApiSettings
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter

log = logging.getLogger(__name__)

PREFIX = "/api/v1"


def _version() -> str:
    try:
        return pkg_version("ibfarm")
    except PackageNotFoundError:
        return "0"


@dataclass
class Services:
    """What the app's lifespan created; shared by every request."""

    settings: ApiSettings
    adapter: IbDataAdapter  # the provider; its farm's settings and status
    provider: CancellableProvider  # over the adapter
    manager: DataManager
    monitor: GatewayMonitor
    operations: OperationRegistry
    locks: KeyLocks
    sim: Any = None  # the embedded simulated gateway, when ``settings.sim``
    symbols: dict = field(default_factory=dict)  # recent /symbols answers


def services(request: Request) -> Services:
    """The app's shared services (a FastAPI dependency)."""
    return request.app.state.services


#: A route parameter receiving the shared services.
Svc = Annotated[Services, Depends(services)]


_bearer = HTTPBearer(auto_error=False, description="the value of KTRDR_API_TOKEN, when set")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Check ``Authorization: Bearer <token>`` when the server has a token."""
    token = request.app.state.settings.token
    if not token:
        return
    given = credentials.credentials if credentials is not None else ""
    if not given or not secrets.compare_digest(given.encode(), token.encode()):
        raise ApiError("unauthorized",
                       "missing bearer token" if not given else "wrong bearer token",
                       headers={"WWW-Authenticate": 'Bearer realm="ktrdr"'})


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
    adapter, sim = _start_data_layer(settings)
    provider = CancellableProvider(adapter)
    manager: DataManager | None = None
    operations: OperationRegistry | None = None
    try:
        manager = DataManager(data_dir=settings.data_dir, provider=provider)
        gateway = adapter.settings()
        monitor = GatewayMonitor(gateway["host"], gateway["port"],
                                 timeout=settings.probe_timeout, max_age=settings.probe_max_age,
                                 simulated=sim is not None)
        metrics = ApiMetrics(lambda: adapter.farm_status() or {},
                             f"{gateway['host']}:{gateway['port']}")
        operations = OperationRegistry(monitor, outage_grace=settings.outage_grace,
                                       keep=settings.keep_operations, prefix=PREFIX,
                                       on_finish=metrics.operation_finished)
        metrics.watch_operations(operations.counts)
        app.state.metrics = metrics
        app.state.services = Services(settings, adapter, provider, manager, monitor,
                                      operations, KeyLocks(), sim)
        health = await monitor.check()
        log.info("API ready (data in %s); IB Gateway %s:%d %s", manager.data_dir,
                 gateway["host"], gateway["port"],
                 "reachable" if health.reachable else f"unreachable ({health.error})")
        yield
    finally:
        loop = asyncio.get_running_loop()
        if operations is not None:
            await operations.close()
        if manager is not None:
            await loop.run_in_executor(None, manager.close)
        if sim is not None:
            await loop.run_in_executor(None, sim.stop)
        else:
            await loop.run_in_executor(None, adapter.shutdown)
        log.info("API stopped")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API application (see the module docstring)."""
    from ktrdr.api.routes import data, ib, operations

    settings = settings or ApiSettings.from_env()
    # Swagger UI (/docs) and ReDoc (/redoc) with their scripts served from the app itself, so
    # the pages work without a network.
    app = FastAPIOffline(
        title="ktrdr API",
        version=_version(),
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
