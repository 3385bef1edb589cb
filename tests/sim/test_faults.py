"""Each fault knob of the simulated gateway, seen from a real client."""

from __future__ import annotations

import time

import pytest

from ibfarm.backend import IB, RequestError, Stock
from ibfarm.sim import SimGateway
from tests.conftest import NOW
from tests.sim.rawclient import RawClient
from tests.sim.test_rules import answer, bar_request

AAPL = Stock("AAPL", "SMART", "USD")


def connect(gw: SimGateway, client_id: int = 1) -> IB:
    ib = IB()
    ib.RaiseRequestErrors = True
    ib.connect("127.0.0.1", gw.port, clientId=client_id, timeout=10)
    return ib


def test_latency_base_and_per_bar():
    with SimGateway(port=0, now=lambda: NOW, pacing="off", latency=0.2,
                    latency_per_bar=0.001) as gw:
        ib = connect(gw)
        started = time.monotonic()
        bars = ib.reqHistoricalData(AAPL, NOW, "1 D", "1 min", "TRADES", True, 2)
        elapsed = time.monotonic() - started
        ib.disconnect()
    assert len(bars) == 390
    assert elapsed >= 0.2 + 0.39


def test_stalled_symbol_is_never_answered():
    with SimGateway(port=0, now=lambda: NOW, pacing="off", stall_symbols=["MSFT"]) as gw:
        ib = connect(gw)
        bars = ib.reqHistoricalData(Stock("MSFT", "SMART", "USD"), NOW, "1 D", "1 hour",
                                    "TRADES", True, 2, timeout=0.5)
        assert len(bars) == 0  # ib_insync gave up and cancelled
        assert len(ib.reqHistoricalData(AAPL, NOW, "1 D", "1 hour", "TRADES", True, 2)) == 7
        ib.disconnect()
        assert gw.stats()["requests"]["cancel_historical"] == 1


def test_drop_after_n_requests():
    with SimGateway(port=0, now=lambda: NOW, pacing="off", drop_after=2) as gw:
        c = RawClient(gw.port)
        for i in (1, 2):
            c.send(*bar_request(i, bar="1 hour", duration="1 D"))
            assert answer(c, i)[0] == "bars"
        c.send(*bar_request(3, bar="1 hour", duration="1 D"))
        assert c.read() is None  # dropped
        assert gw.stats()["dropped"] == 1


def test_random_drops_follow_the_seed():
    def run() -> list[bool]:
        outcome = []
        with SimGateway(port=0, now=lambda: NOW, pacing="off", drop_rate=0.5,
                        fault_seed=42) as gw:
            for i in range(6):
                c = RawClient(gw.port, client_id=i)
                c.send(*bar_request(i, bar="1 hour", duration="1 D"))
                outcome.append(c.read_until("17") is None)
                c.close()
        return outcome

    first = run()
    assert first == run()
    assert any(first) and not all(first)


def test_restart_drops_everyone_and_comes_back():
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        ib = connect(gw)
        port = gw.port
        gw.restart(down_for=0.3)
        with pytest.raises(ConnectionError):
            ib.sleep(0.2)  # ib_insync surfaces the dropped socket here
        assert not ib.isConnected()
        assert gw.port == port
        ib2 = connect(gw, client_id=1)  # the id was freed by the drop
        assert len(ib2.reqHistoricalData(AAPL, NOW, "1 D", "1 hour", "TRADES", True, 2)) == 7
        ib2.disconnect()
        assert gw.stats()["connections_total"] == 2


def test_hmds_outage_sends_2105_then_2106():
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        ib = connect(gw)
        notices = []
        ib.errorEvent += lambda req_id, code, text, contract: notices.append(code)
        gw.hmds_outage(0.5)
        ib.sleep(0.1)
        assert 2105 in notices
        with pytest.raises(RequestError) as err:
            ib.reqHistoricalData(AAPL, NOW, "1 D", "1 hour", "TRADES", True, 2)
        assert err.value.code == 162 and "broken" in err.value.message
        ib.sleep(0.6)
        assert 2106 in notices
        assert len(ib.reqHistoricalData(AAPL, NOW, "1 D", "1 hour", "TRADES", True, 2)) == 7
        ib.disconnect()


def test_stats_per_client(open_gateway):
    ib = connect(open_gateway, client_id=9)
    ib.reqHistoricalData(AAPL, NOW, "1 D", "1 min", "TRADES", True, 2)
    ib.disconnect()
    stats = open_gateway.stats()
    assert stats["bars_sent"] == 390
    assert stats["per_client"][9]["bars"] == 390
    assert stats["per_client"][9]["connections"] == 1
    assert stats["requests"]["historical"] == 1
    assert stats["cpu_seconds"] > 0


def test_no_permission_symbol():
    with SimGateway(port=0, now=lambda: NOW, pacing="off", no_permission_symbols=["IBM"]) as gw:
        ib = connect(gw)
        with pytest.raises(RequestError) as err:
            ib.reqHistoricalData(Stock("IBM", "SMART", "USD"), NOW, "1 D", "1 hour", "TRADES",
                                 True, 2)
        assert err.value.code == 162
        assert "No market data permissions for NYSE STK" in err.value.message
        ib.disconnect()


@pytest.mark.parametrize("data_lost, answered", [(True, False), (False, True)])
def test_connectivity_outage(data_lost, answered):
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        c = RawClient(gw.port)
        gw.connectivity_outage(0.3, data_lost=data_lost)
        c.send(*bar_request(1, bar="1 hour", duration="1 D"))
        codes = []
        got_bars = False
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(codes) < 2:
            fields = c.read()
            if fields[0] == "4" and fields[2] == "-1" and fields[3] in ("1100", "1101", "1102"):
                codes.append(fields[3])
            elif fields[0] == "17":
                got_bars = True
        assert codes == ["1100", "1101" if data_lost else "1102"]
        c.sock.settimeout(0.3)
        got_bars = got_bars or c.read_until("17") is not None
        assert got_bars is answered
        c.close()


def test_stopped_gateway_starts_again():
    gw = SimGateway(port=0, now=lambda: NOW, pacing="off").start()
    port = gw.port
    gw.stop()
    gw.start()
    try:
        assert gw.port == port
        ib = connect(gw)
        assert len(ib.reqHistoricalData(AAPL, NOW, "1 D", "1 hour", "TRADES", True, 2)) == 7
        ib.disconnect()
    finally:
        gw.stop()


def test_nul_inside_a_symbol_shifts_the_fields(gateway):
    """A NUL byte ends a field, so the rest of the request slides by one: a bar request then
    fails to parse (320, and the gateway closes the connection, as IB does); a contract
    details request still parses and finds nothing (200, the connection stays)."""
    c = RawClient(gateway.port)
    c.send(*bar_request(1, symbol="AA\0PL", bar="1 hour", duration="1 D"))
    seen = c.drain()   # until the gateway closes
    assert [f[3] for f in seen if f[0] == "4" and f[2] == "-1"][-1] == "320"
    c.close()
    c = RawClient(gateway.port, client_id=2)
    c.send(9, 8, 5, 0, "AA\0PL", "STK", "", "0.0", "", "", "SMART", "", "USD", "", "", 0, "",
           "", "")
    fields = c.read_until("4")
    while fields[2] != "5":
        fields = c.read_until("4")
    assert fields[3] == "200"
    c.send(49, 1)
    assert c.read_until("49") is not None   # still connected
    c.close()


def test_gateway_command_takes_every_setting_as_a_flag(tmp_path):
    import dataclasses
    import re
    import subprocess
    import sys

    from ibfarm.sim.settings import SimSettings

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ibfarm.cli", "gateway", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={"COLUMNS": "200", "PATH": ""})

    helped = run("--help").stdout
    for f in dataclasses.fields(SimSettings):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        assert flag in helped, flag
    bad = run("--port", "0", "--latency", "soon")
    assert bad.returncode == 2 and "latency must be seconds or 'ib'" in bad.stderr
    assert "Traceback" not in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "ibfarm.cli", "gateway", "--port", "0",
                             "--latency", "ib", "--latency-scale", "1000", "--now",
                             "2024-06-07T21:00Z", "--poison-symbol", "NVDA"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        c = RawClient(port)
        c.send(*bar_request(1, bar="1 hour", duration="1 D"))
        assert answer(c, 1)[0] == "bars"
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
