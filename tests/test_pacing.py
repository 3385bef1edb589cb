"""SharedPacer: IB's pacing rules shared by real processes through named shared memory."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from multiprocessing import resource_tracker, shared_memory

import pytest

from ibfarm.pacer import RULES, SEGMENT_SIZE, SharedPacer, segment_name
from ibfarm.pacing import PacedRequest, PacingPolicy, PacingRules

KEY = "127.0.0.1:4002"
SPAWN = mp.get_context("spawn")
SHM_DIR = "/dev/shm"

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def req(key: object, contract: object = None, what: str = "TRADES",
        bar: int | None = 5) -> PacedRequest:
    return PacedRequest(key, key if contract is None else contract, what, bar)


def leftovers(namespace: str) -> list[str]:
    return [name for name in os.listdir(SHM_DIR) if name.startswith(namespace)]


@pytest.fixture
def ns() -> Iterator[str]:
    """A unique namespace; nothing of it may remain after the test."""
    namespace = "t" + uuid.uuid4().hex[:10]
    yield namespace
    assert leftovers(namespace) == []


@pytest.fixture
def procs() -> Iterator[list]:
    """Processes started by a test; any still running a few seconds after it are killed."""
    started: list = []
    yield started
    for proc in started:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def start(procs: list, target, *args) -> mp.Process:
    proc = SPAWN.Process(target=target, args=args)
    proc.start()
    procs.append(proc)
    return proc


def rule_waits(pacer: SharedPacer) -> dict[str, int]:
    return {name: n for name, n in pacer.stats()["rule_waits"].items() if n}


def assert_within_rules(policy: PacingPolicy, grants: list[tuple[float, PacedRequest]],
                        jitter: float = 0.0) -> None:
    """No violation at a gateway that stamps each grant up to ``jitter`` seconds late."""
    rng = random.Random(1)
    stamped = sorted((t + rng.uniform(0, jitter), r) for t, r in grants)
    rules = PacingRules(policy)
    broken = [(t, r, rules.check(r, t)) for t, r in stamped]
    assert [b for b in broken if b[2]] == []
    times = [t for t, _ in stamped]
    for i, t in enumerate(times):  # one message per request
        assert sum(1 for u in times[i:] if u - t < policy.message_window) <= policy.message_rate


# ----------------------------------------------------------------------------- child processes


def _requester(ns: str, policy: PacingPolicy, requests: list[PacedRequest], go, out) -> None:
    """Fire ``requests`` concurrently once ``go`` is set; send back (grant time, request)."""

    async def main() -> list:
        pacer = SharedPacer(KEY, policy, namespace=ns)
        grants: list = []

        async def one(r: PacedRequest) -> None:
            async with pacer.historical(r):
                grants.append((time.monotonic(), r))
                await asyncio.sleep(random.uniform(0, 0.005))

        go.wait()
        await asyncio.gather(*(one(r) for r in requests))
        pacer.close()
        return grants

    out.put(asyncio.run(main()))


def _queued(ns: str, policy: PacingPolicy, index: int, out) -> None:
    """Wait for one request and report when it was granted."""

    async def main() -> None:
        pacer = SharedPacer(KEY, policy, namespace=ns)
        async with pacer.historical(req(("fair", index))):
            out.put((index, time.monotonic()))
            await asyncio.sleep(0.02)
        pacer.close()

    asyncio.run(main())


def _hog(ns: str, policy: PacingPolicy, held: int, ready) -> None:
    """Hold ``held`` slots and wait for one more, forever (until killed)."""

    async def main() -> None:
        pacer = SharedPacer(KEY, policy, namespace=ns)
        hold = asyncio.Event()

        async def one(i: int) -> None:
            async with pacer.historical(req(("hog", i))):
                await hold.wait()

        tasks = [asyncio.create_task(one(i)) for i in range(held + 1)]
        while pacer.stats()["waiting"] < 1:
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def _attach_and_hold(ns: str, policy: PacingPolicy, n_requests: int, ready, release) -> None:
    """Attach, make ``n_requests`` requests, then wait for ``release`` (or to be killed)."""

    async def main() -> None:
        pacer = SharedPacer(KEY, policy, namespace=ns)
        for i in range(n_requests):
            async with pacer.historical(req(("stale", i))):
                pass
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        pacer.close()

    asyncio.run(main())


def _farm(ns: str, policy: PacingPolicy, farm: int, go, out) -> None:
    """A separate process tree: a manager with two workers of its own."""
    ctx = mp.get_context("spawn")
    inner = ctx.Queue()
    requests = [[req(("K", i % 5), ("C", i % 2)) for i in range(w, 30, 2)] for w in range(2)]
    workers = [ctx.Process(target=_requester, args=(ns, policy, r, go, inner)) for r in requests]
    for w in workers:
        w.start()
    grants = [g for _ in workers for g in inner.get(timeout=30)]
    for w in workers:
        w.join()
    out.put((farm, grants))


# ----------------------------------------------------------------------------- many processes


def test_processes_share_the_rules_at_full_rate(ns: str, procs: list) -> None:
    policy = PacingPolicy().scaled(300)  # 60 per 2 s; identical 0.05 s; 5 per 6.7 ms
    go, out = SPAWN.Event(), SPAWN.Queue()
    for p in range(3):
        requests = [req((p, i), ("C", i % 20)) for i in range(60)]
        start(procs, _requester, ns, policy, requests, go, out)
    pacer = SharedPacer(KEY, policy, namespace=ns)  # keeps the segment up for stats
    go.set()
    grants = [g for _ in range(3) for g in out.get(timeout=30)]
    stats = pacer.stats()
    pacer.close()
    assert len(grants) == 180 and stats["granted"] == 180 and stats["open"] == 0
    assert_within_rules(policy, grants, jitter=0.04)
    times = sorted(t for t, _ in grants)
    rate = (len(times) - policy.window_max) / (times[-1] - times[0])
    assert rate >= 0.9 * policy.max_rate(), (rate, [round(t - times[0], 3) for t in times])
    assert stats["rule_waits"]["window"] > 0


def test_two_farms_on_one_gateway_stay_within_the_rules_together(ns: str, procs: list) -> None:
    policy = PacingPolicy(window_max=20, window=0.5, identical_window=0.1,
                          same_contract_max=3, same_contract_window=0.1)
    go, out = SPAWN.Event(), SPAWN.Queue()
    for farm in range(2):
        start(procs, _farm, ns, policy, farm, go, out)
    go.set()
    results = dict(out.get(timeout=30) for _ in range(2))
    grants = results[0] + results[1]
    assert len(grants) == 60
    assert_within_rules(policy, grants, jitter=0.04)
    assert len(results[0]) == len(results[1]) == 30


# ----------------------------------------------------------------------------- each rule


async def _wait_for(pacer: SharedPacer, request: PacedRequest) -> float:
    started = time.monotonic()
    async with pacer.historical(request):
        return time.monotonic() - started


@pytest.mark.parametrize("rule, policy, requests", [
    ("identical", PacingPolicy(identical_window=0.15), [req("a"), req("a")]),
    ("identical", PacingPolicy(identical_window=0.15), [req("h", bar=None), req("h", bar=None)]),
    ("same_contract", PacingPolicy(same_contract_max=2, same_contract_window=0.15),
     [req(1, "c"), req(2, "c"), req(3, "c")]),
    ("window", PacingPolicy(window_max=3, window=0.15), [req(1), req(2), req(3), req(4)]),
    ("window", PacingPolicy(window_max=3, window=0.15),
     [req(1, what="BID_ASK"), req(2, what="BID_ASK")]),
    ("min_spacing", PacingPolicy(min_spacing=0.15), [req(1, bar=3600), req(2, bar=86400)]),
])
def test_each_rule_makes_a_wait(ns: str, rule: str, policy: PacingPolicy,
                                requests: list[PacedRequest]) -> None:
    async def main() -> list[float]:
        with SharedPacer(KEY, policy, namespace=ns, margin=0.02) as pacer:
            waits = [await _wait_for(pacer, r) for r in requests]
            assert rule_waits(pacer) == {rule: 1}
            assert pacer.stats()["waits"] == 1
            return waits

    *free, last = asyncio.run(main())
    assert max(free) < 0.05 and 0.1 < last < 1.0


@pytest.mark.parametrize("policy, requests", [
    (PacingPolicy(identical_window=5), [req("a", bar=60), req("a", bar=3600)]),  # big bars
    (PacingPolicy(identical_window=5, head_timestamp_counts=False), [req("h", bar=None)] * 2),
    (PacingPolicy(window_max=3, window=5), [req(1, what="BID_ASK"), req(2)]),  # weight 2 + 1
    (PacingPolicy.preset("off"), [req("a")] * 3),
])
def test_requests_the_rules_allow_do_not_wait(ns: str, policy: PacingPolicy,
                                              requests: list[PacedRequest]) -> None:
    async def main() -> None:
        with SharedPacer(KEY, policy, namespace=ns) as pacer:
            assert max([await _wait_for(pacer, r) for r in requests]) < 0.05
            assert pacer.stats()["waits"] == 0 and pacer.stats()["granted"] == len(requests)

    asyncio.run(main())


def test_open_requests_cap(ns: str) -> None:
    async def main() -> None:
        with SharedPacer(KEY, PacingPolicy(max_open_requests=2), namespace=ns) as pacer:
            async with pacer.historical(req(1)), pacer.historical(req(2)):
                third = asyncio.create_task(_wait_for(pacer, req(3)))
                await asyncio.sleep(0.1)
                assert not third.done()
                stats = pacer.stats()
                assert (stats["open"], stats["waiting"]) == (2, 1)
            assert 0.1 <= await third < 0.2
            assert rule_waits(pacer) == {"open_requests": 1}
            assert pacer.stats()["open"] == 0

    asyncio.run(main())


def test_message_rate(ns: str) -> None:
    async def main() -> None:
        policy = PacingPolicy(message_rate=5, message_window=0.15)
        with SharedPacer(KEY, policy, namespace=ns, margin=0.02) as pacer:
            assert pacer.try_acquire_messages(3) == 0.0
            await pacer.acquire_messages(2)
            assert 0.1 < pacer.try_acquire_messages() <= 0.17  # nothing taken
            started = time.monotonic()
            await pacer.acquire_messages(1)
            assert 0.1 < time.monotonic() - started < 0.5
            assert pacer.stats()["messages"] == 6
            assert rule_waits(pacer) == {"message_rate": 1}
            with pytest.raises(ValueError):
                await pacer.acquire_messages(6)

    asyncio.run(main())


def test_cancelled_waiter_leaves_the_queue(ns: str) -> None:
    async def main() -> None:
        with SharedPacer(KEY, PacingPolicy(identical_window=5), namespace=ns) as pacer:
            await _wait_for(pacer, req("a"))
            waiter = asyncio.create_task(_wait_for(pacer, req("a")))
            await asyncio.sleep(0.05)
            assert pacer.stats()["waiting"] == 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            stats = pacer.stats()
            assert (stats["waiting"], stats["open"]) == (0, 0) and stats["wait_seconds"] > 0

    asyncio.run(main())


# ----------------------------------------------------------------------------- fairness


def test_fair_across_processes_in_arrival_order(ns: str, procs: list) -> None:
    policy = PacingPolicy(max_open_requests=1)
    out = SPAWN.Queue()

    async def main() -> None:
        with SharedPacer(KEY, policy, namespace=ns) as pacer:
            async with pacer.historical(req("blocker")):
                for index in range(4):  # one arrives after the other, each in its own process
                    start(procs, _queued, ns, policy, index, out)
                    while pacer.stats()["waiting"] < index + 1:
                        await asyncio.sleep(0.01)
            granted = [out.get(timeout=10) for _ in range(4)]
            assert [i for i, _ in sorted(granted, key=lambda g: g[1])] == [0, 1, 2, 3]
            assert [i for i, _ in granted] == [0, 1, 2, 3]

    asyncio.run(main())


def test_a_blocked_contract_does_not_hold_back_others(ns: str) -> None:
    async def main() -> None:
        with SharedPacer(KEY, PacingPolicy(identical_window=0.3), namespace=ns) as pacer:
            await _wait_for(pacer, req("a"))
            blocked = asyncio.create_task(_wait_for(pacer, req("a")))
            await asyncio.sleep(0.02)
            assert await _wait_for(pacer, req("b")) < 0.05
            assert await blocked > 0.2

    asyncio.run(main())


def test_a_heavy_request_is_not_overtaken_on_the_window(ns: str) -> None:
    async def main() -> None:
        policy = PacingPolicy(window_max=2, window=0.15)
        with SharedPacer(KEY, policy, namespace=ns, margin=0.02) as pacer:
            order: list[str] = []

            async def one(name: str, what: str) -> None:
                async with pacer.historical(req(name, what=what)):
                    order.append(name)

            await one("first", "TRADES")
            heavy = asyncio.create_task(one("bid_ask", "BID_ASK"))  # 1 + 2 > 2: waits
            await asyncio.sleep(0.02)
            light = asyncio.create_task(one("light", "TRADES"))  # 1 + 1 fits, but queues
            await asyncio.gather(heavy, light)
            assert order == ["first", "bid_ask", "light"]

    asyncio.run(main())


# ----------------------------------------------------------------------------- crashes, lifecycle


def test_killed_process_gives_back_its_slots_and_tickets(ns: str, procs: list) -> None:
    policy = PacingPolicy(max_open_requests=2)
    ready = SPAWN.Event()
    hog = start(procs, _hog, ns, policy, 2, ready)

    async def main() -> None:
        with SharedPacer(KEY, policy, namespace=ns) as pacer:
            assert ready.wait(15)
            stats = pacer.stats()
            assert (stats["open"], stats["waiting"], stats["users"]) == (2, 1, 2)
            waiter = asyncio.create_task(_wait_for(pacer, req("after")))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            os.kill(hog.pid, signal.SIGKILL)
            hog.join(5)
            assert await asyncio.wait_for(waiter, 2) < 2
            stats = pacer.stats()
            assert (stats["open"], stats["waiting"], stats["users"]) == (0, 0, 1)

    asyncio.run(main())


def test_segment_is_removed_when_the_last_user_closes(ns: str, procs: list) -> None:
    ready, release = SPAWN.Event(), SPAWN.Event()
    child = start(procs, _attach_and_hold, ns, PacingPolicy(), 1, ready, release)
    assert ready.wait(15)
    name = segment_name(KEY, ns)
    pacer = SharedPacer(KEY, PacingPolicy(), namespace=ns)
    assert pacer.stats()["users"] == 2
    pacer.close()
    pacer.close()  # idempotent
    assert name in leftovers(ns)  # the child is still attached
    release.set()
    child.join(10)
    assert child.exitcode == 0
    assert leftovers(ns) == []


def test_segment_left_by_a_killed_process_is_recovered(ns: str, procs: list) -> None:
    policy = PacingPolicy(window_max=3, window=0.3)
    ready, release = SPAWN.Event(), SPAWN.Event()
    child = start(procs, _attach_and_hold, ns, policy, 3, ready, release)
    assert ready.wait(15)
    child.kill()
    child.join(5)
    assert leftovers(ns)  # nobody removed it

    async def main() -> None:
        with SharedPacer(KEY, policy, namespace=ns) as pacer:
            stats = pacer.stats()
            assert (stats["users"], stats["granted"]) == (1, 3)
            assert await _wait_for(pacer, req("next")) > 0.1  # the dead process's requests count
            assert rule_waits(pacer) == {"window": 1}

    asyncio.run(main())


@pytest.mark.parametrize("size", [SEGMENT_SIZE, 4096])
def test_garbage_segment_is_reinitialised(ns: str, size: int) -> None:
    shm = shared_memory.SharedMemory(segment_name(KEY, ns), create=True, size=size)
    resource_tracker.unregister(shm._name, "shared_memory")
    shm.buf[:] = random.Random(0).randbytes(size)
    shm.close()

    async def main() -> None:
        with SharedPacer(KEY, PacingPolicy(), namespace=ns) as pacer:
            assert await _wait_for(pacer, req("a")) < 0.05
            stats = pacer.stats()
            assert (stats["users"], stats["open"], stats["waiting"], stats["granted"]) == (1, 0,
                                                                                          0, 1)
            assert set(stats["rule_waits"]) == set(RULES)

    asyncio.run(main())


def test_pacer_pickles_as_a_new_attachment(ns: str) -> None:
    import pickle

    with SharedPacer(KEY, PacingPolicy(), namespace=ns) as pacer:
        with pickle.loads(pickle.dumps(pacer)) as twin:
            assert twin.name == pacer.name and pacer.stats()["users"] == 2
        assert pacer.stats()["users"] == 1


def test_policy_must_fit_the_shared_tables(ns: str) -> None:
    with pytest.raises(ValueError):
        SharedPacer(KEY, PacingPolicy(max_open_requests=100), namespace=ns)
    assert leftovers(ns) == []


def test_segment_names_are_short_and_per_gateway() -> None:
    assert segment_name("a:1") != segment_name("a:2")
    assert len(segment_name("host.example.com:4002", "x" * 40)) <= 30


def test_a_grant_is_dated_by_its_send_for_the_message_rate_too(ns):
    # The gateway counts a message when it reads it; a worker may send a granted request a
    # while after the manager took its grant. Re-dated at the send, the message holds the
    # budget from then on, not from the grant.
    policy = PacingPolicy(message_rate=1, message_window=0.5)
    with SharedPacer(KEY, policy, namespace=ns, margin=0.01, margin_ratio=0.0) as pacer:
        waiter = pacer.waiter(pacer.want_historical(req("a", bar=60)))
        grant = waiter.poll()
        assert grant is not None and grant.message >= 0
        time.sleep(0.3)
        pacer.mark_sent(grant)  # sent 0.3 s after the grant
        time.sleep(0.3)  # 0.6 s after the grant: free if it were dated by the grant
        assert pacer.try_acquire_messages(1) > 0.1  # still held: 0.51 s from the send
        pacer.release(grant)
        waiter.close()
