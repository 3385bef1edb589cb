"""IB's nightly maintenance (``SimGateway.maintenance``: 1100 to every session, the gateway
still up, 1102 at the end) is not an outage: operations started before or during the window
wait through it and complete, while ``/health`` answers 503 with ``state: maintenance``; an
operation waits for it up to ``KTRDR_API_MAINTENANCE_GRACE`` only.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.api.conftest import assert_problem, wait_until

#: Seconds the gateway may be unreachable before operations fail: far shorter than the window.
OUTAGE_GRACE = 1.0
WINDOW = 4.0
BEFORE = {"symbols": ["AAPL", "MSFT", "EUR.USD"], "timeframe": "1d", "start": "2016-06-01",
          "end": "2024-06-01"}
DURING = {"symbols": ["IBM", "SPY"], "timeframe": "1d", "start": "2023-01-01",
          "end": "2024-06-01"}


@pytest.fixture(scope="module")
def gateway(make_gateway):
    # slow answers: the first backfill's requests are still out at the gateway when the window
    # opens (the gateway holds them through it)
    return make_gateway(pacing="off", latency=1.0)


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, KTRDR_API_OUTAGE_GRACE=str(OUTAGE_GRACE),
                       IBFARM_MAX_WORKERS="2", IBFARM_CLIENT_IDS="100-109",
                       IBFARM_PACING="off", IBFARM_REQUEST_TIMEOUT="30")


class HealthWatch:
    """Polls ``/health`` on a thread and keeps every (status code, state, Retry-After)."""

    def __init__(self, api):
        self.api = api
        self.seen: list[tuple[int, str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            response = self.api.client.get("/health")
            body = response.json()
            self.seen.append((response.status_code, body["state"],
                              response.headers.get("retry-after")))
            self._stop.wait(0.1)


def test_operations_wait_through_maintenance_and_complete(api, gateway):
    assert api.client.get("/health").json()["state"] == "ok"
    before = api.start("/data/backfill", BEFORE)
    wait_until(lambda: api.operation(before["id"])["progress"]["total"],
               what="the first backfill's requests to be sent")
    with HealthWatch(api) as watch:
        gateway.maintenance(WINDOW, refusals=True)
        began = time.monotonic()
        down = wait_until(lambda: (r := api.client.get("/health")).status_code == 503 and r,
                          timeout=WINDOW, what="/health to report the maintenance")
        body = down.json()
        assert (body["status"], body["state"]) == ("unavailable", "maintenance")
        assert body["gateway"]["reachable"] is True and body["gateway"]["maintenance_since"]
        assert "maintenance" in body["gateway"]["hint"]
        assert int(down.headers["retry-after"]) > 0
        # new work is accepted and waits; a synchronous look-up is refused with the reason
        during = api.start("/data/backfill", DURING)
        refused = api.client.get("/symbols/QQQ")
        problem = assert_problem(refused, 503, "maintenance")
        assert "daily maintenance" in problem["detail"] and int(refused.headers["retry-after"])
        # longer than the outage grace: the operations are still running, and say why
        time.sleep(max(0.0, began + OUTAGE_GRACE * 2 - time.monotonic()))
        for op in (before, during):
            state = api.operation(op["id"])
            assert state["status"] == "running", state["error"]
            assert "maintenance" in (state["notice"] or "")
        done = [api.wait_operation(op["id"], timeout=60) for op in (before, during)]
    assert time.monotonic() - began >= WINDOW
    for op, body in zip(done, (BEFORE, DURING), strict=True):
        assert op["status"] == "succeeded", op["error"]
        reports = op["result"]["symbols"]
        assert sorted(r["symbol"] for r in reports) == sorted(body["symbols"])
        assert all(r["gaps_left"] == 0 and r["rows"] > 200 for r in reports), reports
        assert op["notice"] is None
    states = {state for _, state, _ in watch.seen}
    assert {"maintenance", "ok"} <= states and "unreachable" not in states
    assert all(code == 503 and retry for code, state, retry in watch.seen
               if state == "maintenance")
    assert api.client.get("/health").json()["state"] == "ok"


def test_an_operation_waits_only_up_to_the_maintenance_grace(make_gateway, make_server):
    gateway = make_gateway(pacing="off")
    api = make_server(gateway, KTRDR_API_MAINTENANCE_GRACE="1", IBFARM_MAX_WORKERS="1",
                      IBFARM_CLIENT_IDS="110-112", IBFARM_PACING="off")
    wait_until(lambda: api.client.get("/symbols/AAPL").status_code == 200,
               what="the farm to connect")  # a worker hears the window open
    gateway.maintenance(WINDOW)
    wait_until(lambda: api.client.get("/health").json()["state"] == "maintenance",
               what="/health to report the maintenance")
    op = api.wait_operation(api.start("/data/load", {
        "symbol": "IBM", "timeframe": "1d", "start": "2024-01-01", "mode": "full"})["id"],
        timeout=WINDOW + 5)
    assert op["status"] == "failed"
    error = op["error"]
    assert (error["status"], error["kind"]) == (503, "maintenance")
    assert "KTRDR_API_MAINTENANCE_GRACE" in error["detail"] and "health" in error["hint"]
    farm = api.client.get("/ib/status").json()["farm"]
    assert farm["pending"] == 0 and farm["in_flight"] == 0
    wait_until(lambda: api.client.get("/health").json()["state"] == "ok", timeout=WINDOW + 5,
               what="the window to end")
    again = api.wait_operation(api.start("/data/load", {
        "symbol": "IBM", "timeframe": "1d", "start": "2024-01-01", "mode": "full"})["id"])
    assert again["status"] == "succeeded", again["error"]
