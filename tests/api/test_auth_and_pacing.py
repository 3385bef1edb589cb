"""Bearer-token protection, and IB pacing violations answered as 429 with Retry-After.

The server here has a token and a farm that does not retry (``tests.api.launch
--no-retry``), talking to a gateway that enforces IB's rules, so a violation reaches the API.
"""

from __future__ import annotations

import httpx
import pytest

from ibfarm import IbFarm
from tests.api.conftest import assert_problem

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway(pacing="ib")


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, token=TOKEN, no_retry=True, IBFARM_MAX_WORKERS="1",
                       IBFARM_CLIENT_IDS="60-62")


@pytest.mark.parametrize("path", ["/health", "/ib/status", "/symbols/AAPL", "/operations",
                                  "/data/AAPL/1d"])
def test_every_endpoint_needs_the_token(api, path):
    response = api.client.get(path, headers={"Authorization": ""})
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "KTRDR_API_TOKEN" in body["hint"]
    wrong = api.client.get(path, headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 401, "unauthorized")


def test_writes_need_the_token_too(api):
    response = api.client.post("/data/load", json={"symbol": "AAPL", "timeframe": "1d"},
                               headers={"Authorization": ""})
    assert_problem(response, 401, "unauthorized")
    response = api.client.delete("/operations/x", headers={"Authorization": ""})
    assert_problem(response, 401, "unauthorized")


def test_the_token_lets_requests_through(api):
    assert api.client.get("/health").status_code == 200


def test_metrics_need_the_token(api):
    response = httpx.get(api.url + "/metrics", timeout=30)
    assert response.status_code == 401 and "KTRDR_API_TOKEN" in response.json()["hint"]
    response = httpx.get(api.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30)
    assert response.status_code == 200 and "ibfarm_up 1.0" in response.text


def test_pacing_violation_is_429_with_retry_after(api, gateway):
    # Another client of the same gateway asks for IBM's head timestamp; the API's identical
    # request within 15 s breaks IB's identical-request rule.
    with IbFarm(port=gateway.port, pacing="off", client_ids=range(90, 91), max_workers=1,
                connect_timeout=5.0, request_timeout=10.0) as other:
        other.head_timestamp("IBM").result(10)
    response = api.client.get("/symbols/IBM")
    body = assert_problem(response, 429, "rate_limited", 162)
    assert int(response.headers["retry-after"]) > 0
    assert "pacing" in body["detail"].lower()
    assert gateway.stats()["pacing_violations"] == 1
