"""The simulated IB Gateway: a TWS-protocol server and its deterministic market model."""

from ibfarm.sim.gateway import SimGateway
from ibfarm.sim.market import Instrument, MarketModel

__all__ = ["Instrument", "MarketModel", "SimGateway"]
