"""The official IB client (``ibapi``), unmodified, against the simulated gateway over TCP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import NOW
from tests.sim.ibapiclient import Recorder, connected


@pytest.fixture
def app(open_gateway):
    with connected(open_gateway.port) as client:
        yield client


stock = Recorder.stock


def test_negotiates_176(app):
    assert app.serverVersion() == 176


def test_contract_details(app):
    done = app.expect(1)
    app.reqContractDetails(1, stock("NVDA"))
    assert done.wait(10)
    (details,) = app.rows[1]
    assert details.contract.conId == 4815747 and details.timeZoneId == "US/Eastern"
    assert "CLOSED" in details.tradingHours


def test_historical_bars_match_model(app, open_gateway):
    done = app.expect(2)
    app.reqHistoricalData(2, stock("AMZN"), NOW.strftime("%Y%m%d %H:%M:%S UTC"), "1 D",
                          "5 mins", "TRADES", 1, 2, False, [])
    assert done.wait(10)
    bars = app.rows[2]
    inst = open_gateway.market.resolve(symbol="AMZN", sec_type="STK")[0]
    expected = open_gateway.market.bars(inst, "5 mins", NOW - timedelta(days=1), NOW, True,
                                        "TRADES")
    assert [int(b.date) for b in bars] == expected.time.tolist()
    assert [b.close for b in bars] == expected.close.tolist()
    assert [float(b.volume) for b in bars] == expected.volume.tolist()


def test_errors_arrive_with_codes(app):
    done = app.expect(3)
    app.reqHistoricalData(3, stock("ZZZZ"), "", "1 D", "1 min", "TRADES", 1, 2, False, [])
    assert done.wait(10)
    assert app.errors[3][0][0] == 200
    done = app.expect(4)
    app.reqHistoricalData(4, stock("AAPL"), "", "1 D", "9 mins", "TRADES", 1, 2, False, [])
    assert done.wait(10)
    assert app.errors[4][0][0] == 321


def test_head_timestamp(app):
    done = app.expect(5)
    app.reqHeadTimeStamp(5, stock("GOOGL"), "TRADES", 1, 2)
    assert done.wait(10)
    head = datetime.fromtimestamp(int(app.rows[5][0]), timezone.utc)
    assert head.year == 2004
