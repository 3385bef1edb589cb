"""``DELETE /operations/{id}`` on a large backfill: the operation's task is cancelled, and with
it every request it had queued in the farm or in flight at the gateway; what landed is stored
and a new operation on the same files runs at once.

The server runs ``ktrdr api`` against a simulated gateway with IB's pacing rules and slow
answers, so when the backfill is cancelled about a thousand requests wait in the farm's queue
and fifty are open at the gateway.
"""

from __future__ import annotations

import time

import pytest

from ktrdr.data.store import BarStore
from tests.api.conftest import wait_until
from tests.ktrdr.conftest import assert_stored_bars_are_the_models

SYMBOLS = ["AAPL", "MSFT"]
#: Ten years of 1-minute bars, a week per request: about 1,040 requests.
BODY = {"symbols": SYMBOLS, "timeframe": "1m", "start": "2014-06-01", "end": "2024-06-01"}
LATENCY = 2.0


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway(pacing="ib", latency=LATENCY)


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, IBFARM_MAX_WORKERS="2", IBFARM_CLIENT_IDS="80-89",
                       IBFARM_PACING="ib", IBFARM_REQUEST_TIMEOUT="60")


def farm_idle(api) -> dict | None:
    """``/ib/status`` once nothing is queued, in flight, open at the pacer or waiting for it."""
    status = api.client.get("/ib/status").json()
    farm, pacer = status["farm"], status["pacer"] or {}
    idle = farm["pending"] == 0 and farm["in_flight"] == 0 and \
        pacer.get("open", 0) == 0 and pacer.get("waiting", 0) == 0
    return status if idle else None


def test_cancelling_a_large_backfill_empties_the_farm_and_keeps_what_landed(api, gateway):
    op = api.start("/data/backfill", BODY)
    running = wait_until(lambda: (o := api.operation(op["id"]))["progress"]["done"] >= 1 and o,
                         what="the first requests to land")
    assert running["progress"]["total"] >= 1000
    busy = api.client.get("/ib/status").json()
    assert busy["farm"]["pending"] >= 500 and busy["farm"]["in_flight"] >= 1, busy["farm"]

    began = time.monotonic()
    response = api.client.delete(f"/operations/{op['id']}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    status = wait_until(lambda: farm_idle(api), timeout=15, every=0.05,
                        what="the farm to drop the cancelled requests")
    emptied = time.monotonic() - began
    print(f"cancel of {running['progress']['total']} requests: farm empty {emptied:.2f} s "
          f"after DELETE")
    assert status["farm"]["cancelled"] >= 500
    # what had reached the gateway was cancelled there too
    wait_until(lambda: gateway.stats()["open_requests"] == 0, timeout=10,
               what="the gateway's open requests to be cancelled")

    # the task has ended once it says what it kept; everything that landed is stored
    stopped = wait_until(lambda: (o := api.operation(op["id"]))["progress"]["message"]
                         .startswith("stopped") and o, what="the operation's task to end")
    assert stopped["status"] == "cancelled" and stopped["error"]["kind"] == "cancelled"
    store = BarStore(api.data_dir, source="ib")
    stored = {s: assert_stored_bars_are_the_models(store, gateway, s, "1m", "1 min", "STK")
              for s in SYMBOLS}
    assert sum(stored.values()) >= stopped["progress"]["bars"] > 0
    assert api.client.get("/data/AAPL/1m").json()["count"] == stored["AAPL"]

    # the files are free again: a small load on one of them runs normally
    small = api.wait_operation(api.start("/data/load", {
        "symbol": "MSFT", "timeframe": "1m", "start": "2024-05-20", "end": "2024-05-25",
        "mode": "full"})["id"])
    assert small["status"] == "succeeded", small["error"]
    [report] = small["result"]["symbols"]
    assert report["rows"] == 5 * 390 and report["gaps_left"] == 0
    assert farm_idle(api) is not None
