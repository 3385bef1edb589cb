"""The farm against the simulated gateway: real worker processes, real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from ibfarm import BAR_SCHEMA, BarRequest, IbFarm
from ibfarm.errors import (
    ContractNotFoundError,
    ErrorKind,
    InvalidRequestError,
    RequestTimeoutError,
)
from tests.conftest import NOW
from tests.farm import fns
from tests.farm.conftest import WAIT, table_from_ib, wait_until

UTC = timezone.utc
END = NOW - timedelta(days=1)  # Thursday evening, after the close

CASES = [
    BarRequest("AAPL", "1 min", "1 D", end=END),
    BarRequest("MSFT", "5 mins", "1 W", end=END),
    BarRequest("AAPL", "1 hour", "1 M", end=END, use_rth=False),
    BarRequest("SPY", "1 day", "1 Y", end=END),
    BarRequest("EUR.USD", "15 mins", "2 D", end=END, what_to_show="MIDPOINT"),
    BarRequest("AAPL", "30 secs", "3600 S", end=END - timedelta(hours=2)),
]


@pytest.mark.parametrize("request_", CASES, ids=lambda r: f"{r.symbol}-{r.bar_size}")
def test_bars_equal_direct_ib_insync(farm, direct, request_):
    table = farm.historical_bars(request_).result(WAIT)
    expected = table_from_ib(direct.bars(request_))
    assert table.schema.equals(BAR_SCHEMA)
    assert table.num_rows > 0
    assert table.equals(expected)


def test_map_bars_keeps_order_and_one_connection_per_worker(sim, make_farm, direct):
    farm = make_farm(sim, max_workers=2)
    requests = [BarRequest(symbol, "1 min", "1 D", end=END - timedelta(days=d))
                for d in range(4) for symbol in ("AAPL", "MSFT", "SPY")]
    tables = list(farm.map_bars(requests, timeout=WAIT))
    for request, table in zip(requests, tables, strict=True):
        assert table.equals(table_from_ib(direct.bars(request)))
    for _ in range(20):  # many more requests over the same connections
        assert farm.submit(fns.server_time).result(WAIT) == NOW
    status = farm.status()
    workers = status["workers"]
    assert len(workers) == 2 and status["farm"]["spawned"] == 2
    assert sum(w["served"] for w in workers) == len(requests) + 20
    per_client = sim.stats()["per_client"]
    for worker in workers:
        assert per_client[worker["client_id"]]["connections"] == 1
    assert sim.stats()["connections_total"] == 3  # two workers + the direct client


def test_empty_range_is_an_empty_table(farm):
    weekend = datetime(2024, 6, 2, 12, 0, tzinfo=UTC)  # a Sunday: no stock bars
    table = farm.historical_bars(BarRequest("AAPL", "1 min", "3600 S", end=weekend)).result(WAIT)
    assert table.num_rows == 0 and table.schema.equals(BAR_SCHEMA)


def test_unknown_symbol_is_contract_not_found(farm):
    future = farm.historical_bars(BarRequest("NOSUCHSYM", "1 hour", "1 D", end=END))
    with pytest.raises(ContractNotFoundError) as info:
        future.result(WAIT)
    assert info.value.code == 200 and info.value.kind is ErrorKind.CONTRACT_NOT_FOUND
    assert farm.contract_details("NOSUCHSYM").exception(WAIT).code == 200


def test_illegal_bar_size_fails_at_once_and_at_the_gateway(farm):
    with pytest.raises(InvalidRequestError, match="illegal bar size"):
        farm.historical_bars(BarRequest("AAPL", "7 mins", "1 D")).result(1)
    with pytest.raises(InvalidRequestError, match="illegal duration"):
        farm.historical_bars(BarRequest("AAPL", "1 min", "one day")).result(1)
    # The same mistake made inside a submitted function comes back typed from IB (321).
    error = farm.submit(fns.raw_bars, "7 mins").exception(WAIT)
    assert isinstance(error, InvalidRequestError) and error.code == 321


@pytest.mark.parametrize("bar_size, duration, text", [
    ("1 secs", "1 D", "step table"),  # beyond IB's step table for small bars
    ("1 min", "400 D", "at most 365 days"),  # IB: 321 'bH', "must be made in years"
])
def test_what_ib_would_refuse_is_refused_before_sending(sim, farm, bar_size, duration, text):
    error = farm.historical_bars(BarRequest("AAPL", bar_size, duration, end=END)).exception(1)
    assert isinstance(error, InvalidRequestError) and error.code == 0 and text in str(error)
    assert sim.stats()["requests"].get("historical", 0) == 0


def test_stalled_request_times_out_and_is_cancelled_at_the_gateway(sim, make_farm):
    farm = make_farm(sim, request_timeout=1.0)
    assert farm.submit(fns.server_time).result(WAIT) == NOW  # connected
    sim.stall_next(1)
    future = farm.historical_bars(BarRequest("AAPL", "1 hour", "1 D", end=END))
    with pytest.raises(RequestTimeoutError, match="within 1 s"):
        future.result(WAIT)
    wait_until(lambda: sim.stats()["requests"].get("cancel_historical") == 1,
               what="the cancel at the gateway")
    table = farm.historical_bars(BarRequest("AAPL", "1 hour", "1 D", end=END)).result(WAIT)
    assert table.num_rows > 0
    assert sim.stats()["connections_total"] == 1


def test_head_timestamp_and_contract_details(farm, direct):
    from ibfarm.contracts import make_contract

    stamp = farm.head_timestamp("AAPL").result(WAIT)
    expected = direct.call(direct.ib.reqHeadTimeStampAsync(
        make_contract("AAPL"), "TRADES", True, 2))
    assert stamp == expected and stamp.tzinfo is not None
    details = farm.contract_details("EUR.USD").result(WAIT)
    assert len(details) == 1 and details[0].contract.secType == "CASH"


def test_submit_runs_functions_with_the_workers_ib(farm):
    assert farm.submit(fns.server_time).result(WAIT) == NOW
    assert farm.submit(fns.sleep_then, 0.01, {"x": 1}).result(WAIT) == {"x": 1}
    assert farm.submit(fns.client_id).result(WAIT) == 1
    with pytest.raises(ValueError, match="boom"):
        farm.submit(fns.boom).result(WAIT)
    assert farm.submit(lambda ib, x: x + 1, 41).result(WAIT) == 42  # travels by value
    with pytest.raises(TypeError, match="cannot send"):
        farm.submit(fns.client_id, threading.Lock()).result(WAIT)


def test_awaitable_from_asyncio_without_blocking_the_loop(farm):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        requests = [BarRequest(s, "5 mins", "1 W", end=END) for s in ("AAPL", "MSFT", "SPY")]
        tables = await asyncio.gather(*(farm.historical_bars(r) for r in requests))
        value = await farm.submit(fns.sleep_then, 0.2, "done")
        tick_task.cancel()
        return tables, value, ticks

    loop = asyncio.new_event_loop()  # not asyncio.run: leave the thread's loop alone
    try:
        tables, value, ticks = loop.run_until_complete(main())
    finally:
        loop.close()
    assert all(isinstance(t, pa.Table) and t.num_rows > 0 for t in tables)
    assert value == "done" and ticks >= 10


def test_status_reports_workers_and_totals(farm):
    farm.historical_bars(BarRequest("AAPL", "1 hour", "1 D", end=END)).result(WAIT)
    status = farm.status()
    (worker,) = status["workers"]
    assert worker["state"] == "ready" and worker["client_id"] == 1
    assert worker["served"] == 1 and worker["errors"] == 0 and worker["in_flight"] == 0
    assert worker["rss_bytes"] > 10_000_000 and worker["cpu_s"] > 0 and 0 <= worker["idle_s"] < 5
    assert worker["pid"] > 0 and worker["ready_after_s"] < 5
    assert status["farm"]["completed"] == 1 and status["farm"]["workers"] == 1
    assert status["pacer"]["granted"] >= 1


def test_shutdown_leaves_no_worker_and_refuses_work(sim):
    from tests.farm.conftest import worker_processes

    farm = IbFarm(port=sim.port, max_workers=2)
    futures = [farm.historical_bars(BarRequest(s, "1 hour", "1 D", end=END))
               for s in ("AAPL", "MSFT")]
    farm.shutdown(wait=True)
    assert all(f.result(0).num_rows > 0 for f in futures)  # in-flight work finished
    assert not worker_processes()
    with pytest.raises(RuntimeError, match="after shutdown"):
        farm.submit(fns.server_time)
    wait_until(lambda: sim.stats()["connections_open"] == 0, what="connections to close")


def test_context_manager_and_the_executor_contract(sim):
    from tests.farm.conftest import worker_processes

    with IbFarm(port=sim.port, max_workers=2) as farm:
        assert list(farm.map(fns.sleep_then, [0.01, 0.02], ["a", "b"])) == ["a", "b"]
        futures = [farm.submit(fns.sleep_then, d, i) for i, d in enumerate((0.6, 0.0, 0.3))]
        order = [f.result() for f in concurrent.futures.as_completed(futures, timeout=WAIT)]
        assert order == [1, 2, 0]  # as they finish, not as submitted
        slow = farm.submit(fns.sleep_then, 30.0, "late")
        time.sleep(0.2)
        assert slow.cancel() and slow.cancelled()  # cancellable while it runs
        done, _ = concurrent.futures.wait([slow], timeout=1)
        assert slow in done
    with pytest.raises(RuntimeError, match="after shutdown"):
        farm.submit(fns.server_time)
    assert not worker_processes()


def test_farm_paces_small_bars_so_the_gateway_sees_no_violation(make_gateway, make_farm):
    from ibfarm.pacing import PacingPolicy

    policy = PacingPolicy.preset("ib").scaled(20)  # identical: 0.75 s, same contract: 0.1 s
    gateway = make_gateway(pacing=policy)
    farm = make_farm(gateway, pacing=policy, max_workers=2)
    requests = [BarRequest("AAPL", "30 secs", "1800 S", end=END - timedelta(hours=1, minutes=m))
                for m in (0, 0, 30, 60, 90, 120, 150, 180)]  # one identical pair
    tables = [f.result(WAIT) for f in [farm.historical_bars(r) for r in requests]]
    assert all(t.num_rows == 60 for t in tables)
    assert gateway.stats()["pacing_violations"] == 0
    assert farm.status()["pacer"]["waits"] >= 1


def test_submit_takes_a_function_defined_in_the_callers_main_script(sim, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        from ibfarm import IbFarm

        def double_on_worker(ib, x):  # lives in __main__, which workers never import
            return ib.client.clientId, x * 2

        if __name__ == "__main__":
            with IbFarm(port={sim.port}) as farm:
                print(farm.submit(double_on_worker, 21).result(20))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 42)"
