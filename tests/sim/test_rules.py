"""The simulated gateway's pacing rules and protocol-level errors, exactly as IB states them."""

from __future__ import annotations

import dataclasses
import time

import pytest

from ibfarm.pacing import PacingPolicy
from ibfarm.sim import SimGateway
from tests.conftest import NOW
from tests.sim.rawclient import RawClient

END = "20240607 20:00:00 UTC"


def bar_request(req_id: int, symbol: str = "AAPL", bar: str = "5 secs", duration: str = "60 S",
                what: str = "TRADES", end: str = END) -> tuple:
    return (20, req_id, 0, symbol, "STK", "", "0.0", "", "", "SMART", "", "USD", "", "", 0,
            end, bar, duration, 1, what, 2, 0, "")


def answer(client: RawClient, req_id: int) -> tuple[str, str]:
    """('bars', n) or ('error', code) for ``req_id``."""
    while True:
        fields = client.read()
        assert fields is not None, "connection closed"
        if fields[0] == "17" and fields[1] == str(req_id):
            return "bars", fields[4]
        if fields[0] == "4" and fields[2] == str(req_id):
            return "error", fields[3]


def gateway_with(**policy) -> SimGateway:
    return SimGateway(port=0, now=lambda: NOW,
                      pacing=dataclasses.replace(PacingPolicy(), **policy))


def test_identical_request_within_window_is_a_violation():
    with gateway_with(identical_window=0.5) as gw:
        c = RawClient(gw.port)
        c.send(*bar_request(1))
        assert answer(c, 1)[0] == "bars"
        c.send(*bar_request(2))
        assert answer(c, 2) == ("error", "162")
        time.sleep(0.6)
        c.send(*bar_request(3))
        assert answer(c, 3)[0] == "bars"
        assert gw.stats()["pacing_violations"] == 1
        assert gw.stats()["pacing_rules"] == {"identical": 1}
        c.close()


def test_sixth_request_for_one_contract_within_window():
    with gateway_with(same_contract_window=1.0) as gw:
        c = RawClient(gw.port)
        for i in range(5):  # five different requests for AAPL TRADES: allowed
            c.send(*bar_request(i, duration=f"{60 + i} S"))
            assert answer(c, i)[0] == "bars"
        c.send(*bar_request(5, duration="70 S"))
        assert answer(c, 5) == ("error", "162")
        c.send(*bar_request(6, symbol="MSFT"))  # another contract is fine
        assert answer(c, 6)[0] == "bars"
        c.send(*bar_request(7, what="MIDPOINT"))  # so is another tick type
        assert answer(c, 7)[0] == "bars"
        assert gw.stats()["pacing_rules"] == {"same_contract": 1}
        c.close()


def test_window_limit_counts_bid_ask_twice():
    with gateway_with(window_max=4, window=60.0) as gw:
        c = RawClient(gw.port)
        c.send(*bar_request(1, symbol="AAPL", what="BID_ASK"))
        assert answer(c, 1)[0] == "bars"
        c.send(*bar_request(2, symbol="MSFT"))
        c.send(*bar_request(3, symbol="IBM"))
        assert answer(c, 2)[0] == "bars" and answer(c, 3)[0] == "bars"
        c.send(*bar_request(4, symbol="SPY"))  # 2 + 1 + 1 + 1 = 5 > 4
        assert answer(c, 4) == ("error", "162")
        assert gw.stats()["pacing_rules"] == {"window": 1}
        c.close()


def test_large_bars_are_not_paced():
    with gateway_with(window_max=2) as gw:
        c = RawClient(gw.port)
        for i in range(5):
            c.send(*bar_request(i, bar="1 hour", duration="1 D"))
            assert answer(c, i)[0] == "bars"
        assert gw.stats()["pacing_violations"] == 0
        c.close()


def test_off_switch():
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        c = RawClient(gw.port)
        for i in range(8):
            c.send(*bar_request(i))
            assert answer(c, i)[0] == "bars"
        c.close()


def test_open_request_cap_gives_322():
    with gateway_with(max_open_requests=2) as gw:
        gw.stall_next(2)
        c = RawClient(gw.port)
        c.send(*bar_request(1, bar="1 hour", duration="1 D"))
        c.send(*bar_request(2, bar="1 hour", duration="2 D"))
        c.send(*bar_request(3, bar="1 hour", duration="3 D"))
        assert answer(c, 3) == ("error", "322")
        assert gw.stats()["max_open_requests"] == 2
        c.send(25, 1, 1)  # cancelling one frees a slot
        assert answer(c, 1) == ("error", "162")
        c.send(*bar_request(4, bar="1 hour", duration="4 D"))
        assert answer(c, 4)[0] == "bars"
        c.close()


def test_message_rate_gives_100_and_disconnects():
    with gateway_with(message_rate=10) as gw:
        c = RawClient(gw.port)
        for _ in range(15):
            c.send(49, 1)
        seen = c.drain()
        assert ["4", "2", "-1", "100"] in [f[:4] for f in seen]
        assert sum(1 for f in seen if f[0] == "49") == 10
        c.close()


def test_malformed_message_gives_320_and_disconnects(gateway):
    c = RawClient(gateway.port)
    c.send(20, "AAPL", "x")
    seen = c.drain()
    errors = [f for f in seen if f[0] == "4"]
    assert errors[-1][3] == "320" and "NumberFormatException" in errors[-1][4]
    c.close()


@pytest.mark.parametrize("text", ["pacing violation", "Historical data request pacing violation"])
def test_pacing_text_is_configurable(text):
    policy = dataclasses.replace(PacingPolicy(), identical_window=5)
    with SimGateway(port=0, now=lambda: NOW, pacing=policy, pacing_text=text) as gw:
        c = RawClient(gw.port)
        c.send(*bar_request(1))
        answer(c, 1)
        c.send(*bar_request(2))
        while (fields := c.read())[0] != "4" or fields[2] != "2":
            pass
        assert fields[4].endswith(":" + text)
        c.close()


def test_old_client_versions_negotiate_down(gateway):
    c = RawClient(gateway.port, version="v100..157")
    assert c.handshake[0] == "157"
    fields = c.read_until("4")
    assert fields[:4] == ["4", "2", "-1", "2104"] and len(fields) == 5  # no advanced-reject field
    c.close()
