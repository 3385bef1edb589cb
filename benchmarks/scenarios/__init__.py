"""The benchmark's scenarios, by name, in the order they run.

Each is a ``Scenario`` class (``benchmarks.scenarios.base``); the harness builds one fresh for
every run from the run's ``Context``. The default run is the six numbered ones; the optional
ones run when named (``--scenarios scale,gateways``) or with ``--scenarios all``. A new
scenario is a module here and a line below.
"""

from __future__ import annotations

from benchmarks.scenarios.backfill import Backfill
from benchmarks.scenarios.base import SIM_NOW, Context, Metric, Row, ScaleTier, Scenario, Sizes
from benchmarks.scenarios.capacity import GatewayCapacity
from benchmarks.scenarios.ib_latency import IbLatencyBackfill
from benchmarks.scenarios.latency import TinyLatency
from benchmarks.scenarios.pacing import PacingBound
from benchmarks.scenarios.recovery import Recovery
from benchmarks.scenarios.scale import Scale
from benchmarks.scenarios.startup import StartupMemory
from benchmarks.scenarios.store_read import StoreRead
from benchmarks.scenarios.throughput import LargeResponses, SmallRequests
from benchmarks.scenarios.two_gateways import TwoGateways

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (
    LargeResponses, SmallRequests, PacingBound, TinyLatency, StartupMemory, Recovery,
    GatewayCapacity, Backfill, Scale, TwoGateways, IbLatencyBackfill, StoreRead)}
SCENARIO_NAMES = list(SCENARIOS)
DEFAULT_SCENARIOS = [name for name, cls in SCENARIOS.items() if not cls.optional]

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "SCENARIO_NAMES", "SIM_NOW", "Context", "Metric",
           "Row", "ScaleTier", "Scenario", "Sizes"]
