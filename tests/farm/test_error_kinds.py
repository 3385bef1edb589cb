"""Each error kind reaches the caller as its exception type, with IB's code and the text the
simulated gateway sent over the wire; transient kinds are retried, fatal ones never."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ibfarm import BarRequest
from ibfarm.config import RetryPolicy
from ibfarm.errors import (
    ClientIdInUseError,
    ContractNotFoundError,
    ErrorKind,
    IbConnectionError,
    InvalidRequestError,
    NoPermissionError,
    PacingViolationError,
    RequestTimeoutError,
    TooManyRequestsError,
)
from ibfarm.pacing import PacingPolicy
from tests.conftest import NOW
from tests.farm import fns
from tests.farm.conftest import WAIT, DirectClient

END = NOW - timedelta(days=1)
NO_RETRY = RetryPolicy(max_attempts=1)
FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=0.2, pacing_delay=0.3,
                         max_pacing_delay=0.6)


def hourly(symbol: str = "AAPL", days: int = 1) -> BarRequest:
    return BarRequest(symbol, "1 hour", f"{days} D", end=END)


def test_contract_not_found(sim, make_farm):
    farm = make_farm(sim)
    with pytest.raises(ContractNotFoundError) as err:
        farm.historical_bars(hourly("NOPE")).result(WAIT)
    assert err.value.code == 200 and err.value.kind is ErrorKind.CONTRACT_NOT_FOUND
    assert err.value.message == "No security definition has been found for the request"
    assert farm.status()["farm"]["ib_retries"] == {}  # fatal: never retried


def test_invalid_request_from_the_gateway(sim, make_farm):
    farm = make_farm(sim)
    # The farm checks bar sizes itself; a function sent to a worker shows the gateway's 321.
    with pytest.raises(InvalidRequestError) as err:
        farm.submit(fns.raw_bars, "9 mins").result(WAIT)
    assert err.value.code == 321 and "bar size setting is invalid" in err.value.message


def test_no_permission(make_gateway, make_farm):
    gw = make_gateway(pacing="off", no_permission_symbols=["IBM"])
    farm = make_farm(gw, retry=FAST_RETRY)
    with pytest.raises(NoPermissionError) as err:
        farm.historical_bars(hourly("IBM")).result(WAIT)
    assert err.value.code == 162
    assert err.value.message.endswith("No market data permissions for NYSE STK")
    assert "subscription" in err.value.hint
    assert farm.status()["farm"]["ib_retries"] == {}


def test_pacing_violation_is_retried_then_reported(make_gateway, make_farm):
    # The gateway enforces IB's identical-request rule; this farm does not pace at all.
    gw = make_gateway(pacing=dataclasses.replace(PacingPolicy(), identical_window=30))
    farm = make_farm(gw, pacing="off", retry=NO_RETRY)
    request = BarRequest("AAPL", "5 secs", "60 S", end=END - timedelta(hours=3))
    assert farm.historical_bars(request).result(WAIT).num_rows == 12
    with pytest.raises(PacingViolationError) as err:
        farm.historical_bars(request).result(WAIT)
    assert err.value.code == 162 and err.value.message.endswith(":pacing violation")
    assert gw.stats()["pacing_violations"] == 1


def test_pacing_violation_backs_off_and_succeeds(make_gateway, make_farm):
    gw = make_gateway(pacing=dataclasses.replace(PacingPolicy(), identical_window=0.5))
    farm = make_farm(gw, pacing="off", retry=FAST_RETRY)
    request = BarRequest("AAPL", "5 secs", "60 S", end=END - timedelta(hours=3))
    first = farm.historical_bars(request).result(WAIT)
    second = farm.historical_bars(request).result(WAIT)
    assert second.equals(first)
    assert gw.stats()["pacing_violations"] >= 1
    assert farm.status()["farm"]["ib_retries"]["pacing"] == gw.stats()["pacing_violations"]


def test_too_many_open_requests(make_gateway, make_farm):
    gw = make_gateway(pacing=dataclasses.replace(PacingPolicy(), max_open_requests=1),
                      latency=0.3)
    farm = make_farm(gw, pacing="off", max_workers=1, retry=NO_RETRY)
    futures = [farm.historical_bars(hourly(s)) for s in ("AAPL", "MSFT")]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(WAIT).num_rows)
        except TooManyRequestsError as exc:
            outcomes.append(exc)
    errors = [o for o in outcomes if isinstance(o, TooManyRequestsError)]
    assert len(errors) == 1 and errors[0].code == 322
    assert "Only 1 simultaneous API historical data requests allowed" in errors[0].message


def test_too_many_open_requests_retried(make_gateway, make_farm):
    gw = make_gateway(pacing=dataclasses.replace(PacingPolicy(), max_open_requests=1),
                      latency=0.2)
    farm = make_farm(gw, pacing="off", max_workers=1, retry=FAST_RETRY)
    tables = [f.result(WAIT) for f in [farm.historical_bars(hourly(s)) for s in ("AAPL", "MSFT")]]
    assert all(t.num_rows == 7 for t in tables)
    assert farm.status()["farm"]["ib_retries"]["too_many_requests"] >= 1


def test_historical_farm_outage_is_a_connection_error_then_recovers(make_gateway, make_farm):
    gw = make_gateway(pacing="off")
    farm = make_farm(gw, retry=NO_RETRY)
    farm.historical_bars(hourly()).result(WAIT)  # a worker is connected
    gw.hmds_outage(1.0)
    with pytest.raises(IbConnectionError) as err:
        farm.historical_bars(hourly("MSFT")).result(WAIT)
    assert err.value.code == 162 and "connection is broken" in err.value.message
    patient = RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=0.5)
    retrying = make_farm(gw, retry=patient, client_ids=range(20, 22))
    assert retrying.historical_bars(hourly("SPY")).result(WAIT).num_rows == 7


def test_timeout(make_gateway, make_farm):
    gw = make_gateway(pacing="off", stall_symbols=["TSLA"])
    farm = make_farm(gw, request_timeout=0.5)
    with pytest.raises(RequestTimeoutError) as err:
        farm.historical_bars(hourly("TSLA")).result(WAIT)
    assert err.value.kind is ErrorKind.TIMEOUT and "0.5 s" in err.value.message


def test_client_id_in_use(sim, make_farm):
    holder = DirectClient(sim.port, client_id=41)
    try:
        farm = make_farm(sim, client_ids=range(41, 42))
        with pytest.raises(ClientIdInUseError) as err:
            farm.historical_bars(hourly()).result(WAIT)
        assert err.value.code == 326 and "41..41" in err.value.message
    finally:
        holder.close()


def test_no_data_is_an_empty_result(sim, make_farm):
    farm = make_farm(sim)
    # An hour of a Sunday ("1 D" would mean the last trading day, Friday, as at IB).
    table = farm.historical_bars(BarRequest("AAPL", "1 hour", "3600 S",
                                            end=NOW - timedelta(days=5))).result(WAIT)
    assert table.num_rows == 0
