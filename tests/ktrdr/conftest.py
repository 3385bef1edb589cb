"""ktrdr fixtures: one simulated gateway (movable clock, pacing off) and one 2-worker farm per
module, and a fresh data directory per test."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ibfarm import IbFarm
from ibfarm.sim import SimGateway
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter

#: A Friday evening after the US close (FX closes for the week at this very moment).
NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)


class Clock:
    """The gateway's clock; tests move it and put it back."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def sim(clock):
    with SimGateway(port=0, now=clock, pacing="off") as gw:
        yield gw


@pytest.fixture(scope="module")
def farm(sim):
    farm = IbFarm(port=sim.port, max_workers=2, pacing="off", request_timeout=30)
    yield farm
    farm.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def provider(farm):
    return IbDataAdapter(farm=farm, source="sim")


@pytest.fixture
def manager(tmp_path, provider, clock):
    clock.now = NOW
    dm = DataManager(tmp_path / "data", provider)
    yield dm
    dm.close()
    clock.now = NOW


def historical(sim) -> int:
    """Historical requests the gateway has answered so far."""
    return sim.stats()["requests"].get("historical", 0)


def model_bars(sim, symbol: str, sec_type: str, bar_size: str, start: datetime, end: datetime):
    """The market model's bars (what IB would have), as a dict of numpy arrays."""
    what = "MIDPOINT" if sec_type == "CASH" else "TRADES"
    if sec_type == "CASH":
        base, quote = symbol.split(".")
        inst = sim.market.resolve(symbol=base, sec_type="CASH", currency=quote)[0]
    elif sec_type == "FUT":
        inst = sim.market.resolve(symbol=symbol, sec_type="FUT")[0]
    else:
        inst = sim.market.resolve(symbol=symbol, sec_type=sec_type)[0]
    return sim.market.bars(inst, bar_size, start, end, True, what)
