"""``ktrdr api --sim``: the server starts its own simulated gateway and works without IB."""

from __future__ import annotations

import signal

from tests.api.conftest import ApiServer


def test_api_with_the_embedded_simulator(tmp_path):
    server = ApiServer(1, tmp_path / "data", tmp_path / "server.log",
                       command=("-m", "ktrdr.cli", "api", "--sim"))
    try:
        server.wait_ready()
        health = server.client.get("/health").json()
        assert health["status"] == "ok" and health["gateway"]["simulated"] is True
        assert server.client.get("/symbols/AAPL").json()["con_id"] == 265598
        op = server.wait_operation(server.start("/data/load", {
            "symbol": "AAPL", "timeframe": "1d", "mode": "tail"})["id"])
        assert op["status"] == "succeeded", op["error"]
        bars = server.client.get("/data/AAPL/1d").json()
        assert bars["count"] == op["result"]["symbols"][0]["rows"] > 10
    finally:
        code = server.stop()
    # uvicorn shuts down cleanly, then re-raises the signal it got
    assert code in (0, -signal.SIGTERM)
    assert "API stopped" in server.log() and "Traceback" not in server.log()
