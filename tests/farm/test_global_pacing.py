"""One pacing budget per gateway, shared by every worker of every farm on the host."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ibfarm import worker as worker_mod
from ibfarm.errors import RequestTimeoutError
from ibfarm.pacing import PacingPolicy
from tests.farm import fns
from tests.farm.conftest import WAIT, wait_until
from tests.farm.pacing_farm import small_bar_requests

SCALE = 120  # ten minutes become five seconds; the 15 s identical rule an eighth of a second
MARGIN = 0.25  # the gateway may read a request this late on a loaded two-core machine


def test_a_burst_of_small_bar_requests_breaks_no_rule(make_gateway, make_farm):
    policy = PacingPolicy().scaled(SCALE)
    gateway = make_gateway(pacing=policy)
    farm = make_farm(gateway, pacing=policy, pacing_margin=MARGIN, max_workers=2,
                     request_timeout=60)
    requests = small_bar_requests(180)
    tables = [f.result(120) for f in [farm.historical_bars(r) for r in requests]]
    assert all(t.num_rows == 12 for t in tables)  # every request answered in full
    stats = gateway.stats()
    assert stats["pacing_violations"] == 0, (stats["pacing_rules"], farm.status()["pacer"])
    assert stats["requests"]["historical"] == len(requests)  # nothing re-sent after a refusal
    assert farm.status()["pacer"]["rule_waits"]["window"] > 0  # the ten-minute rule did bite


def test_two_farms_in_two_processes_stay_within_the_limits_together(make_gateway):
    policy = PacingPolicy().scaled(SCALE)
    gateway = make_gateway(pacing=policy)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.farm.pacing_farm", str(gateway.port), str(SCALE),
         str(offset), "60", str(MARGIN)], cwd=root, stdout=subprocess.PIPE, text=True)
        for offset in (0, 1)]
    try:
        outputs = [json.loads(p.communicate(timeout=90)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [o["empty"] for o in outputs] == [0, 0]
    stats = gateway.stats()
    assert stats["requests"]["historical"] == 120
    assert stats["pacing_violations"] == 0
    assert stats["max_open_requests"] <= policy.max_open_requests


def test_slots_held_by_a_sigkilled_worker_come_back(make_gateway, make_farm):
    policy = PacingPolicy(max_open_requests=2)
    gateway = make_gateway(pacing=policy, latency=1.0)
    farm = make_farm(gateway, pacing=policy, max_workers=2)
    requests = small_bar_requests(6)
    # Ends at the session's close: "1 D" is then the whole trading day, 7 hourly bars.
    futures = [farm.historical_bars(r.__class__(r.symbol, "1 hour", "1 D",
                                                end=r.end.replace(hour=20, minute=0)))
               for r in requests]
    wait_until(lambda: farm.status()["pacer"]["open"] == 2, what="both slots in use")
    victim = farm.submit(fns.worker_pid).result(WAIT)
    os.kill(victim, signal.SIGKILL)
    tables = [f.result(WAIT) for f in futures]
    assert all(t.num_rows == 7 for t in tables)
    assert wait_until(lambda: farm.status()["pacer"]["open"] == 0, what="slots released")
    stats = gateway.stats()
    assert stats["max_open_requests"] <= 2 and 322 not in stats["errors_sent"]
    started = time.monotonic()
    assert farm.historical_bars(requests[0]).result(WAIT).num_rows == 12  # nothing stalls
    assert time.monotonic() - started < WAIT


def test_waiting_for_the_pacer_is_not_a_timeout(make_gateway, make_farm):
    policy = dataclasses.replace(PacingPolicy(), identical_window=4.0)  # > timeout + grace
    gateway = make_gateway(pacing=policy)
    farm = make_farm(gateway, pacing=policy, request_timeout=1.0)
    request = small_bar_requests(1)[0]
    first, second = farm.historical_bars(request), farm.historical_bars(request)
    assert first.result(WAIT).equals(second.result(WAIT))  # the second waited 4 s, then ran
    assert farm.status()["pacer"]["rule_waits"]["identical"] == 1
    assert gateway.stats()["pacing_violations"] == 0


def test_connect_handshake_and_cancels_count_against_the_message_rate(make_gateway, make_farm):
    gateway = make_gateway(pacing="ib", stall_symbols=["TSLA"])
    farm = make_farm(gateway, max_workers=1, request_timeout=0.5)
    farm.contract_details("AAPL").result(WAIT)
    assert farm.status()["pacer"]["messages"] == worker_mod.CONNECT_MESSAGES + 1
    with pytest.raises(RequestTimeoutError):
        farm.historical_bars(small_bar_requests(1)[0].__class__("TSLA", "1 hour", "1 D")
                             ).result(WAIT)
    wait_until(lambda: gateway.stats()["requests"].get("cancel_historical") == 1,
               what="the cancel at the gateway")
    assert farm.status()["pacer"]["messages"] == worker_mod.CONNECT_MESSAGES + 3
