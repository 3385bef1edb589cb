"""IB's nightly maintenance as the farm sees it: 1100 (IB away from the gateway), requests
unanswered meanwhile, then 1102 (data kept) or 1101 (data lost). Work is held across the
window, not timed out, and finished afterwards."""

from __future__ import annotations

import pytest

from tests.farm.conftest import WAIT, hourly, wait_until


@pytest.mark.parametrize("data_lost", [False, True], ids=["1102", "1101"])
def test_work_waits_through_a_maintenance_window_longer_than_its_timeout(
        make_gateway, make_farm, data_lost):
    gateway = make_gateway(pacing="off", latency=0.3)
    farm = make_farm(gateway, max_workers=2, request_timeout=1.5)
    assert farm.historical_bars(hourly(1)[0]).result(WAIT).num_rows  # connected
    futures = [farm.historical_bars(r) for r in hourly(24)]
    wait_until(lambda: gateway.stats()["open_requests"] > 0, what="requests at the gateway")
    gateway.connectivity_outage(3.0, data_lost=data_lost)  # twice the request timeout
    wait_until(lambda: farm.status()["gateways"][0]["state"] == "maintenance",
               what="the farm to see IB go away")
    late = [farm.historical_bars(r) for r in hourly(8)]  # submitted during the window
    assert all(f.exception(WAIT) is None for f in futures + late)
    totals = farm.status()["farm"]
    assert totals["timed_out"] == 0 and totals["failed"] == 0
    assert farm.status()["gateways"][0]["state"] == "up"
    if data_lost:  # the requests in flight at 1101 were sent again
        assert totals["requeued"] > 0
