"""``GET /metrics``: Prometheus' text format that its parser reads, with the farm's request
counters and the API's operation counters moving as the API does work."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import WAIT


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway(pacing="off")


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, IBFARM_MAX_WORKERS="2", IBFARM_CLIENT_IDS="70-72")


def scrape(server, **headers: str) -> dict:
    """The families of one scrape, by name (a counter's family name drops ``_total``)."""
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=WAIT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def total(families: dict, family: str, sample: str, **labels: str) -> float:
    """The sum of ``sample`` values of ``family`` whose labels include ``labels``."""
    return sum(s.value for s in families[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_move_with_requests(api, gateway):
    before = scrape(api)
    assert total(before, "ibfarm_up", "ibfarm_up") == 1
    address = f"127.0.0.1:{gateway.port}"
    ok_before = total(before, "ibfarm_requests", "ibfarm_requests_total", gateway=address,
                      outcome="ok")
    served_before = gateway.stats()["requests"].get("historical", 0)

    op = api.wait_operation(api.start("/data/load", {
        "symbol": "MSFT", "timeframe": "1d", "mode": "full", "start": "2023-01-01T00:00:00Z",
        "end": "2024-01-01T00:00:00Z"})["id"])
    assert op["status"] == "succeeded", op["error"]
    report = op["result"]["symbols"][0]
    served = gateway.stats()["requests"].get("historical", 0) - served_before
    assert served >= report["requests"] > 0

    after = scrape(api)
    ok_after = total(after, "ibfarm_requests", "ibfarm_requests_total", gateway=address,
                     outcome="ok")
    assert ok_after - ok_before >= served  # bars, plus the contract and head-timestamp look-ups
    assert total(after, "ibfarm_requests_submitted", "ibfarm_requests_submitted_total") \
        >= ok_after
    finished = {"kind": "load", "state": "succeeded"}
    assert total(after, "ktrdr_operations_finished", "ktrdr_operations_finished_total",
                 **finished) == total(before, "ktrdr_operations_finished",
                                      "ktrdr_operations_finished_total", **finished) + 1
    assert total(after, "ktrdr_operation_duration_seconds",
                 "ktrdr_operation_duration_seconds_count", **finished) >= 1
    assert total(after, "ktrdr_operations", "ktrdr_operations", **finished) >= 1
    stored = total(after, "ktrdr_bars_stored", "ktrdr_bars_stored_total", timeframe="1d") - \
        total(before, "ktrdr_bars_stored", "ktrdr_bars_stored_total", timeframe="1d")
    assert stored == report["fetched_rows"] > 200
    assert total(after, "ibfarm_workers", "ibfarm_workers", gateway=address) >= 1
    assert total(after, "ibfarm_worker_rss_bytes", "ibfarm_worker_rss_bytes") > 10e6
    rules = {s.labels["rule"] for s in after["ibfarm_pacer_waits"].samples}
    assert {"open_requests", "identical", "same_contract"} <= rules
    assert total(after, "process_resident_memory_bytes", "process_resident_memory_bytes") > 0
