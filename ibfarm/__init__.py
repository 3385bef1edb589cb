"""ibfarm: a multiprocessing connection farm for Interactive Brokers historical data."""

from ibfarm.bars import BAR_SCHEMA, BarRequest
from ibfarm.pacing import PacingPolicy

__all__ = ["BAR_SCHEMA", "BarRequest", "PacingPolicy"]
