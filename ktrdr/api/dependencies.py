"""What the routes depend on: the shared services, the bearer-token check, the version.

The app (``app.py``) creates the ``Services`` in its lifespan and puts them on
``app.state.services``; routes receive them as a parameter annotated ``Svc``. Routes import
this module, never the app, so the app can import its routes at the top (FastAPI's "bigger
applications" layout, without an import cycle)::

    app.py ──imports──► routes/*.py ──imports──► dependencies.py ◄──imports── app.py
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ktrdr.api.availability import Availability
from ktrdr.api.errors import ApiError
from ktrdr.api.loads import KeyLocks
from ktrdr.api.operations import OperationRegistry
from ktrdr.api.settings import ApiSettings
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter


def version() -> str:
    """The installed package's version ("0" when run from a source tree)."""
    try:
        return pkg_version("ibfarm")
    except PackageNotFoundError:
        return "0"


@dataclass
class Services:
    """What the app's lifespan created; shared by every request.

    Attributes:
        settings: the server's settings.
        adapter: the data provider (the DataManager's, and the one ``/symbols`` asks); its
            farm's settings and status.
        manager: the DataManager every load, backfill and read goes through.
        availability: whether IB can be asked now (ok, maintenance, unreachable).
        operations: the background operations.
        locks: one lock per (symbol, timeframe): one operation at a time per file.
        sim: the embedded simulated gateway, when ``settings.sim``.
        symbols: recent ``/symbols`` answers.
    """

    settings: ApiSettings
    adapter: IbDataAdapter
    manager: DataManager
    availability: Availability
    operations: OperationRegistry
    locks: KeyLocks
    sim: Any = None
    symbols: dict = field(default_factory=dict)


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


__all__ = ["Services", "Svc", "require_token", "services", "version"]
