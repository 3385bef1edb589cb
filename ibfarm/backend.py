"""The IB client library the farm speaks through: ``ib_async`` or ``ib_insync``.

``ib_async`` is the maintained successor of ``ib_insync`` (same API, same module layout); both
install a top-level ``eventkit`` package, so one environment holds one of them. This module
picks the library once per process and re-exports the names the rest of ibfarm (and ktrdr's
adapter, and the tests) use, so no other module imports either library by name::

    IBFARM_BACKEND=ib_async | ib_insync   (default: whichever is installed, ib_async first)

A worker process is told its parent's choice and loads the same library.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)

#: The libraries the farm can use, in order of preference.
BACKENDS = ("ib_async", "ib_insync")
#: Oldest release of each that the farm works with (ib_async 2.0.x cached the event loop:
#: ib_async #186).
MINIMUM = {"ib_async": (2, 1), "ib_insync": (0, 9, 86)}


class BackendError(ImportError):
    """No usable IB client library, or the one asked for is not installed."""


def installed() -> list[str]:
    """The backends importable here, in order of preference."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def choose(requested: str | None = None) -> str:
    """The backend to use: ``requested``, else ``IBFARM_BACKEND``, else the first installed.

    Raises:
        BackendError: an unknown name, or one that is not installed (the message says what
            to install).
    """
    name = (requested or os.environ.get("IBFARM_BACKEND") or "").strip().lower()
    available = installed()
    if not name:
        if not available:
            raise BackendError(
                "no IB client library is installed; install one: pip install 'ibfarm[ib-async]'"
                " (or 'ibfarm[ib-insync]')")
        return available[0]
    if name not in BACKENDS:
        raise BackendError(f"unknown IB backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name not in available:
        have = f" (installed: {', '.join(available)})" if available else ""
        extra = name.replace("_", "-")
        raise BackendError(f"IB backend {name!r} is not installed{have}; install it with "
                           f"pip install 'ibfarm[{extra}]' or choose another (IBFARM_BACKEND)")
    return name


def _load(name: str) -> ModuleType:
    module = importlib.import_module(name)
    version = tuple(int(p) for p in module.__version__.split(".")[:3] if p.isdigit())
    if version < MINIMUM[name]:
        want = ".".join(map(str, MINIMUM[name]))
        raise BackendError(f"{name} {module.__version__} is too old; the farm needs {name} >= "
                           f"{want}")
    return module


NAME: str = choose()
#: The library itself (``ib_async`` or ``ib_insync``).
lib: ModuleType = _load(NAME)
VERSION: str = lib.__version__

IB = lib.IB
Contract = lib.Contract
ContractDetails = lib.ContractDetails
Stock = lib.Stock
Forex = lib.Forex
Future = lib.Future
Index = lib.Index
BarDataList = lib.BarDataList
util = lib.util
RequestError = importlib.import_module(f"{NAME}.wrapper").RequestError


def check(requested: str | None) -> str:
    """Check that ``requested`` (None: the default) is the backend loaded in this process.

    Raises:
        BackendError: another backend was asked for than the one this process runs.
    """
    if requested is None:
        return NAME
    wanted = choose(requested)
    if wanted != NAME:
        raise BackendError(f"this process already uses {NAME}; one process runs one IB "
                           f"backend (set IBFARM_BACKEND={wanted} before starting it)")
    return NAME


def connect_kwargs() -> dict:
    """Extra ``IB.connectAsync`` arguments: ib_async can skip the start-up sync of orders,
    positions and executions, which a data worker never needs."""
    fetch = getattr(getattr(lib, "ib", None), "StartupFetchNONE", None)
    return {} if fetch is None else {"fetchFields": fetch}


__all__ = ["BACKENDS", "IB", "NAME", "VERSION", "BackendError", "BarDataList", "Contract",
           "ContractDetails", "Forex", "Future", "Index", "RequestError", "Stock", "check",
           "choose", "connect_kwargs", "installed", "lib", "util"]
