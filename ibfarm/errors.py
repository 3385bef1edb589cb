"""IB's error codes, what they mean for a historical-data fetcher, and the exceptions they become.

Every error the farm reports is an ``IbError`` carrying IB's ``code``, its ``message`` and its
``kind`` (an ``ErrorKind``). ``classify(code, message)`` decides the kind from IB's official
message-code table (``RULES``, one row per code, each quoting the meaning it rests on); codes 162,
322 and 420 cover several situations and are told apart by their text.

The kinds, and what the farm does with each:

* ``INFO``: a notice (farm connection OK, delayed data, time-zone warnings...). Never fails a
  request; log it.
* ``NO_DATA``: a valid request with nothing in range ("HMDS query returned no data"). The
  request ends with an empty result, not a failure.
* ``CONTRACT_NOT_FOUND``, ``NO_PERMISSION``, ``INVALID_REQUEST``: fatal; the same request will
  fail again, so the caller must fix the symbol, the subscriptions or the parameters.
* ``PACING``: IB's pacing rules were broken; back off (``RetryPolicy.pacing_delay``) and retry.
* ``TOO_MANY_REQUESTS``: more than 50 historical requests open at once; retry with backoff.
* ``CANCELLED``: the request was cancelled (by the caller, or by IB); not retried.
* ``CONNECTION``: the link to IB (or one of IB's data farms) is down; retry with backoff.
* ``CLIENT_ID_IN_USE``: another application holds the client id; fatal for that id.
* ``TIMEOUT``, ``WORKER_CRASHED``, ``SHUTDOWN``: raised by the farm itself (code 0). A time-out
  is not retried: the request spent its ``request_timeout`` at IB and was cancelled there; the
  caller decides (ktrdr asks for a shorter range). A crashed worker's requests are sent again on
  another worker (``max_retries`` times) before ``WORKER_CRASHED`` reaches the caller, who may
  retry. A shutdown is final.
* ``RETRYABLE``: transient or unknown; retried a bounded number of times.

Connection-level codes (1100, 1101, 1102, 1300, 2103-2106, 2110, 2157, 2158) arrive without a
request id; ``connection_effect`` tells the worker how its connection state changes and whether
the requests in flight were lost (1101: resubmit them) or kept (1102).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(str, enum.Enum):
    """What an IB message means for the request it answers."""

    INFO = "info"  # a notice; never fails a request
    NO_DATA = "no_data"  # a valid request with nothing in range: an empty result
    CONTRACT_NOT_FOUND = "contract_not_found"
    NO_PERMISSION = "no_permission"
    INVALID_REQUEST = "invalid_request"
    PACING = "pacing"
    TOO_MANY_REQUESTS = "too_many_requests"
    CANCELLED = "cancelled"
    CONNECTION = "connection"
    CLIENT_ID_IN_USE = "client_id_in_use"
    TIMEOUT = "timeout"
    WORKER_CRASHED = "worker_crashed"
    SHUTDOWN = "shutdown"
    RETRYABLE = "retryable"  # transient and unexplained: retry a bounded number of times


class ConnectionEffect(str, enum.Enum):
    """How a connection-level message changes a worker's connection state."""

    LOST = "lost"  # IB <-> gateway link down: pause, wait for 1101/1102
    RESTORED_DATA_LOST = "restored_data_lost"  # back up; resubmit every request in flight
    RESTORED_DATA_KEPT = "restored_data_kept"  # back up; requests in flight carry on
    FARM_DOWN = "farm_down"  # one of IB's data farms is disconnected (see ``Rule.farm``)
    FARM_OK = "farm_ok"  # that farm is connected again
    RESET = "reset"  # the gateway dropped this socket: reconnect


#: Kinds worth another attempt (the farm retries them after a delay from ``RetryPolicy``;
#: ``WORKER_CRASHED`` reaches a caller only after the farm's own ``max_retries``).
RETRYABLE_KINDS = frozenset({
    ErrorKind.RETRYABLE, ErrorKind.CONNECTION, ErrorKind.WORKER_CRASHED,
    ErrorKind.TOO_MANY_REQUESTS, ErrorKind.PACING,
})
#: Kinds that fail the request for good: retrying cannot help.
FATAL_KINDS = frozenset({
    ErrorKind.CONTRACT_NOT_FOUND, ErrorKind.NO_PERMISSION, ErrorKind.INVALID_REQUEST,
    ErrorKind.CLIENT_ID_IN_USE, ErrorKind.CANCELLED, ErrorKind.SHUTDOWN, ErrorKind.TIMEOUT,
})

#: What the user should do about each kind (the HTTP API puts it in problem+json).
HINTS: dict[ErrorKind, str] = {
    ErrorKind.INFO: "nothing to do; this is a notice",
    ErrorKind.NO_DATA: "IB has no bars in this range; try another range or check the contract",
    ErrorKind.CONTRACT_NOT_FOUND: "check the symbol, security type, exchange and currency",
    ErrorKind.NO_PERMISSION: "check the account's market-data subscriptions for this exchange",
    ErrorKind.INVALID_REQUEST: "check the bar size, duration, end date/time and what-to-show",
    ErrorKind.PACING: "wait and retry; IB's pacing rules allow fewer small-bar requests",
    ErrorKind.TOO_MANY_REQUESTS: "wait and retry; IB allows 50 historical requests open at once",
    ErrorKind.CANCELLED: "the request was cancelled; submit it again if still needed",
    ErrorKind.CONNECTION: "wait and retry; check that IB Gateway/TWS is running and logged in",
    ErrorKind.CLIENT_ID_IN_USE: "use a client id no other application is connected with",
    ErrorKind.TIMEOUT: "IB did not answer in time (it was cancelled there); ask for a shorter "
                       "range, or raise request_timeout",
    ErrorKind.WORKER_CRASHED: "retry; the farm's log says why the worker process died",
    ErrorKind.SHUTDOWN: "the farm is shut down; start it again",
    ErrorKind.RETRYABLE: "wait and retry; if it persists, read IB's message",
}


def is_retryable(kind: ErrorKind) -> bool:
    """Whether a request that failed with ``kind`` may be tried again."""
    return ErrorKind(kind) in RETRYABLE_KINDS


def hint_for(kind: ErrorKind) -> str:
    """What the user should do about an error of ``kind``."""
    return HINTS[ErrorKind(kind)]


# --- the classification table ------------------------------------------------------------------

IB_CODES = "IB message codes"  # interactivebrokers.github.io/tws-api/message_codes.html


@dataclass(frozen=True)
class Rule:
    """One row of the classification: IB's ``code`` (and, for shared codes, a ``phrase`` its
    text must contain, case-insensitively) means ``kind``.

    Attributes:
        meaning: the official meaning the row rests on, quoted briefly.
        source: where ``meaning`` comes from (IB's message-code table unless stated).
        effect: for connection-level codes, how the connection state changes.
        farm: for farm codes, which farm ("market", "hmds" or "secdef").
        hint: what to do about it, when the row knows better than its kind's hint.
    """

    code: int
    kind: ErrorKind
    meaning: str
    phrase: str | None = None
    effect: ConnectionEffect | None = None
    farm: str | None = None
    source: str = IB_CODES
    hint: str | None = None  # what to do, when it is more precise than the kind's hint


K, E = ErrorKind, ConnectionEffect
HMDS_162 = "162 text (Historical Market Data Service error message:...)"

#: Text rules for codes that cover several situations; the first matching phrase wins.
TEXT_RULES: tuple[Rule, ...] = (
    Rule(162, K.PACING, "pacing violation (historical_limitations: a pacing rule was broken)",
         "pacing violation", source=HMDS_162),
    Rule(162, K.NO_DATA, "HMDS query returned no data: <symbol>@<exchange> <whatToShow>",
         "returned no data", source=HMDS_162),
    Rule(162, K.PACING, "Too many requests in the last 10 minutes (an older pacing text)",
         "too many requests in the last", source="162 text (Lean #607; older IB guide)"),
    Rule(162, K.INVALID_REQUEST, "No historical market data for EUR/CASH@FXSUBPIP Last 1d: "
         "that data type does not exist for the contract (TRADES on forex, MIDPOINT on an "
         "index)", "no historical market data for",
         source="162 text (ezibpy #24; ib_insync #316; ib-ruby #50)",
         hint="forex pairs have no TRADES: ask for MIDPOINT, BID or ASK; indices have no "
              "MIDPOINT: ask for TRADES"),
    Rule(162, K.NO_PERMISSION, "No market data permissions for <exchange> <secType>",
         "no market data permissions", source=HMDS_162),
    Rule(162, K.CANCELLED, "API historical data query cancelled: <reqId>",
         "query cancelled", source=HMDS_162),
    Rule(162, K.INVALID_REQUEST, "invalid step: too many bars for the duration and bar size",
         "invalid step", source=HMDS_162),
    Rule(162, K.INVALID_REQUEST, "Time length exceed max.: the duration is longer than the bar "
         "size allows", "time length exceed", source=HMDS_162),
    Rule(162, K.CONNECTION, "HMDS data farm connection is broken: the historical farm is down "
         "(as 2105 announces)", "connection is broken", source=HMDS_162),
    Rule(162, K.RETRYABLE, "Trading TWS session is connected from a different IP address",
         "different ip address", source=HMDS_162),
    Rule(322, K.TOO_MANY_REQUESTS, "Only 50 simultaneous API historical data requests allowed.",
         "simultaneous", source="322 text (Error processing request:...)"),
    Rule(322, K.INVALID_REQUEST, "Duplicate ticker ID for API historical data query",
         "duplicate ticker id", source="322 text (Error processing request:...)"),
    Rule(420, K.PACING, "Invalid real-time query: pacing violation", "pacing violation",
         source="420 text"),
    Rule(420, K.NO_PERMISSION, "Invalid real-time query: No market data permissions",
         "no market data permissions", source="420 text"),
)

#: One row per code: the kind when no text rule applies.
CODE_RULES: tuple[Rule, ...] = (
    Rule(100, K.PACING, "Max rate of messages per second has been exceeded."),
    Rule(162, K.RETRYABLE, "Historical market data Service error message."),
    Rule(165, K.INFO, "Historical market Data Service query message."),
    Rule(166, K.NO_DATA, "HMDS Expired Contract Violation: no historical data for the expired "
                         "contract."),
    Rule(200, K.CONTRACT_NOT_FOUND, "No security definition has been found for the request."),
    Rule(203, K.NO_PERMISSION, "The security is not available or allowed for this account."),
    Rule(300, K.INFO, "Can't find EId with ticker Id: (cancel of an unknown ticker id)"),
    Rule(320, K.INVALID_REQUEST, "Server error when reading an API client request."),
    Rule(321, K.INVALID_REQUEST, "Server error when validating an API client request."),
    Rule(322, K.RETRYABLE, "Server error when processing an API client request."),
    Rule(326, K.CLIENT_ID_IN_USE, "Unable to connect as the client id is already in use."),
    Rule(354, K.NO_PERMISSION, "Not subscribed to requested market data."),
    Rule(366, K.RETRYABLE, "No historical data query found for ticker id: cancelled or not "
                           "found."),
    Rule(386, K.INVALID_REQUEST, "Duplicate ticker ID for API historical data query."),
    Rule(420, K.INVALID_REQUEST, "Invalid real-time query."),
    Rule(502, K.CONNECTION, "Couldn't connect to TWS.", source="ibapi errors.py (client side)"),
    Rule(503, K.INVALID_REQUEST, "The TWS is out of date and must be upgraded.",
         source="ibapi errors.py (client side)"),
    Rule(504, K.CONNECTION, "Not connected", source="ibapi errors.py (client side)"),
    Rule(505, K.CONNECTION, "Fatal Error: Unknown message id.",
         source="ibapi errors.py (client side)"),
    Rule(507, K.CONNECTION, "Bad message length (EOF while reading the socket)",
         source="ibapi errors.py (client side)"),
    Rule(508, K.CONNECTION, "Bad message", source="ibapi errors.py (client side)"),
    Rule(509, K.CONNECTION, "Exception caught while reading socket",
         source="ibapi errors.py (client side)"),
    Rule(1100, K.CONNECTION, "Connectivity between IB and the TWS has been lost.",
         effect=E.LOST),
    Rule(1101, K.CONNECTION, "Connectivity between IB and TWS has been restored- data lost.",
         effect=E.RESTORED_DATA_LOST),
    Rule(1102, K.INFO, "Connectivity between IB and TWS has been restored- data maintained.",
         effect=E.RESTORED_DATA_KEPT),
    Rule(1300, K.CONNECTION, "TWS socket port has been reset and this connection is being "
                             "dropped. Please reconnect on the new port", effect=E.RESET),
    Rule(2103, K.CONNECTION, "A market data farm is disconnected.", effect=E.FARM_DOWN,
         farm="market"),
    Rule(2104, K.INFO, "Market data farm connection is OK", effect=E.FARM_OK, farm="market"),
    Rule(2105, K.CONNECTION, "A historical data farm is disconnected.", effect=E.FARM_DOWN,
         farm="hmds"),
    Rule(2106, K.INFO, "A historical data farm is connected.", effect=E.FARM_OK, farm="hmds"),
    Rule(2107, K.INFO, "A historical data farm connection has become inactive but should be "
                       "available upon demand."),
    Rule(2108, K.INFO, "A market data farm connection has become inactive but should be "
                       "available upon demand."),
    Rule(2110, K.CONNECTION, "Connectivity between TWS and server is broken. It will be "
                             "restored automatically.", effect=E.LOST),
    Rule(2119, K.INFO, "Market data farm is connecting", source="rust-ibapi messages.rs"),
    Rule(2157, K.CONNECTION, "Sec-def data farm connection is broken", effect=E.FARM_DOWN,
         farm="secdef", source="rust-ibapi messages.rs"),
    Rule(2158, K.INFO, "Sec-def data farm connection is OK", effect=E.FARM_OK, farm="secdef",
         source="rust-ibapi messages.rs"),
    Rule(2174, K.INFO, "Implied time zone for date-times sent without one will be removed",
         source="gateway wire text"),
    Rule(2188, K.INFO, "Up-to-the-second historical data requires additional subscription "
                       "for the API. (bars still follow)", source="rust-ibapi#764"),
    Rule(10089, K.NO_PERMISSION, "Requested market data requires additional subscription for "
                                 "API."),
    Rule(10090, K.INFO, "Part of requested market data is not subscribed."),
    Rule(10167, K.INFO, "Requested market data is not subscribed. Displaying delayed market "
                        "data."),
    Rule(10168, K.NO_PERMISSION, "Requested market data is not subscribed. Delayed market data "
                                 "is not enabled."),
    Rule(10182, K.RETRYABLE, "Failed to request live updates (disconnected)."),
    Rule(10197, K.RETRYABLE, "No market data during competing live session"),
    Rule(10225, K.RETRYABLE, "Bust event occurred, current subscription is deactivated. Please "
                             "resubscribe real-time bars immediately."),
    Rule(10285, K.INVALID_REQUEST, "Your API version does not support fractional size rules."),
    Rule(10339, K.INVALID_REQUEST, "Setting end date/time for continuous future security type "
                                   "is not allowed.", source="IB Historical Bar Data; nautilus "
                                   "#2570", hint="ask for a CONTFUT contract with an empty end"),
    Rule(10314, K.INVALID_REQUEST, "End Date/Time: The date, time, or time-zone entered is "
                                   "invalid."),
)
del K, E

#: ``CODE_RULES`` by code.
RULES: dict[int, Rule] = {rule.code: rule for rule in CODE_RULES}
#: IB's table reserves 2100-2199 for warnings; unlisted codes there are notices too.
WARNING_RANGE = range(2100, 2200)


def lookup(code: int, message: str = "") -> Rule | None:
    """The row that classifies IB error ``code`` with text ``message`` (None: not in the table)."""
    text = message.lower()
    for rule in TEXT_RULES:
        if rule.code == code and rule.phrase is not None and rule.phrase in text:
            return rule
    return RULES.get(code)


def classify(code: int, message: str = "") -> ErrorKind:
    """The ``ErrorKind`` of IB error ``code`` with text ``message``.

    Unknown codes are notices in IB's warning range (2100-2199) and ``RETRYABLE`` otherwise.
    """
    return _kind(code, lookup(code, message))


def _kind(code: int, rule: Rule | None) -> ErrorKind:
    if rule is not None:
        return rule.kind
    return ErrorKind.INFO if code in WARNING_RANGE else ErrorKind.RETRYABLE


def is_notice(code: int, message: str = "") -> bool:
    """Whether the message is a notice that never fails a request (it may still carry a
    ``connection_effect``, as 1102 and the farm-OK codes do)."""
    return classify(code, message) is ErrorKind.INFO


def connection_effect(code: int) -> ConnectionEffect | None:
    """How connection-level code ``code`` changes the connection state (None: it does not)."""
    rule = RULES.get(code)
    return rule.effect if rule is not None else None


# --- exceptions --------------------------------------------------------------------------------


class IbError(Exception):
    """An error from IB (or from the farm on IB's behalf).

    Attributes:
        code: IB's error code (0 for errors the farm raises itself).
        message: IB's text.
        kind: the ``ErrorKind``.
    """

    default_kind = ErrorKind.RETRYABLE

    def __init__(self, code: int, message: str, kind: ErrorKind | None = None,
                 hint: str | None = None):
        self.code = int(code)
        self.message = message
        self.kind = ErrorKind(kind) if kind is not None else self.default_kind
        self._hint = hint
        super().__init__(f"IB error {self.code}: {message}" if self.code else message)

    @property
    def hint(self) -> str:
        """What the user should do about this error."""
        return self._hint or hint_for(self.kind)

    @property
    def retryable(self) -> bool:
        """Whether the request may be tried again."""
        return is_retryable(self.kind)

    def __reduce__(self):  # survive pickling across the worker pipe with all attributes
        return (_rebuild, (type(self), self.code, self.message, self.kind.value), self.__dict__)


def _rebuild(cls, code, message, kind):
    return cls(code, message, ErrorKind(kind))  # the rest (hint, ...) comes back as state


class ContractNotFoundError(IbError):
    default_kind = ErrorKind.CONTRACT_NOT_FOUND


class NoPermissionError(IbError):
    default_kind = ErrorKind.NO_PERMISSION


class InvalidRequestError(IbError, ValueError):
    """IB (or the farm, before sending) refuses the request's parameters."""

    default_kind = ErrorKind.INVALID_REQUEST


class PacingViolationError(IbError):
    default_kind = ErrorKind.PACING


class TooManyRequestsError(PacingViolationError):
    default_kind = ErrorKind.TOO_MANY_REQUESTS


class RequestCancelledError(IbError):
    default_kind = ErrorKind.CANCELLED


class IbConnectionError(IbError):
    default_kind = ErrorKind.CONNECTION


class ClientIdInUseError(IbConnectionError):
    default_kind = ErrorKind.CLIENT_ID_IN_USE


class RequestTimeoutError(IbError):
    default_kind = ErrorKind.TIMEOUT


class WorkerCrashedError(IbError):
    """A worker process died with requests in flight, and retries ran out."""

    default_kind = ErrorKind.WORKER_CRASHED


class FarmShutdownError(IbError):
    """The farm was shut down (or broken) before the request could run."""

    default_kind = ErrorKind.SHUTDOWN


class NoDataError(IbError):
    """IB had no data for the request; the farm turns this into an empty result."""

    default_kind = ErrorKind.NO_DATA


class InfoNotice(IbError):
    default_kind = ErrorKind.INFO


#: The exception class of each kind (``IbError`` itself for ``RETRYABLE``).
EXCEPTION_BY_KIND: dict[ErrorKind, type[IbError]] = {
    cls.default_kind: cls for cls in (
        IbError, InfoNotice, NoDataError, ContractNotFoundError, NoPermissionError,
        InvalidRequestError, PacingViolationError, TooManyRequestsError, RequestCancelledError,
        IbConnectionError, ClientIdInUseError, RequestTimeoutError, WorkerCrashedError,
        FarmShutdownError)}


def error_from(code: int, message: str) -> IbError:
    """Build the exception IB error ``code`` with ``message`` stands for."""
    rule = lookup(code, message)
    kind = _kind(code, rule)
    return EXCEPTION_BY_KIND[kind](code, message, kind, rule.hint if rule else None)
