"""The API's pieces without a server: the error table, exception mapping, negotiation."""

from __future__ import annotations

import pytest

from ibfarm.errors import ErrorKind, IbError, PacingViolationError, RequestTimeoutError, error_from
from ktrdr.api.errors import PROBLEMS, ApiError, to_api_error
from ktrdr.api.routes.data import ARROW, JSON, PARQUET, negotiate
from ktrdr.data.external_data_interface import (
    DataProviderConnectionError,
    DataProviderNotFoundError,
    DataProviderPermissionError,
    DataProviderRateLimitError,
)


def test_every_ib_error_kind_has_a_problem():
    assert {k.value for k in ErrorKind} <= set(PROBLEMS)


@pytest.mark.parametrize(("code", "text", "status", "kind"), [
    (200, "No security definition has been found for the request", 404, "contract_not_found"),
    (162, "Historical Market Data Service error message:No market data permissions for NYSE "
          "STK", 403, "no_permission"),
    (321, "Error validating request.-'bK' : cause - Invalid duration format", 422,
     "invalid_request"),
    (162, "Historical Market Data Service error message:pacing violation", 429, "pacing"),
    (322, "Error processing request:-'bS' : cause - Only 50 simultaneous API historical data "
          "requests allowed.", 429, "too_many_requests"),
    (1100, "Connectivity between IB and Trader Workstation has been lost.", 503, "connection"),
    (326, "Unable to connect as the client id is already in use.", 503, "client_id_in_use"),
    (9999, "something new", 502, "retryable"),
])
def test_ib_errors_map_by_kind(code, text, status, kind):
    err = to_api_error(error_from(code, text))
    assert (err.http_status, err.kind, err.ib_code) == (status, kind, code)
    body = err.body("/x")
    assert body["hint"] and body["detail"] == text and body["type"].endswith(kind)


def test_provider_errors_keep_the_ib_kind_of_their_cause():
    try:
        try:
            raise RequestTimeoutError(0, "no answer within 3 s")
        except IbError as exc:
            raise DataProviderConnectionError("AAPL 1h: no answer within 3 s", "IB", 0,
                                              "wait and retry") from exc
    except DataProviderConnectionError as exc:
        err = to_api_error(exc)
    assert (err.http_status, err.kind, err.ib_code) == (504, "timeout", None)
    assert err.detail == "AAPL 1h: no answer within 3 s" and err.hint == "wait and retry"


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (DataProviderNotFoundError("no contract", "IB", 200, "check"), 404, "contract_not_found"),
    (DataProviderPermissionError("no permission", "IB", 162, "subscribe"), 403,
     "no_permission"),
    (DataProviderConnectionError("down", "IB", 502, "start it"), 503, "connection"),
    (ValueError("bad date"), 422, "invalid_request"),
    (TimeoutError(), 504, "timeout"),
    (KeyError("bug"), 500, "internal"),
])
def test_other_exceptions(exc, status, kind):
    err = to_api_error(exc)
    assert (err.http_status, err.kind) == (status, kind)


def test_rate_limit_errors_carry_retry_after():
    err = to_api_error(DataProviderRateLimitError("pacing", "IB", 162, "wait",
                                                  retry_after=42.4))
    assert (err.http_status, err.ib_code, err.headers["Retry-After"]) == (429, 162, "42")
    assert to_api_error(PacingViolationError(162, "pacing violation")).retry_after(60, 10) == 60


def test_problem_kinds_are_checked():
    with pytest.raises(ValueError):
        ApiError("no_such_kind", "x")


@pytest.mark.parametrize(("accept", "media"), [
    (None, JSON), ("", JSON), ("*/*", JSON), ("application/*", JSON),
    (ARROW, ARROW), (PARQUET, PARQUET), (f"{JSON};q=0.2, {ARROW};q=0.9", ARROW),
    (f"text/html, {PARQUET};q=0.5", PARQUET), (f"{ARROW};q=0, */*;q=0.1", JSON),
])
def test_negotiation(accept, media):
    assert negotiate(accept) == media


def test_negotiation_refuses_what_it_cannot_serve():
    with pytest.raises(ApiError) as info:
        negotiate("text/csv, text/html;q=0.5")
    assert info.value.http_status == 406
