"""ibfarm: a multiprocessing connection farm for Interactive Brokers historical data.

Names are imported lazily, so a worker process that imports ``ibfarm.worker`` does not pay
for pyarrow or the manager.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ibfarm.bars import BAR_SCHEMA, BarRequest  # noqa: F401
    from ibfarm.config import FarmConfig  # noqa: F401
    from ibfarm.contracts import make_contract  # noqa: F401
    from ibfarm.farm import IbFarm  # noqa: F401
    from ibfarm.pacing import PacingPolicy  # noqa: F401

_EXPORTS = {
    "BAR_SCHEMA": "ibfarm.bars",
    "BarRequest": "ibfarm.bars",
    "FarmConfig": "ibfarm.config",
    "IbFarm": "ibfarm.farm",
    "PacingPolicy": "ibfarm.pacing",
    "make_contract": "ibfarm.contracts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ibfarm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
