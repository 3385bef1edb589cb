"""The API's pieces without a server: the error table, exception mapping, negotiation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ibfarm.errors import ErrorKind, PacingViolationError, RequestTimeoutError, error_from
from ktrdr.api.errors import PROBLEMS, ApiError, to_api_error
from ktrdr.api.routes.data import ARROW, JSON, PARQUET, negotiate
from ktrdr.data.data_manager import DataNotFoundError, InvalidRangeError
from ktrdr.data.external_data_interface import (
    DataErrorKind,
    DataProviderConnectionError,
    DataProviderError,
    DataProviderNotFoundError,
    DataProviderPermissionError,
    DataProviderRateLimitError,
)
from ktrdr.data.ib_data_adapter import map_ib_error
from ktrdr.data.store import DataCorruptError
from ktrdr.data.timeframes import TimeframeError


def test_every_data_error_kind_has_a_problem():
    assert {k.value for k in DataErrorKind} <= set(PROBLEMS)


def test_the_readme_kind_table_is_the_problem_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## HTTP API\n"):readme.index("## Metrics\n")]
    documented: dict[str, int] = {}
    for status, kinds in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", section, re.MULTILINE):
        for kind in re.findall(r"`([a-z_]+)`", kinds):
            assert kind not in documented, f"{kind} is listed twice"
            documented[kind] = int(status)
    assert documented == {kind: spec.status for kind, spec in PROBLEMS.items()}


@pytest.mark.parametrize(("code", "text", "status", "kind"), [
    (200, "No security definition has been found for the request", 404, "unknown_symbol"),
    (162, "Historical Market Data Service error message:No market data permissions for NYSE "
          "STK", 403, "no_permission"),
    (321, "Error validating request.-'bK' : cause - Invalid duration format", 422,
     "invalid_request"),
    (162, "Historical Market Data Service error message:pacing violation", 429, "rate_limited"),
    (322, "Error processing request:-'bS' : cause - Only 50 simultaneous API historical data "
          "requests allowed.", 429, "rate_limited"),
    (1100, "Connectivity between IB and Trader Workstation has been lost.", 503, "unavailable"),
    (326, "Unable to connect as the client id is already in use.", 503, "misconfigured"),
    (9999, "something new", 502, "failed"),
])
def test_ib_errors_reach_the_api_through_the_adapter(code, text, status, kind):
    err = to_api_error(map_ib_error(error_from(code, text)))
    assert (err.http_status, err.kind, err.ib_code) == (status, kind, code)
    body = err.body("/x")
    assert body["hint"] and body["detail"] == text and body["type"].endswith(kind)


def test_every_ib_error_kind_becomes_a_problem():
    for kind in ErrorKind:
        err = to_api_error(map_ib_error(error_from(9999, "x") if kind is ErrorKind.RETRYABLE
                                        else _ib_error(kind)))
        assert err.kind in PROBLEMS and err.kind != "internal", kind


def _ib_error(kind: ErrorKind):
    from ibfarm.errors import IbError

    return IbError(1, "x", kind)


def test_the_kind_decides_not_the_class_or_the_cause():
    # a provider error says what it is by its kind: neither its class nor what caused it
    # (here an IB timeout) changes the problem
    try:
        try:
            raise RequestTimeoutError(0, "no answer within 3 s")
        except Exception as exc:
            raise DataProviderError("AAPL 1h: refused", "IB", 0, "fix it",
                                    kind=DataErrorKind.INVALID_REQUEST) from exc
    except DataProviderError as exc:
        err = to_api_error(exc)
    assert (err.http_status, err.kind, err.ib_code) == (422, "invalid_request", None)
    assert err.detail == "AAPL 1h: refused" and err.hint == "fix it"
    # and a connection error marked as a timeout is a timeout
    late = DataProviderConnectionError("slow", "IB", 0, kind=DataErrorKind.TIMEOUT)
    assert to_api_error(late).http_status == 504


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (DataProviderNotFoundError("no contract", "IB", 200, "check"), 404, "unknown_symbol"),
    (DataProviderPermissionError("no permission", "IB", 162, "subscribe"), 403,
     "no_permission"),
    (DataProviderConnectionError("down", "IB", 502, "start it"), 503, "unavailable"),
    (DataCorruptError("/tmp/x.parquet", "bad"), 500, "store_corrupt"),
    (DataNotFoundError("nothing stored"), 404, "not_found"),
    (InvalidRangeError("end before start"), 422, "invalid_request"),
    (TimeframeError("2h"), 422, "invalid_request"),
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
    paced = to_api_error(map_ib_error(PacingViolationError(162, "pacing violation")))
    assert paced.retry_after(60, 10) == 60


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
