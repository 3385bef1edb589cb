"""IB error classification, the exceptions it builds, and the retry policy."""

from __future__ import annotations

import pickle
import random

import pytest

from ibfarm import errors
from ibfarm.config import RetryPolicy
from ibfarm.errors import (
    CODE_RULES,
    EXCEPTION_BY_KIND,
    FATAL_KINDS,
    HINTS,
    RETRYABLE_KINDS,
    TEXT_RULES,
    ConnectionEffect,
    ErrorKind,
    IbError,
    classify,
    connection_effect,
    error_from,
    is_notice,
    is_retryable,
)

HMDS = "Historical Market Data Service error message:"


# --- one test per kind, with wire texts ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [HMDS + "pacing violation", HMDS + "Historical data request pacing violation",
     HMDS + "PACING VIOLATION"],
)
def test_pacing_violation(text):
    err = error_from(162, text)
    assert err.kind is ErrorKind.PACING
    assert isinstance(err, errors.PacingViolationError)
    assert err.retryable


def test_max_message_rate_is_pacing():
    assert classify(100, "Max rate of messages per second has been exceeded:max=50 rec=55")\
        is ErrorKind.PACING


@pytest.mark.parametrize(
    "text",
    [HMDS + "HMDS query returned no data: AAPL@SMART Trades",
     HMDS + "HMDS query returned no data: EUR.USD@IDEALPRO Ask"],
)
def test_no_data_is_an_empty_result_not_a_failure(text):
    err = error_from(162, text)
    assert err.kind is ErrorKind.NO_DATA
    assert isinstance(err, errors.NoDataError)
    assert not err.retryable and err.kind not in FATAL_KINDS
    assert not is_notice(162, text)


@pytest.mark.parametrize(
    ("code", "text"),
    [(162, HMDS + "No market data permissions for NYSE STK"),
     (162, HMDS + "No market data permissions for ISLAND STK. Requested market data requires "
                  "additional subscription for API. See link in 'Market Data Connections' dialog "
                  "for more details."),
     (354, "Requested market data is not subscribed."),
     (10168, "Requested market data is not subscribed. Delayed market data is not enabled."),
     (420, "Invalid Real-time Query:No market data permissions for NYSE STK")],
)
def test_no_permission(code, text):
    err = error_from(code, text)
    assert err.kind is ErrorKind.NO_PERMISSION
    assert isinstance(err, errors.NoPermissionError)
    assert "subscriptions" in err.hint


def test_contract_not_found():
    err = error_from(200, "No security definition has been found for the request")
    assert isinstance(err, errors.ContractNotFoundError)
    assert err.kind is ErrorKind.CONTRACT_NOT_FOUND
    assert "symbol" in err.hint
    assert str(err) == "IB error 200: No security definition has been found for the request"


@pytest.mark.parametrize(
    ("code", "text"),
    [(321, "Error validating request.-'bK' : cause - Historical data bar size setting is "
           "invalid. Legal ones are: 1 secs, 5 secs, 10 secs, 15 secs, 30 secs, 1 min"),
     (321, "Error validating request:-'bP' : cause - Please enter a valid security type"),
     (10314, "End Date/Time: The date, time, or time-zone entered is invalid. The correct "
             "format is yyyymmdd hh:mm:ss xx/xxxx where yyyymmdd and xx/xxxx are optional."),
     (162, HMDS + "invalid step: 5"),
     (162, HMDS + "Time length exceed max."),
     (322, "Error processing request:-'bS' : cause - Duplicate ticker ID for API historical "
           "data query"),
     (386, "Duplicate ticker ID for API historical data query.")],
)
def test_invalid_request(code, text):
    err = error_from(code, text)
    assert err.kind is ErrorKind.INVALID_REQUEST
    assert isinstance(err, errors.InvalidRequestError)


def test_too_many_simultaneous_requests():
    text = ("Error processing request:-'bS' : cause - Only 50 simultaneous API historical data "
            "requests allowed.")
    err = error_from(322, text)
    assert err.kind is ErrorKind.TOO_MANY_REQUESTS
    assert isinstance(err, errors.TooManyRequestsError)
    assert err.retryable


def test_cancelled():
    err = error_from(162, HMDS + "API historical data query cancelled: 17")
    assert err.kind is ErrorKind.CANCELLED
    assert isinstance(err, errors.RequestCancelledError)
    assert not err.retryable


@pytest.mark.parametrize(
    ("code", "text", "effect"),
    [(1100, "Connectivity between IB and Trader Workstation has been lost.", "lost"),
     (1101, "Connectivity between IB and Trader Workstation has been restored - data lost.",
      "restored_data_lost"),
     (2110, "Connectivity between Trader Workstation and server is broken. It will be restored "
            "automatically.", "lost"),
     (1300, "TWS socket port has been reset and this connection is being dropped. Please "
            "reconnect on the new port - 7497", "reset"),
     (2105, "HMDS data farm connection is broken:ushmds", "farm_down"),
     (2103, "Market data farm connection is broken:usfarm", "farm_down")],
)
def test_connection_codes(code, text, effect):
    err = error_from(code, text)
    assert err.kind is ErrorKind.CONNECTION
    assert isinstance(err, errors.IbConnectionError)
    assert not is_notice(code, text)
    assert connection_effect(code) is ConnectionEffect(effect)
    assert err.retryable


@pytest.mark.parametrize(
    ("code", "text", "effect"),
    [(1102, "Connectivity between IB and Trader Workstation has been restored - data maintained.",
      ConnectionEffect.RESTORED_DATA_KEPT),
     (2104, "Market data farm connection is OK:usfarm", ConnectionEffect.FARM_OK),
     (2106, "HMDS data farm connection is OK:ushmds", ConnectionEffect.FARM_OK),
     (2158, "Sec-def data farm connection is OK:secdefnj", ConnectionEffect.FARM_OK),
     (2107, "HMDS data farm connection is inactive but should be available upon demand.ushmds",
      None),
     (2188, "Up-to-the-second historical data requires additional subscription for the API.",
      None),
     (10167, "Requested market data is not subscribed. Displaying delayed market data.", None),
     (2199, "a warning IB's table does not list yet", None)],
)
def test_notices_never_fail_a_request(code, text, effect):
    assert is_notice(code, text)
    assert classify(code, text) is ErrorKind.INFO
    assert isinstance(error_from(code, text), errors.InfoNotice)
    assert connection_effect(code) is effect


def test_farm_rows_name_their_farm():
    assert errors.RULES[2105].farm == errors.RULES[2106].farm == "hmds"
    assert errors.RULES[2103].farm == errors.RULES[2104].farm == "market"
    assert connection_effect(200) is None
    assert connection_effect(99999) is None


def test_client_id_in_use():
    err = error_from(326, "Unable to connect as the client id is already in use. Retry with a "
                          "unique client id.")
    assert err.kind is ErrorKind.CLIENT_ID_IN_USE
    assert isinstance(err, errors.ClientIdInUseError)
    assert isinstance(err, errors.IbConnectionError)
    assert not err.retryable


@pytest.mark.parametrize(
    ("cls", "kind", "retryable"),
    [(errors.RequestTimeoutError, ErrorKind.TIMEOUT, False),  # its budget at IB is spent
     (errors.WorkerCrashedError, ErrorKind.WORKER_CRASHED, True),
     (errors.FarmShutdownError, ErrorKind.SHUTDOWN, False)],
)
def test_farm_raised_kinds(cls, kind, retryable):
    err = cls(0, "no answer from IB in 60 s")
    assert err.kind is kind
    assert err.retryable is retryable
    assert str(err) == "no answer from IB in 60 s"  # code 0: no "IB error" prefix
    assert err.hint == HINTS[kind]


@pytest.mark.parametrize(
    ("code", "text"),
    [(162, HMDS + "Trading TWS session is connected from a different IP address"),
     (162, HMDS + "something IB has never said before"),
     (322, "Error processing request:-'bS' : cause - something else"),
     (366, "No historical data query found for ticker id:12"),
     (12345, "an unknown code")],
)
def test_unknown_and_transient_are_retryable(code, text):
    err = error_from(code, text)
    assert err.kind is ErrorKind.RETRYABLE
    assert type(err) is IbError
    assert err.retryable


# --- the table itself ---------------------------------------------------------------------------


def test_every_row_cites_its_meaning():
    for rule in (*TEXT_RULES, *CODE_RULES):
        assert rule.meaning.strip() and rule.source.strip(), rule
        assert (rule.effect is None) or rule.kind in (ErrorKind.CONNECTION, ErrorKind.INFO)
    for rule in TEXT_RULES:
        assert rule.phrase == rule.phrase.lower(), rule
        assert rule.code in errors.RULES, rule  # a shared code also has its default row
    assert len(errors.RULES) == len(CODE_RULES)  # one row per code


def test_required_connection_codes_have_effects():
    for code in (1100, 1101, 1102, 1300, 2103, 2105, 2110):
        assert connection_effect(code) is not None, code


def test_every_kind_has_an_exception_and_a_hint():
    assert set(EXCEPTION_BY_KIND) == set(ErrorKind) == set(HINTS)
    assert not RETRYABLE_KINDS & FATAL_KINDS
    assert RETRYABLE_KINDS | FATAL_KINDS | {ErrorKind.INFO, ErrorKind.NO_DATA} == set(ErrorKind)
    for kind, cls in EXCEPTION_BY_KIND.items():
        assert cls(1, "x").kind is kind
        assert is_retryable(kind) == (kind in RETRYABLE_KINDS)
    assert is_retryable("pacing")  # plain strings work too


# --- pickling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", sorted({IbError, *EXCEPTION_BY_KIND.values()}, key=str))
def test_every_exception_pickles(cls):
    err = cls(162, HMDS + "pacing violation")
    err.req_id = 7  # extra attributes travel too
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.code, back.message, back.kind, back.req_id) == (
        err.code, err.message, err.kind, 7)
    assert str(back) == str(err) and back.args == err.args
    assert back.hint == err.hint


def test_pickling_keeps_an_explicit_kind():
    err = IbError(999, "odd", ErrorKind.TIMEOUT)
    back = pickle.loads(pickle.dumps(err))
    assert back.kind is ErrorKind.TIMEOUT and type(back) is IbError


# --- retry policy -------------------------------------------------------------------------------

NO_JITTER = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=8.0, jitter=0.0,
                        pacing_delay=60.0, max_pacing_delay=600.0)
BACKOFF_KINDS = [ErrorKind.RETRYABLE, ErrorKind.CONNECTION,
                 ErrorKind.WORKER_CRASHED, ErrorKind.TOO_MANY_REQUESTS]


@pytest.mark.parametrize("kind", BACKOFF_KINDS)
def test_backoff_grows_and_is_bounded(kind):
    delays = [NO_JITTER.delay(n, kind) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]


def test_pacing_uses_the_pacing_delay_and_backs_off():
    delays = [NO_JITTER.delay(n, ErrorKind.PACING) for n in range(1, 10)]
    assert delays == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0, 600.0, 600.0]


@pytest.mark.parametrize("kind", [*BACKOFF_KINDS, ErrorKind.PACING])
def test_attempts_are_bounded(kind):
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay(1, kind) is not None
    assert policy.delay(2, kind) is not None
    assert policy.delay(3, kind) is None  # pacing violations count as attempts too
    assert RetryPolicy(max_attempts=1).delay(1, kind) is None


@pytest.mark.parametrize("kind", sorted(FATAL_KINDS) + [ErrorKind.INFO, ErrorKind.NO_DATA])
def test_fatal_and_final_kinds_never_retry(kind):
    assert all(RetryPolicy().delay(n, kind) is None for n in range(1, 5))


def test_jitter_stays_within_bounds_and_varies():
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=8.0, jitter=0.5)
    rng = random.Random(1)
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 8.0)]:
        samples = [policy.delay(attempt, ErrorKind.CONNECTION, rng) for _ in range(200)]
        assert all(nominal * 0.5 <= d <= nominal for d in samples)
        assert len(set(samples)) > 100
    paced = [policy.delay(1, ErrorKind.PACING, rng) for _ in range(100)]
    assert all(policy.pacing_delay * 0.5 <= d <= policy.pacing_delay for d in paced)


def test_same_seed_same_delays():
    policy = RetryPolicy()
    first = [policy.delay(2, ErrorKind.RETRYABLE, random.Random(42)) for _ in range(3)]
    assert len(set(first)) == 1
    assert policy.delay(2, ErrorKind.RETRYABLE) is not None  # default rng


def test_scaled_policy_and_validation():
    fast = RetryPolicy().scaled(10)
    assert fast.pacing_delay == RetryPolicy().pacing_delay / 10
    assert fast.max_attempts == RetryPolicy().max_attempts
    for bad in ({"max_attempts": 0}, {"jitter": 1.5}, {"base_delay": -1.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(ValueError):
        RetryPolicy().delay(0, ErrorKind.RETRYABLE)
    with pytest.raises(ValueError):
        RetryPolicy().scaled(0)


def test_historical_farm_down_is_a_connection_error():
    err = error_from(162, HMDS + "HMDS data farm connection is broken:ushmds")
    assert isinstance(err, errors.IbConnectionError)
    assert err.retryable
