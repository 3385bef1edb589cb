"""Several gateways behind one farm: each with its own pacer, client ids and workers; work
goes to whichever can send it now; a gateway that goes down is worked around and used again
when it returns."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from ibfarm import BarRequest, FarmConfig, IbFarm
from ibfarm.pacing import PacingPolicy
from tests.conftest import NOW
from tests.farm.conftest import WAIT, DirectClient, table_from_ib, wait_until

END = NOW - timedelta(days=1)
SYMBOLS = ("AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL")


def weekdays(n: int) -> list:
    """The ends of the ``n`` weekdays up to END (the last holiday before it is 2024-05-27)."""
    days, day = [], END
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days


def hourly(n: int) -> list[BarRequest]:
    ends = weekdays(n // len(SYMBOLS) + 1)
    assert ends[-1] > END - timedelta(days=10), "more requests than holiday-free days"
    return [BarRequest(SYMBOLS[i % len(SYMBOLS)], "1 hour", "1 D", end=ends[i // len(SYMBOLS)])
            for i in range(n)]


def by_gateway(farm: IbFarm) -> dict[str, dict]:
    return {g["gateway"]: g for g in farm.status()["gateways"]}


def test_config_names_several_gateways_with_their_own_client_ids():
    config = FarmConfig.from_env({"IB_GATEWAYS": "127.0.0.1:4002, 10.0.0.5:4002/40-49",
                                  "IB_HOST": "ignored", "IBFARM_CLIENT_IDS": "10-19"})
    a, b = config.addresses
    assert (a.key, a.client_ids) == ("127.0.0.1:4002", range(10, 20))
    assert (b.key, b.client_ids) == ("10.0.0.5:4002", range(40, 50))
    assert FarmConfig(port=4001).addresses[0].key == "127.0.0.1:4001"  # the one-gateway form
    for bad, text in (("127.0.0.1", "host:port"), ("h:0", "port number"), ("h:x", "port"),
                      ("h:1,h:1", "listed twice")):
        with pytest.raises(ValueError, match=text):
            FarmConfig(gateways=bad)
    with pytest.raises(ValueError, match="IB_PORT='abc'.*port number"):
        FarmConfig.from_env({"IB_PORT": "abc"})


def test_work_is_shared_by_two_gateways_and_equals_each_ones_answers(make_gateway, make_farm):
    # Five requests open at once per gateway: what one cannot send now, the other can.
    policy = PacingPolicy(max_open_requests=5)
    a, b = make_gateway(pacing=policy, latency=0.2), make_gateway(pacing=policy, latency=0.2)
    farm = IbFarm(gateways=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], max_workers=1,
                  pacing=policy)
    try:
        requests = hourly(40)
        tables = list(farm.map_bars(requests, timeout=WAIT))
        status = by_gateway(farm)
        assert status[f"127.0.0.1:{a.port}"]["served"] > 0
        assert status[f"127.0.0.1:{b.port}"]["served"] > 0
        assert sum(g["served"] for g in status.values()) == 40
        assert {w["gateway"] for w in farm.status()["workers"]} == set(status)
    finally:
        farm.shutdown()
    direct = DirectClient(a.port, client_id=90)
    try:
        for request, table in zip(requests, tables, strict=True):
            assert table.equals(table_from_ib(direct.bars(request)))
    finally:
        direct.close()


def test_a_gateway_that_goes_down_is_worked_around_and_used_again(make_gateway):
    a, b = make_gateway(pacing="off", latency=0.1), make_gateway(pacing="off", latency=0.1)
    farm = IbFarm(gateways=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], max_workers=2,
                  pacing="off", request_timeout=15.0)
    key_a = f"127.0.0.1:{a.port}"
    try:
        futures = [farm.historical_bars(r) for r in hourly(40) * 10]
        wait_until(lambda: by_gateway(farm)[key_a]["served"] >= 20, what="a to serve")
        down = threading.Thread(target=a.restart, kwargs={"down_for": 2.0})
        down.start()
        wait_until(lambda: by_gateway(farm)[key_a]["state"] != "up", what="a to be down")
        served_a = by_gateway(farm)[key_a]["served"]
        time.sleep(1.0)
        assert by_gateway(farm)[key_a]["served"] == served_a  # nothing went to a meanwhile
        down.join()
        outcomes = [f.exception(WAIT) for f in futures]
        assert outcomes == [None] * 400
        assert all(f.result().num_rows > 0 for f in futures)
        # a is back in use for new work
        more = [farm.historical_bars(r) for r in hourly(40)]
        assert all(f.exception(WAIT) is None for f in more)
        assert by_gateway(farm)[key_a]["state"] == "up"
        assert by_gateway(farm)[key_a]["served"] > served_a
    finally:
        farm.shutdown()


def test_small_bars_use_both_gateways_budgets_without_a_violation(make_gateway):
    # Each gateway allows 60 small-bar requests per 30 s window: 120 requests need two windows
    # on one gateway, one on two. (Scaled by 20, the same-contract window is 0.1 s: enough
    # to stay clear of a loaded machine's scheduling delays.)
    policy = PacingPolicy().scaled(20)
    a, b = make_gateway(pacing=policy), make_gateway(pacing=policy)
    farm = IbFarm(gateways=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], max_workers=2,
                  pacing=policy)
    try:
        n = len(SYMBOLS)
        requests = [BarRequest(SYMBOLS[i % n], "30 secs", "1800 S",
                               end=END - timedelta(minutes=30 * (i // n))) for i in range(120)]
        assert all(f.exception(60) is None for f in [farm.historical_bars(r) for r in requests])
        served = [g["served"] for g in farm.status()["gateways"]]
        violations = (a.stats()["pacing_rules"], b.stats()["pacing_rules"])
        assert a.stats()["pacing_violations"] == b.stats()["pacing_violations"] == 0, violations
        assert sum(served) == 120 and min(served) >= 40
    finally:
        farm.shutdown()
