"""The simulated IB Gateway: a TWS-protocol server and its deterministic market model.

``SimGateway`` (gateway.py) serves connections; each is a ``Session`` (session.py) sharing one
``House`` (house.py) of state; requests are answered from ``MarketModel`` (market.py) over
``instruments.py`` and ``calendar.py``, with IB's rules and texts (hmds.py, texts.py), the
latency model (latency.py) and one settings dataclass (settings.py) for Python and the CLI.
"""

from ibfarm.sim.gateway import SimGateway
from ibfarm.sim.instruments import Instrument
from ibfarm.sim.latency import IbLatency
from ibfarm.sim.market import MarketModel
from ibfarm.sim.settings import SimSettings

__all__ = ["IbLatency", "Instrument", "MarketModel", "SimGateway", "SimSettings"]
