"""ktrdr fixtures: one simulated gateway (movable clock, pacing off) and one 2-worker farm per
module, and a fresh data directory per test."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from ibfarm import IbFarm
from ibfarm.contracts import iana_zone
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
    """The market model's bars (what IB would have), as a dict of numpy arrays, stamped the
    way ktrdr stamps them: daily bars at midnight of the trading date on the exchange's clock,
    weekly bars at midnight of their Monday there (the model dates weeks by their last
    trading date)."""
    what = "MIDPOINT" if sec_type == "CASH" else "TRADES"
    root, _, exchange = symbol.partition("@")
    if sec_type == "CASH":
        base, quote = root.split(".")
        inst = sim.market.resolve(symbol=base, sec_type="CASH", currency=quote)[0]
    else:
        found = sim.market.resolve(symbol=root, sec_type=sec_type, exchange=exchange)
        if sec_type == "FUT":
            found.sort(key=lambda i: i.last_trade_date)
        inst = found[0]
    bars = sim.market.bars(inst, bar_size, start, end, True, what)
    if bar_size in ("1 day", "1 week"):
        zone = iana_zone(inst.time_zone, inst.primary_exchange or inst.exchange)
        days = pd.to_datetime(bars.time, unit="s")
        if bar_size == "1 week":
            days = days - pd.to_timedelta(np.asarray(days.day_of_week), unit="D")
        stamps = days.tz_localize(zone).tz_convert("UTC").as_unit("s").asi8
        bars = dataclasses.replace(bars, time=np.asarray(stamps, dtype=np.int64))
    return bars


def kind_of(symbol: str) -> str:
    """The model's instrument type of a plain symbol: a forex pair or a stock."""
    return "CASH" if "." in symbol else "STK"


def assert_stored_bars_are_the_models(store, sim, symbol: str, timeframe: str, bar_size: str,
                                      sec_type: str | None = None) -> int:
    """Every stored bar of ``symbol`` is the market model's, every range the store recorded as
    fetched holds all the model's bars there (nothing half-saved), and no bar lies outside
    those ranges. Returns the bars stored."""
    stored = store.read(symbol, timeframe)
    stamps = stored.frame.index.as_unit("s").asi8
    closes = stored.frame["close"].to_numpy()
    covered = 0
    for a, b in stored.fetched:
        model = model_bars(sim, symbol, sec_type or kind_of(symbol), bar_size,
                           datetime.fromtimestamp(a, timezone.utc),
                           datetime.fromtimestamp(b, timezone.utc))
        inside = (stamps >= a) & (stamps < b)
        np.testing.assert_array_equal(stamps[inside], model.time, err_msg=symbol)
        np.testing.assert_array_equal(closes[inside], model.close, err_msg=symbol)
        covered += int(inside.sum())
    assert covered == len(stamps), f"{symbol}: bars outside the ranges recorded as fetched"
    return len(stamps)
