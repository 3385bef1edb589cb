"""The HTTP API over HTTP: the real server in a subprocess against a simulated gateway.

One gateway (fixed clock, IB's pacing, TSLA without market-data permission, NVDA's historical
requests never answered) and one server serve the whole module.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.api.conftest import assert_problem, wait_until

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
MAX_WORKERS = 3
CLIENT_IDS = (40, 49)


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway(no_permission_symbols={"TSLA"}, stall_symbols={"NVDA"})


@pytest.fixture(scope="module")
def api(gateway, make_server):
    return make_server(gateway, IBFARM_MAX_WORKERS=str(MAX_WORKERS),
                       IBFARM_CLIENT_IDS=f"{CLIENT_IDS[0]}-{CLIENT_IDS[1]}",
                       IBFARM_REQUEST_TIMEOUT="3", IBFARM_PACING="ib")


@pytest.fixture(scope="module")
def loaded(api):
    """AAPL daily bars for the first five months of 2024, loaded through the API."""
    op = api.start("/data/load", {"symbol": "AAPL", "timeframe": "1d", "start": "2024-01-01",
                                  "end": "2024-06-01", "mode": "full"})
    return api.wait_operation(op["id"])


# --- health, status, symbols -------------------------------------------------------------------

def test_health_reports_a_reachable_gateway(api, gateway):
    response = api.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["state"] == "ok"
    assert body["gateway"]["reachable"] is True
    assert body["gateway"]["port"] == gateway.port


def test_ib_status_shows_workers_client_ids_and_pacing(api, loaded):
    body = api.client.get("/ib/status").json()
    assert body["settings"]["client_ids"] == list(CLIENT_IDS)
    assert body["settings"]["max_workers"] == MAX_WORKERS
    assert body["settings"]["pacing"] == "ib"
    assert 1 <= len(body["workers"]) <= MAX_WORKERS
    for worker in body["workers"]:
        assert CLIENT_IDS[0] <= worker["client_id"] <= CLIENT_IDS[1]
        assert worker["pid"] > 0
    assert body["farm"]["completed"] >= 1
    assert body["pacer"]["max_open"] == 50


def test_symbol_metadata(api):
    response = api.client.get("/symbols/MSFT")
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["symbol"], info["instrument_type"], info["sec_type"]) == ("MSFT", "stock", "STK")
    assert info["con_id"] == 272093 and info["primary_exchange"] == "NASDAQ"
    assert info["time_zone"] == "America/New_York"
    assert info["sessions"] and info["liquid_hours"]
    assert info["head_timestamp"].startswith("1986-03-13")
    fx = api.client.get("/symbols/EUR.USD").json()
    assert fx["instrument_type"] == "forex" and fx["currency"] == "USD"


def test_unknown_symbol_is_404_with_ib_code_200(api):
    body = assert_problem(api.client.get("/symbols/NOPE"), 404, "unknown_symbol", 200)
    assert "NOPE" in body["detail"]


# --- bad input, auth-free errors ---------------------------------------------------------------

def test_bad_input_is_422_problem(api):
    body = assert_problem(api.client.get("/data/AAPL/2h"), 422, "invalid_request")
    assert body["errors"][0]["loc"] == ["path", "timeframe"]
    assert_problem(api.client.post("/data/load", json={"symbol": "AAPL", "timeframe": "1h",
                                                       "start": "2024-05-01",
                                                       "end": "2024-04-01"}),
                   422, "invalid_request")
    assert_problem(api.client.post("/data/backfill", json={"symbols": [], "timeframe": "1h"}),
                   422, "invalid_request")
    assert_problem(api.client.get("/symbols/AA$PL"), 422, "invalid_request")
    assert_problem(api.client.get("/data/AAPL/1d", params={"start": "yesterday"}), 422,
                   "invalid_request")


def test_unknown_operation_and_unstored_data_are_404(api):
    assert_problem(api.client.get("/operations/nope"), 404, "not_found")
    assert_problem(api.client.delete("/operations/nope"), 404, "not_found")
    body = assert_problem(api.client.get("/data/GOOGL/1w"), 404, "not_found")
    assert "load" in body["hint"]


def test_unreadable_stored_file_is_500_store_corrupt(api):
    api.data_dir.mkdir(parents=True, exist_ok=True)
    (api.data_dir / "SPX_1w.parquet").write_bytes(b"not parquet")
    body = assert_problem(api.client.get("/data/SPX/1w"), 500, "store_corrupt")
    assert "SPX_1w.parquet" in body["detail"]


# --- loading and reading bars ------------------------------------------------------------------

def test_load_operation_reports_its_result(loaded):
    assert loaded["status"] == "succeeded", loaded
    assert loaded["kind"] == "load" and loaded["error"] is None
    [report] = loaded["result"]["symbols"]
    assert report["symbol"] == "AAPL" and report["status"] == "succeeded"
    assert 100 <= report["rows"] <= 105  # NYSE sessions in Jan-May 2024
    assert report["start"].startswith("2024-01-02")
    assert loaded["progress"]["done"] == loaded["progress"]["total"]


def test_bars_as_json_arrow_and_parquet_agree(api, loaded):
    rows = loaded["result"]["symbols"][0]["rows"]
    response = api.client.get("/data/AAPL/1d")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["count"] == rows == len(body["bars"])
    first = body["bars"][0]
    assert first["timestamp"] == body["start"] and first["timestamp"].endswith("Z")

    arrow = api.client.get("/data/AAPL/1d", headers={"Accept": ARROW})
    assert arrow.status_code == 200 and arrow.headers["content-type"] == ARROW
    table = pa.ipc.open_stream(arrow.content).read_all()
    parquet = api.client.get("/data/AAPL/1d", headers={"Accept": PARQUET})
    assert parquet.status_code == 200 and parquet.headers["content-type"] == PARQUET
    ptable = pq.read_table(io.BytesIO(parquet.content))

    for t in (table, ptable):
        assert t.column_names == ["timestamp", "open", "high", "low", "close", "volume"]
        assert t.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
        assert t.num_rows == rows
        assert t.schema.metadata[b"symbol"] == b"AAPL"
    assert table.equals(ptable.replace_schema_metadata(table.schema.metadata))
    stamp = table.column("timestamp")[0].as_py()
    assert stamp == datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert table.column("close").to_pylist() == [b["close"] for b in body["bars"]]


def test_bars_range_and_content_negotiation(api, loaded):
    window = api.client.get("/data/AAPL/1d", params={"start": "2024-03-01",
                                                      "end": "2024-03-08"}).json()
    assert [b["timestamp"][:10] for b in window["bars"]] == [
        "2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07"]
    preferred = api.client.get("/data/AAPL/1d", headers={
        "Accept": f"application/json;q=0.5, {PARQUET}"})
    assert preferred.headers["content-type"] == PARQUET
    assert api.client.get("/data/AAPL/1d", headers={"Accept": "*/*"}).headers[
        "content-type"] == "application/json"
    assert_problem(api.client.get("/data/AAPL/1d", headers={"Accept": "text/csv"}), 406,
                   "not_acceptable")


def test_local_mode_load_needs_no_fetch(api, loaded):
    op = api.wait_operation(api.start("/data/load", {
        "symbol": "AAPL", "timeframe": "1d", "start": "2024-02-01", "end": "2024-03-01",
        "mode": "local"})["id"])
    assert op["status"] == "succeeded"
    assert op["result"]["symbols"][0]["rows"] == 20 and op["result"]["symbols"][0][
        "requests"] == 0


# --- errors of operations ----------------------------------------------------------------------

def test_no_permission_is_403_in_the_operation(api):
    op = api.wait_operation(api.start("/data/load", {
        "symbol": "TSLA", "timeframe": "1h", "start": "2024-05-01", "end": "2024-06-01",
        "mode": "full"})["id"])
    assert op["status"] == "failed"
    error = op["error"]
    assert (error["status"], error["kind"], error["ib_code"]) == (403, "no_permission", 162)
    assert "subscription" in error["hint"]
    assert error["instance"] == f"/api/v1/operations/{op['id']}"


def test_unanswered_request_is_504_in_the_operation(api):
    op = api.wait_operation(api.start("/data/backfill", {
        "symbols": ["NVDA", "AMZN"], "timeframe": "1d", "start": "2024-04-01",
        "end": "2024-06-01"})["id"])
    assert op["status"] == "failed"
    reports = {r["symbol"]: r for r in op["result"]["symbols"]}
    assert reports["AMZN"]["status"] == "succeeded" and reports["AMZN"]["rows"] > 30
    assert reports["NVDA"]["error"]["status"] == 504
    assert reports["NVDA"]["error"]["kind"] == "timeout"
    assert op["error"]["status"] == 504 and "1 of 2 symbols failed" in op["error"]["detail"]


def test_cancel_a_running_operation(api):
    op = api.start("/data/load", {"symbol": "NVDA", "timeframe": "1h", "start": "2024-05-01",
                                  "end": "2024-06-01", "mode": "full"})
    # running, and its bar request sent (the gateway never answers NVDA's)
    wait_until(lambda: api.operation(op["id"])["progress"]["total"] == 1, what="the fetch")
    time.sleep(0.3)
    response = api.client.delete(f"/operations/{op['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["error"]["kind"] == "cancelled" and body["error"]["status"] == 409
    assert api.operation(op["id"])["status"] == "cancelled"
    # its IB requests were cancelled too: the next operation on NVDA 1h does not wait for
    # the unanswered request's 3 s time-out before it may touch the file
    began = time.monotonic()
    local = api.wait_operation(api.start("/data/load", {
        "symbol": "NVDA", "timeframe": "1h", "mode": "local"})["id"])
    assert time.monotonic() - began < 2.0
    assert local["status"] == "failed" and local["error"]["kind"] == "not_found"
    # a finished operation is returned unchanged
    assert api.client.delete(f"/operations/{op['id']}").json()["status"] == "cancelled"
    listed = api.client.get("/operations").json()["operations"]
    assert op["id"] in [o["id"] for o in listed]


# --- one farm for everything -------------------------------------------------------------------

def test_two_backfills_and_reads_share_one_farm_within_pacing(api, gateway, loaded):
    before = gateway.stats()
    first = api.start("/data/backfill", {"symbols": ["SPY", "IBM", "GOOGL"], "timeframe": "1h",
                                         "start": "2024-01-01", "end": "2024-06-01"})
    second = api.start("/data/backfill", {"symbols": ["AMZN", "GBP.USD", "USD.JPY"],
                                          "timeframe": "4h", "start": "2023-06-01",
                                          "end": "2024-06-01"})
    reads: list[int] = []
    stop = threading.Event()

    def read_while_running() -> None:
        while not stop.is_set():
            reads.append(api.client.get("/data/AAPL/1d", headers={"Accept": ARROW}).status_code)
            reads.append(api.client.get("/ib/status").status_code)

    reader = threading.Thread(target=read_while_running)
    reader.start()
    try:
        done = [api.wait_operation(first["id"]), api.wait_operation(second["id"])]
    finally:
        stop.set()
        reader.join(10)
    for op in done:
        assert op["status"] == "succeeded", op["error"]
        for report in op["result"]["symbols"]:
            assert report["status"] == "succeeded" and report["rows"] > 0, report
            assert report["gaps_left"] == 0
    assert reads and set(reads) == {200}
    after = gateway.stats()
    assert after["pacing_violations"] == before["pacing_violations"] == 0
    assert after["max_open_requests"] <= 50
    client_ids = {int(c) for c in after["per_client"] if int(c) >= 0}
    assert client_ids and len(client_ids) <= MAX_WORKERS
    assert all(CLIENT_IDS[0] <= c <= CLIENT_IDS[1] for c in client_ids)
    spy = api.client.get("/data/SPY/1h", params={"start": "2024-05-31"}).json()
    assert spy["count"] == 7  # 09:30 .. 15:00 hourly bars of one NYSE session
    stamp = datetime.fromisoformat(spy["bars"][0]["timestamp"].replace("Z", "+00:00"))
    assert stamp == datetime(2024, 5, 31, 13, 30, tzinfo=timezone.utc)


# --- the schema --------------------------------------------------------------------------------

def test_openapi_schema_is_typed(api):
    schema = api.client.get(api.client.base_url.copy_with(path="/openapi.json")).json()
    paths = schema["paths"]
    expected = {
        ("/api/v1/data/{symbol}/{timeframe}", "get"): "BarsResponse",
        ("/api/v1/data/load", "post"): "Operation",
        ("/api/v1/data/backfill", "post"): "Operation",
        ("/api/v1/operations/{operation_id}", "get"): "Operation",
        ("/api/v1/operations/{operation_id}", "delete"): "Operation",
        ("/api/v1/operations", "get"): "OperationList",
        ("/api/v1/symbols/{symbol}", "get"): "SymbolInfo",
        ("/api/v1/ib/status", "get"): "IbStatus",
        ("/api/v1/health", "get"): "Health",
    }
    for (path, method), model in expected.items():
        operation = paths[path][method]
        responses = operation["responses"]
        ok = responses.get("200") or responses["202"]
        assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert responses["422"]["content"]["application/problem+json"]
    assert paths["/api/v1/data/load"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/LoadRequest")
    assert paths["/api/v1/data/backfill"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"].endswith("/BackfillRequest")
    bars = paths["/api/v1/data/{symbol}/{timeframe}"]["get"]["responses"]["200"]["content"]
    assert {ARROW, PARQUET} <= set(bars)
    components = schema["components"]["schemas"]
    for name in ("Problem", "Operation", "LoadRequest", "BackfillRequest", "SymbolInfo",
                 "IbStatus", "Health", "BarsResponse", "SymbolReport", "WorkerStatus"):
        assert components[name]["properties"], name
    assert components["Problem"]["required"] == ["type", "title", "status", "detail", "kind"]
