"""Failures are states, not hangs: killed workers, gateway restarts, dropped connections,
taken client ids, idle workers, a dead gateway and a parent killed with SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from ibfarm import BarRequest
from ibfarm.errors import IbConnectionError, InvalidRequestError, WorkerCrashedError
from tests.conftest import NOW
from tests.farm import fns
from tests.farm.conftest import WAIT, DirectClient, table_from_ib, wait_until

END = NOW - timedelta(days=1)
REPO = Path(__file__).resolve().parents[2]


def requests_for(n: int) -> list[BarRequest]:
    symbols = ("AAPL", "MSFT", "SPY")
    return [BarRequest(symbols[i % 3], "5 mins", "1 W", end=END - timedelta(days=i // 3))
            for i in range(n)]


def assert_equal_to_direct(gateway, requests, tables) -> None:
    gateway.latency = 0.0  # the reference answers need not wait
    direct = DirectClient(gateway.port, client_id=99)
    try:
        for request, table in zip(requests, tables, strict=True):
            assert table.equals(table_from_ib(direct.bars(request)))
    finally:
        direct.close()


def test_idle_workers_exit_and_come_back(sim, make_farm):
    farm = make_farm(sim, idle_timeout=0.3)
    first_pid = farm.submit(fns.worker_pid).result(WAIT)
    wait_until(lambda: not farm.status()["workers"], what="the idle worker to exit")
    wait_until(lambda: sim.stats()["connections_open"] == 0, what="its connection to close")
    assert not psutil.pid_exists(first_pid) or \
        psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    second_pid = farm.submit(fns.worker_pid).result(WAIT)
    assert second_pid != first_pid
    totals = farm.status()["farm"]
    assert totals["spawned"] == 2 and totals["idle_exits"] == 1 and totals["crashed"] == 0


def test_sigkill_a_worker_mid_request_every_request_completes(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=0.4)
    farm = make_farm(gateway, max_workers=2)
    requests = requests_for(8)
    futures = [farm.historical_bars(r) for r in requests]
    busy = wait_until(lambda: [w for w in farm.status()["workers"]
                               if w["in_flight"] and w["state"] == "ready"],
                      what="a busy worker")
    os.kill(busy[0]["pid"], signal.SIGKILL)
    tables = [f.result(WAIT) for f in futures]
    totals = farm.status()["farm"]
    assert totals["crashed"] == 1 and totals["retried"] >= 1 and totals["completed"] == 8
    assert_equal_to_direct(gateway, requests, tables)


def test_sigterm_to_workers_is_a_stop_not_a_crash(make_gateway, make_farm, caplog):
    """SIGTERM (as a process group gets from ``kill -TERM -PGID``, the forkserver included, so
    a worker's exit status may be lost): the worker says why it leaves, its requests go on
    elsewhere without counting as deaths (max_retries=0 would fail them otherwise), and
    nothing is logged as a crash."""
    gateway = make_gateway(pacing="off", latency=0.4)
    farm = make_farm(gateway, max_workers=2, max_retries=0)
    requests = requests_for(8)
    futures = [farm.historical_bars(r) for r in requests]
    busy = wait_until(lambda: [w for w in farm.status()["workers"]
                               if w["in_flight"] and w["state"] == "ready"],
                      what="a busy worker")
    with caplog.at_level(logging.INFO, logger="ibfarm.manager"):
        os.kill(busy[0]["pid"], signal.SIGTERM)
        tables = [f.result(WAIT) for f in futures]
    totals = farm.status()["farm"]
    assert totals["crashed"] == 0 and totals["retried"] >= 1 and totals["completed"] == 8
    assert_equal_to_direct(gateway, requests, tables)
    said = [r for r in caplog.records if "stopped by SIGTERM" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_request_that_kills_every_worker_fails_naming_the_signal(sim, make_farm):
    farm = make_farm(sim, max_retries=1)
    with pytest.raises(WorkerCrashedError, match="killed by SIGKILL.*2 workers died with it"):
        farm.submit(fns.kill_self).result(WAIT)
    assert farm.submit(fns.server_time).result(WAIT) == NOW  # the farm carries on


def test_gateway_restart_requests_complete_after_it_returns(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=0.3)
    farm = make_farm(gateway, max_workers=2)
    farm.submit(fns.server_time).result(WAIT)
    pids = {w["pid"] for w in farm.status()["workers"]}
    requests = requests_for(6)
    futures = [farm.historical_bars(r) for r in requests]
    time.sleep(0.1)
    gateway.restart(down_for=1.0)
    tables = [f.result(WAIT) for f in futures]
    assert_equal_to_direct(gateway, requests, tables)
    status = farm.status()
    assert {w["pid"] for w in status["workers"]} >= pids  # reconnected, not respawned
    assert status["farm"]["crashed"] == 0


def test_dropped_connections_resend_in_flight_requests(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=0.3)
    farm = make_farm(gateway, max_workers=1)
    farm.submit(fns.server_time).result(WAIT)
    requests = requests_for(3)
    futures = [farm.historical_bars(r) for r in requests]
    time.sleep(0.1)
    assert gateway.drop_connections() == 1
    tables = [f.result(WAIT) for f in futures]
    assert_equal_to_direct(gateway, requests, tables)
    assert gateway.stats()["per_client"][1]["connections"] == 2


def test_gateway_that_drops_every_third_request(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", drop_after=2)
    farm = make_farm(gateway, max_workers=1)
    requests = requests_for(6)
    tables = [farm.historical_bars(r).result(WAIT) for r in requests]
    assert all(t.num_rows > 0 for t in tables)
    assert gateway.stats()["per_client"][1]["connections"] >= 3


def test_client_id_taken_by_another_program_moves_to_the_next(sim, make_farm):
    other = DirectClient(sim.port, client_id=1)
    try:
        farm = make_farm(sim, client_ids=range(1, 4), max_workers=1)
        assert farm.submit(fns.client_id).result(WAIT) == 2
        (worker,) = farm.status()["workers"]
        assert worker["client_id"] == 2 and worker["state"] == "ready"
        assert sim.stats()["client_ids"] == [1, 2]
        assert sim.stats()["errors_sent"].get(326) == 1
    finally:
        other.close()


def test_no_gateway_fails_fast_saying_what_to_check(make_farm):
    class Nowhere:
        port = _free_port()

    farm = make_farm(Nowhere, request_timeout=30.0, connect_timeout=0.5)
    with pytest.raises(IbConnectionError) as err:
        farm.submit(fns.server_time).result(WAIT)
    assert err.value.code == 502
    assert f"127.0.0.1:{Nowhere.port}" in err.value.message
    assert "ConnectionRefusedError" in err.value.message and "running" in err.value.message
    assert farm.status()["workers"][0]["state"] == "connecting"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PARENT = textwrap.dedent("""
    import json, sys, time
    from ibfarm import BarRequest, IbFarm
    from tests.farm import fns
    farm = IbFarm(port=int(sys.argv[1]), max_workers=2)
    busy = [farm.submit(fns.sleep_then, 0.3, i) for i in range(2)]
    [f.result(20) for f in busy]
    pending = farm.historical_bars(BarRequest("AAPL", "5 mins", "1 W"))  # stays in flight
    print(json.dumps([w["pid"] for w in farm.status()["workers"]]), flush=True)
    time.sleep(60)
""")


def test_parent_killed_with_sigkill_leaves_no_worker(make_gateway):
    gateway = make_gateway(pacing="off", latency=30)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(gateway.port)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(WAIT)

        def gone() -> bool:
            return all(not psutil.pid_exists(pid) or
                       psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in pids)

        wait_until(gone, timeout=10, what="orphaned workers to exit")
        wait_until(lambda: gateway.stats()["connections_open"] == 0, timeout=10,
                   what="their connections to close")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(WAIT)


def test_a_request_the_gateway_keeps_closing_on_fails_alone(make_gateway, make_farm):
    # The gateway drops the connection whenever BAD is asked for (as real IB does with a
    # message it cannot read). After two closes with others it goes alone, and fails after
    # max_resends closes while alone; the good requests sent with it, in the same instant,
    # are sent again and complete.
    gateway = make_gateway(pacing="off", latency=0.2, poison_symbols=["BAD"])
    farm = make_farm(gateway, max_workers=2, max_resends=3)
    good = [farm.historical_bars(r) for r in requests_for(12)]
    bad = farm.historical_bars(BarRequest("BAD", "5 mins", "1 W", end=END))
    more = [farm.historical_bars(r) for r in requests_for(6)]
    with pytest.raises(InvalidRequestError, match=r"each time .* \(5 times, 3 of them alone\)"):
        bad.result(WAIT)
    tables = [f.result(WAIT) for f in good + more]
    assert all(t.num_rows > 0 for t in tables)
    assert gateway.stats()["poisoned"] == 2 + 3  # twice with others, then max_resends alone
    assert farm.status()["farm"]["failed"] == 1


def test_after_a_restart_the_old_session_holds_the_client_id_for_a_while(make_gateway,
                                                                         make_farm):
    gateway = make_gateway(pacing="off", latency=0.2)
    farm = make_farm(gateway, max_workers=1)
    assert farm.submit(fns.client_id).result(WAIT) == 1
    futures = [farm.historical_bars(r) for r in requests_for(6)]
    time.sleep(0.1)
    gateway.restart(down_for=0.5, hold_client_ids=3.0)  # 326 for client id 1 for 3 s
    assert all(f.result(WAIT).num_rows > 0 for f in futures)
    assert farm.submit(fns.client_id).result(WAIT) != 1  # moved to a free id
    assert gateway.stats()["errors_sent"].get(326, 0) >= 1
