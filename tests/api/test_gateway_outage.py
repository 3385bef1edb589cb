"""The gateway goes away in the middle of a backfill (``SimGateway.restart(down_for)``: every
connection dropped, the port closed), then comes back on the same port.

The operation must fail with a clear 503 problem, ``/health`` must say the gateway is
unreachable, new work must be refused with 503 and ``Retry-After`` while it is down, and the
same server must recover on its own once the gateway is back.
"""

from __future__ import annotations

import threading

import pytest

from tests.api.conftest import assert_problem, wait_until

GRACE = 2.0
#: Seconds the gateway is away: long enough for every check made while it is down.
DOWN_FOR = 6.0


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway()


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, KTRDR_API_OUTAGE_GRACE=str(GRACE), IBFARM_MAX_WORKERS="2",
                       IBFARM_CLIENT_IDS="70-79", IBFARM_REQUEST_TIMEOUT="30")


def test_gateway_outage_and_recovery(api, gateway):
    assert api.client.get("/health").json()["status"] == "ok"
    gateway.latency = 0.4  # slow answers: the backfill is still running when the gateway stops
    body = {"symbols": ["AAPL", "MSFT", "IBM"], "timeframe": "1h", "start": "2023-06-01",
            "end": "2024-06-01"}
    op = api.start("/data/backfill", body)
    wait_until(lambda: api.operation(op["id"])["progress"]["done"] >= 1, what="first segments")
    # drop every connection and close the port for DOWN_FOR seconds, then reopen the same port
    restart = threading.Thread(target=gateway.restart, args=(DOWN_FOR,))
    restart.start()
    try:
        down = wait_until(lambda: (r := api.client.get("/health")).status_code == 503 and r,
                          timeout=5, what="/health to report the outage")
        health = down.json()
        assert health["status"] == "unavailable"
        assert health["state"] == health["gateway"]["state"] == "unreachable"
        assert "IB Gateway/TWS" in health["gateway"]["hint"]
        assert health["gateway"]["reachable"] is False
        assert health["gateway"]["unreachable_since"] and health["gateway"]["error"]
        assert int(down.headers["retry-after"]) > 0

        failed = api.wait_operation(op["id"], timeout=GRACE + 3)
        assert failed["status"] == "failed"
        error = failed["error"]
        assert (error["status"], error["kind"]) == (503, "unavailable")
        assert f"127.0.0.1:{gateway.port} is unreachable" in error["detail"]
        assert "IB Gateway" in error["hint"]

        refused = api.client.post("/data/load", json={"symbol": "SPY", "timeframe": "1d",
                                                      "start": "2024-01-01", "mode": "full"})
        assert_problem(refused, 503, "unavailable")
        assert int(refused.headers["retry-after"]) > 0
        assert_problem(api.client.get("/symbols/SPY"), 503, "unavailable")
    finally:
        gateway.latency = 0.0
        restart.join(DOWN_FOR + 15)

    wait_until(lambda: api.client.get("/health").status_code == 200, timeout=15,
               what="/health to recover")
    again = api.wait_operation(api.start("/data/load", {
        "symbol": "SPY", "timeframe": "1d", "start": "2024-01-01", "end": "2024-06-01",
        "mode": "full"})["id"])
    assert again["status"] == "succeeded", again["error"]
    assert again["result"]["symbols"][0]["rows"] > 90
    rerun = api.wait_operation(api.start("/data/backfill", body)["id"], timeout=60)
    assert rerun["status"] == "succeeded", rerun["error"]
    assert all(r["gaps_left"] == 0 and r["rows"] > 1000 for r in rerun["result"]["symbols"])
    status = api.client.get("/ib/status").json()
    assert status["gateway"]["reachable"] is True
    assert any(w["state"] == "ready" for w in status["workers"])
