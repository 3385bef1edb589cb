"""The farm's core checks against a real IB Gateway or TWS (paper account recommended).

Skipped unless ``IB_HOST`` and ``IB_PORT`` are set. Uses client ids from
``IBFARM_CLIENT_IDS`` (default 90-99) so it does not collide with other programs, and asks
for a little data only (IB's pacing rules apply to a real gateway).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta, timezone

import pytest

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not (os.environ.get("IB_HOST") and os.environ.get("IB_PORT")),
                       reason="needs a real IB Gateway: set IB_HOST and IB_PORT"),
]

from ibfarm import BAR_SCHEMA, BarRequest, FarmConfig, IbFarm  # noqa: E402
from ibfarm.errors import ContractNotFoundError, InvalidRequestError  # noqa: E402
from tests.farm import fns  # noqa: E402
from tests.farm.conftest import DirectClient, table_from_ib, wait_until, worker_processes  # noqa: E402,E501

WAIT = 90.0
# A recent weekday well inside IB's history, whole days so the answer does not move.
END = (datetime.now(timezone.utc) - timedelta(days=7)).replace(hour=21, minute=0, second=0,
                                                               microsecond=0)


@pytest.fixture(scope="module")
def config() -> FarmConfig:
    env = dict(os.environ)
    env.setdefault("IBFARM_CLIENT_IDS", "90-99")
    return FarmConfig.from_env(env, request_timeout=60.0, max_workers=2)


@pytest.fixture
def farm(config):
    farm = IbFarm(config)
    yield farm
    farm.shutdown(wait=True, cancel_futures=True)
    wait_until(lambda: not worker_processes(), timeout=15, what="workers to exit")


@pytest.fixture
def direct(config):
    client = DirectClient(config.port, client_id=config.client_ids[-1], host=config.host)
    yield client
    client.close()


@pytest.mark.parametrize("bar_size, duration", [("1 hour", "2 D"), ("1 day", "1 M")])
def test_bars_equal_direct_ib_insync(farm, direct, bar_size, duration):
    request = BarRequest("AAPL", bar_size, duration, end=END)
    table = farm.historical_bars(request).result(WAIT)
    assert table.schema.equals(BAR_SCHEMA) and table.num_rows > 0
    assert table.equals(table_from_ib(direct.bars(request)))


def test_one_connection_serves_many_requests(farm):
    pids = {farm.submit(fns.worker_pid).result(WAIT) for _ in range(10)}
    assert len(pids) == 1
    assert farm.status()["farm"]["spawned"] == 1


def test_typed_errors(farm):
    with pytest.raises(ContractNotFoundError):
        farm.historical_bars(BarRequest("NOSUCHSYMBOLX", "1 day", "1 M", end=END)).result(WAIT)
    with pytest.raises(InvalidRequestError):
        farm.historical_bars(BarRequest("AAPL", "7 mins", "1 D")).result(WAIT)


def test_sigkill_worker_mid_request_still_completes(farm):
    futures = [farm.historical_bars(BarRequest(s, "1 hour", "5 D", end=END))
               for s in ("AAPL", "MSFT", "IBM")]
    busy = wait_until(lambda: [w for w in farm.status()["workers"] if w["in_flight"]],
                      timeout=WAIT, what="a busy worker")
    os.kill(busy[0]["pid"], signal.SIGKILL)
    assert all(f.result(WAIT).num_rows > 0 for f in futures)


def test_idle_timeout_and_return(config):
    farm = IbFarm(config.replace(idle_timeout=1.0))
    try:
        first = farm.submit(fns.worker_pid).result(WAIT)
        wait_until(lambda: not farm.status()["workers"], timeout=15, what="idle exit")
        assert farm.submit(fns.worker_pid).result(WAIT) != first
    finally:
        farm.shutdown()
