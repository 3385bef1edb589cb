"""IbDataAdapter: symbols to contracts, errors as the data layer's own, shared look-ups."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from ibfarm.errors import ErrorKind, IbError, error_from
from ktrdr.data import external_data_interface as edi
from ktrdr.data.ib_data_adapter import IB_ERRORS, map_ib_error

UTC = timezone.utc


D = edi.DataErrorKind


@pytest.mark.parametrize("kind,expected,data_kind", [
    (ErrorKind.CONTRACT_NOT_FOUND, edi.DataProviderNotFoundError, D.UNKNOWN_SYMBOL),
    (ErrorKind.NO_PERMISSION, edi.DataProviderPermissionError, D.NO_PERMISSION),
    (ErrorKind.INVALID_REQUEST, edi.DataProviderInvalidRequestError, D.INVALID_REQUEST),
    (ErrorKind.PACING, edi.DataProviderRateLimitError, D.RATE_LIMITED),
    (ErrorKind.TOO_MANY_REQUESTS, edi.DataProviderRateLimitError, D.RATE_LIMITED),
    (ErrorKind.CONNECTION, edi.DataProviderConnectionError, D.UNAVAILABLE),
    (ErrorKind.TIMEOUT, edi.DataProviderTimeoutError, D.TIMEOUT),
    (ErrorKind.WORKER_CRASHED, edi.DataProviderConnectionError, D.UNAVAILABLE),
    (ErrorKind.CLIENT_ID_IN_USE, edi.DataProviderConfigError, D.MISCONFIGURED),
    (ErrorKind.CANCELLED, edi.DataProviderCancelledError, D.CANCELLED),
    (ErrorKind.RETRYABLE, edi.DataProviderError, D.FAILED),
])
def test_ib_errors_become_data_layer_errors(kind, expected, data_kind):
    error = map_ib_error(IbError(354, "Not subscribed", kind), "AAPL 1h")
    assert type(error) is expected and error.kind is data_kind
    assert error.error_code == 354 and error.provider == "IB" and error.hint
    assert "AAPL 1h: Not subscribed" in str(error)
    assert not isinstance(error, IbError)
    assert (error.retry_after is not None) == (data_kind is D.RATE_LIMITED or
                                               kind in IB_ERRORS and
                                               IB_ERRORS[kind].retry_after is not None)


def test_every_ib_kind_has_a_data_kind():
    assert set(IB_ERRORS) == set(ErrorKind)
    assert {rule.kind for rule in IB_ERRORS.values()} <= set(D)


@pytest.mark.parametrize("text,hint", [
    ("Historical Market Data Service error message:No historical market data for "
     "EUR/CASH@FXSUBPIP Last 1d", "MIDPOINT"),
    ("Historical Market Data Service error message:No historical market data for "
     "SPX/IND@CBOE MidPoint 0", "TRADES"),
])
def test_what_to_show_refusals_say_what_to_ask_instead(text, hint):
    error = map_ib_error(IbError(162, text, ErrorKind.INVALID_REQUEST))
    assert error.kind is D.INVALID_REQUEST and hint in error.hint


def test_unknown_symbol_code_200():
    error = map_ib_error(error_from(200, "No security definition has been found"))
    assert isinstance(error, edi.DataProviderNotFoundError) and error.error_code == 200


def run(coro):
    """Run ``coro`` on a loop of its own (``asyncio.run`` would leave the main thread without
    the event loop that ib_insync's synchronous API in later tests looks for)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_symbols_resolve_to_the_right_instruments(provider):
    kinds = {s: run(provider.get_contract_details(s)).instrument_type
             for s in ("AAPL", "EUR.USD", "SPX", "ES")}
    assert kinds == {"AAPL": "stock", "EUR.USD": "forex", "SPX": "index", "ES": "future"}
    info = run(provider.get_contract_details("EUR.USD"))
    assert info.time_zone == "America/New_York" and info.sessions and info.closed_days
    assert run(provider.validate_symbol("NOSUCH")) is False
    assert run(provider.validate_symbol("AAPL", "stock")) is True
    with pytest.raises(edi.DataProviderInvalidRequestError, match="unknown instrument type"):
        run(provider.validate_symbol("AAPL", "bond"))


def test_concurrent_look_ups_are_asked_once(provider, sim):
    before = sim.stats()["requests"].get("head_timestamp", 0)

    async def many():
        return await asyncio.gather(*(provider.get_head_timestamp("GOOGL") for _ in range(5)))

    heads = run(many())
    assert len(set(heads)) == 1 and heads[0] == datetime(2004, 8, 19, 13, 30, tzinfo=UTC)
    assert sim.stats()["requests"]["head_timestamp"] - before == 1


def test_fetch_rejects_bad_requests(provider):
    start, end = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(edi.DataProviderInvalidRequestError, match="not after start"):
        run(provider.fetch_historical_data("AAPL", "1h", start, end))
    with pytest.raises(edi.DataProviderInvalidRequestError, match="unsupported timeframe"):
        run(provider.fetch_historical_data("AAPL", "3h", end, start))


def test_health_check_and_clock(provider, clock):
    health = run(provider.health_check())
    assert health["healthy"] and health["server_time"] == clock.now
    assert health["farm"]["workers"] >= 1
