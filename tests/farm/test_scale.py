"""Real work at scale: thousands of queued requests, cancellation that stops the work, faults
that do not concentrate, bad input that never hangs, and nothing left after shutdown."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import pytest

from ibfarm import BarRequest, IbFarm
from ibfarm.errors import InvalidRequestError, RequestTimeoutError
from ibfarm.pacing import PacingPolicy
from tests.cli_helpers import pacer_segment
from tests.farm import fns
from tests.farm.conftest import END, WAIT, hourly, wait_until, worker_processes

#: IB's rules ten times faster: 50 messages per 0.1 s, so thousands of requests take seconds.
FAST_IB = PacingPolicy().scaled(10)
#: The pacer's margin in these tests: the gateway thread shares two busy cores with the
#: workers and may read a burst of messages late and all at once; the margin must outlast that
#: delay (at IB's own 1 s window the default 0.05 s does; at a 0.1 s window it needs more).
MARGIN = 0.1


def test_thousands_queued_with_a_short_timeout_none_times_out_while_waiting(make_gateway,
                                                                             make_farm):
    gateway = make_gateway(pacing=FAST_IB, latency=0.02)
    farm = make_farm(gateway, pacing=FAST_IB, pacing_margin=MARGIN, max_workers=2,
                     request_timeout=1.0)
    requests = hourly(3000)  # 6 s or more of IB's (scaled) message budget: far past 1 s
    futures = [farm.historical_bars(r) for r in requests]
    assert farm.status()["farm"]["pending"] > 1000  # the work waits in the manager ...
    assert max(w["in_flight"] for w in farm.status()["workers"] or [{"in_flight": 0}]) <= 50
    tables = [f.result(60) for f in futures]  # ... and none of it timed out waiting
    assert sum(t.num_rows > 0 for t in tables) > 2000  # (weekends and holidays are empty)
    totals = farm.status()["farm"]
    assert totals["timed_out"] == 0 and totals["failed"] == 0 and totals["completed"] == 3000
    assert gateway.stats()["pacing_violations"] == 0
    assert gateway.stats()["errors_sent"].get(100, 0) == 0  # message rate kept


def test_cancel_drops_queued_and_in_flight_requests_and_frees_the_pacer(make_gateway,
                                                                        make_farm):
    gateway = make_gateway(pacing=FAST_IB, latency=1.0)
    farm = make_farm(gateway, pacing=FAST_IB, pacing_margin=MARGIN, max_workers=2)
    futures = [farm.historical_bars(r) for r in hourly(1500)]
    wait_until(lambda: gateway.stats()["open_requests"] >= 40, what="requests at the gateway")
    done = [f for f in futures if f.done()]
    for future in futures:
        future.cancel()
    status = wait_until(lambda: (s := farm.status())["farm"]["in_flight"] == 0 and s,
                        what="nothing in flight")
    assert status["farm"]["pending"] == 0 and status["pacer"]["open"] == 0
    # The cancels themselves wait for the message rate (a burst of 40 would trip IB's 50/s).
    wait_until(lambda: farm.status()["pacer"]["waiting"] == 0, what="the cancels to go out")
    wait_until(lambda: gateway.stats()["open_requests"] == 0,
               what="the gateway to see every cancel")
    assert gateway.stats()["requests"].get("cancel_historical", 0) >= 40
    assert all(f.cancelled() for f in futures if f not in done)
    # The farm is free at once: a new small load runs now, not after the cancelled one.
    gateway.latency = 0.0
    fresh = [farm.historical_bars(r) for r in hourly(20)]
    assert all(f.result(WAIT).num_rows > 0 for f in fresh)


def test_cancelling_the_awaiting_task_cancels_the_request(make_gateway, make_farm):
    import asyncio

    gateway = make_gateway(pacing="off", latency=5.0)
    farm = make_farm(gateway)

    async def main():
        task = asyncio.ensure_future(farm.historical_bars(hourly(1)[0]))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.new_event_loop().run_until_complete(main())
    wait_until(lambda: gateway.stats()["requests"].get("cancel_historical") == 1,
               what="the cancel at the gateway")
    assert farm.status()["farm"]["in_flight"] == 0 and farm.status()["farm"]["cancelled"] == 1


@pytest.mark.parametrize("symbol", ["AA\x00PL", "AAPL\x1f", "\x00"])
def test_text_the_wire_cannot_carry_fails_at_once_and_never_reaches_the_gateway(
        sim, farm, symbol):
    with pytest.raises(InvalidRequestError, match="control character"):
        farm.historical_bars(BarRequest(symbol, "1 hour", "1 D", end=END)).result(1)
    with pytest.raises(InvalidRequestError, match="control character"):
        farm.head_timestamp(symbol).result(1)
    with pytest.raises(InvalidRequestError, match="control character"):
        farm.contract_details(symbol).result(1)
    assert farm.historical_bars(hourly(1)[0]).result(WAIT).num_rows > 0  # the farm carries on
    assert sim.stats()["requests"].get("historical") == 1
    assert sim.stats()["connections_total"] == 1  # no connection was closed over it


@pytest.mark.parametrize("symbol, text", [
    ("AAPL/../x", "not a forex pair"),
    ("EUR.USDX", "not a forex pair"),
    ("", "empty symbol"),
])
def test_malformed_symbols_get_a_clear_error(farm, symbol, text):
    with pytest.raises(InvalidRequestError, match=text):
        farm.historical_bars(BarRequest(symbol, "1 hour", "1 D", end=END)).result(1)


def test_a_dead_workers_requests_spread_over_the_live_workers(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=1.5)
    farm = make_farm(gateway, max_workers=4)
    for _ in range(8):  # busy workers bring up more, one at a time, up to four
        warm = [farm.submit(fns.sleep_then, 0.2, i) for i in range(8)]
        assert [f.result(WAIT) for f in warm] == list(range(8))
        if len(farm.status()["workers"]) == 4:
            break
    assert len(farm.status()["workers"]) == 4
    futures = [farm.historical_bars(r) for r in hourly(40)]
    wait_until(lambda: gateway.stats()["open_requests"] == 40, what="all 40 at the gateway")
    def sent_by_client() -> dict[int, int]:
        return {cid: c.get("requests", 0) for cid, c in gateway.stats()["per_client"].items()}

    victim = max(farm.status()["workers"], key=lambda w: w["in_flight"])
    before = sent_by_client()
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: sum(sent_by_client().values()) >= sum(before.values()) +
               victim["in_flight"], what="the dead worker's requests to be sent again")
    after_kill = sent_by_client()
    resent_to = {cid for cid, n in after_kill.items() if n > before.get(cid, 0)}
    assert len(resent_to) >= 2, after_kill  # spread, not all on one fresh worker
    # A second death fails none of them (each has died with one worker at most, twice).
    second = max((w for w in farm.status()["workers"] if w["pid"] != victim["pid"]),
                 key=lambda w: w["in_flight"])
    os.kill(second["pid"], signal.SIGKILL)
    assert all(f.exception(WAIT) is None for f in futures)


def test_deaths_of_workers_a_request_merely_waited_for_do_not_count(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=1.0)
    farm = make_farm(gateway, max_workers=1, max_retries=0)  # one death in flight fails
    futures = [farm.historical_bars(r) for r in hourly(10)]
    wait_until(lambda: gateway.stats()["open_requests"] == 10, what="requests at the gateway")
    restart = threading.Thread(target=gateway.restart, kwargs={"down_for": 3.0})
    restart.start()  # the connection drops: the requests go back to the farm's queue
    try:
        for _ in range(2):  # kill whichever worker is trying to reconnect, twice
            worker = wait_until(lambda: [w for w in farm.status()["workers"]
                                         if w["state"] in ("reconnecting", "connecting")],
                                what="a worker waiting for the gateway")[0]
            assert farm.status()["farm"]["pending"] == 10 and worker["in_flight"] == 0
            os.kill(worker["pid"], signal.SIGKILL)
            wait_until(lambda pid=worker["pid"]: all(w["pid"] != pid
                                                     for w in farm.status()["workers"]),
                       what="the death to be noticed")
    finally:
        restart.join()
    assert all(f.result(WAIT).num_rows > 0 for f in futures)
    assert farm.status()["farm"]["crashed"] == 2


def test_soak_with_kills_drops_and_a_restart_answers_everything_with_zero_violations(
        make_gateway, make_farm):
    gateway = make_gateway(pacing=FAST_IB, latency=0.05, drop_rate=0.005, fault_seed=7)
    farm = make_farm(gateway, pacing=FAST_IB, pacing_margin=MARGIN, max_workers=3,
                     max_retries=4,
                     request_timeout=10.0)
    requests = hourly(1200)
    futures = [farm.historical_bars(r) for r in requests]
    for _ in range(2):
        busy = wait_until(lambda: [w for w in farm.status()["workers"] if w["in_flight"]],
                          what="a busy worker")
        os.kill(busy[0]["pid"], signal.SIGKILL)
        time.sleep(0.5)
    gateway.restart(down_for=0.5)
    outcomes = [f.exception(120) or f.result() for f in futures]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failed, failed[:3]
    assert gateway.stats()["pacing_violations"] == 0
    assert gateway.stats()["errors_sent"].get(100, 0) == 0
    # Every answer equals a fault-free run of the same requests.
    gateway.drop_rate = 0.0
    clean = IbFarm(port=gateway.port, pacing=FAST_IB, pacing_margin=MARGIN, max_workers=2,
                   client_ids=range(40, 44))
    try:
        for table, again in zip(outcomes, clean.map_bars(requests, timeout=60), strict=True):
            assert table.equals(again)
    finally:
        clean.shutdown()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_shutdown_leaves_no_descriptor_thread_or_segment_even_while_referenced(sim):
    with IbFarm(port=sim.port) as warm:  # starts the forkserver (once per process: not ours)
        warm.submit(fns.server_time).result(WAIT)
    gc.collect()
    fds, threads = _open_fds(), set(threading.enumerate())
    segment = pacer_segment(sim.port)  # the farm's shared pacer (other tests' are not ours)
    farm = IbFarm(port=sim.port, max_workers=3)
    futures = [farm.historical_bars(r) for r in hourly(30)]
    assert all(f.result(WAIT).num_rows for f in futures)
    assert len(farm.status()["workers"]) >= 2 and segment.exists()
    farm.shutdown(wait=True)
    wait_until(lambda: not worker_processes(), what="workers to exit")
    wait_until(lambda: sim.stats()["connections_open"] == 0,  # the sim's own sockets
               what="the gateway to close its side")
    leaked = _open_fds() - fds
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}
    assert {t for t in threading.enumerate() if t.name.startswith("ibfarm")} <= threads
    assert not segment.exists() and not segment.with_name(segment.name + ".lock").exists()
    assert farm.status()["farm"]["shutdown"]  # the object lives on; its resources do not


def test_no_worker_is_spawned_during_shutdown(make_gateway, make_farm):
    gateway = make_gateway(pacing="off", latency=0.5)
    farm = make_farm(gateway, max_workers=4)
    futures = [farm.historical_bars(r) for r in hourly(8)]
    wait_until(lambda: gateway.stats()["open_requests"] == 8, what="requests at the gateway")
    spawned = farm.status()["farm"]["spawned"]
    farm.shutdown(wait=False, cancel_futures=True)
    for pid in [w["pid"] for w in farm.status()["workers"]]:
        os.kill(pid, signal.SIGKILL)  # its requests have nowhere to go but a new worker
    outcomes = [f.exception(WAIT) for f in futures]
    assert all(o is not None for o in outcomes)
    assert farm.status()["farm"]["spawned"] == spawned
    wait_until(lambda: not worker_processes(), what="no worker")


def test_a_timeout_counts_only_time_at_ib(make_gateway, make_farm):
    # Two requests on one open slot: the second waits for the first (2.5 s at IB), longer
    # than its own timeout of 2 s, and still succeeds; the first times out at IB.
    policy = PacingPolicy(max_open_requests=1)
    gateway = make_gateway(pacing="off", stall_symbols=["TSLA"])
    farm = make_farm(gateway, pacing=policy, request_timeout=2.0)
    stalled = farm.historical_bars(BarRequest("TSLA", "1 hour", "1 D", end=END))
    time.sleep(0.2)
    waiting = farm.historical_bars(BarRequest("AAPL", "1 hour", "1 D", end=END))
    with pytest.raises(RequestTimeoutError):
        stalled.result(WAIT)
    assert waiting.result(WAIT).num_rows > 0


def test_shutdown_can_cancel_what_is_at_ib_too(make_gateway):
    gateway = make_gateway(pacing="off", latency=60.0)
    farm = IbFarm(port=gateway.port, max_workers=2)
    futures = [farm.historical_bars(r) for r in hourly(20)]
    wait_until(lambda: gateway.stats()["open_requests"] == 20, what="requests at the gateway")
    farm.shutdown(wait=True, cancel_running=True)  # does not wait a minute for the answers
    assert all(f.cancelled() for f in futures)
    assert not worker_processes()
    wait_until(lambda: gateway.stats()["open_requests"] == 0, what="the gateway to drop them")


def test_cancelling_twice_or_from_two_places_is_harmless(make_gateway, make_farm):
    import asyncio

    gateway = make_gateway(pacing="off", latency=5.0)
    farm = make_farm(gateway)
    future = farm.historical_bars(hourly(1)[0])
    waiter = asyncio.new_event_loop()
    try:
        wrapped = asyncio.wrap_future(future, loop=waiter)  # cancels the future when cancelled
        waiter.call_soon(wrapped.cancel)
        waiter.run_until_complete(asyncio.sleep(0.05))
    finally:
        waiter.close()
    assert future.cancel() and future.cancel() and future.cancelled()
    assert farm.status()["farm"]["cancelled"] == 1
