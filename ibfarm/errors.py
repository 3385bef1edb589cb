"""IB's error codes, what they mean for a historical-data fetcher, and the exceptions they become.

Every error the farm reports is an ``IbError`` carrying IB's ``code``, its ``message`` and its
``kind`` (an ``ErrorKind``). ``classify(code, message)`` decides the kind from IB's official
message-code table; code 162 and 322 are told apart by their text.
"""

from __future__ import annotations

import enum


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


class IbError(Exception):
    """An error from IB (or from the farm on IB's behalf).

    Attributes:
        code: IB's error code (0 for errors the farm raises itself).
        message: IB's text.
        kind: the ``ErrorKind``.
    """

    default_kind = ErrorKind.RETRYABLE

    def __init__(self, code: int, message: str, kind: ErrorKind | None = None):
        self.code = int(code)
        self.message = message
        self.kind = ErrorKind(kind) if kind is not None else self.default_kind
        super().__init__(f"IB error {self.code}: {message}" if self.code else message)

    def __reduce__(self):  # survive pickling across the worker pipe with all attributes
        return (_rebuild, (type(self), self.code, self.message, self.kind.value))


def _rebuild(cls, code, message, kind):
    return cls(code, message, ErrorKind(kind))


class ContractNotFoundError(IbError):
    default_kind = ErrorKind.CONTRACT_NOT_FOUND


class NoPermissionError(IbError):
    default_kind = ErrorKind.NO_PERMISSION


class InvalidRequestError(IbError):
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


EXCEPTION_BY_KIND: dict[ErrorKind, type[IbError]] = {
    ErrorKind.INFO: InfoNotice,
    ErrorKind.NO_DATA: NoDataError,
    ErrorKind.CONTRACT_NOT_FOUND: ContractNotFoundError,
    ErrorKind.NO_PERMISSION: NoPermissionError,
    ErrorKind.INVALID_REQUEST: InvalidRequestError,
    ErrorKind.PACING: PacingViolationError,
    ErrorKind.TOO_MANY_REQUESTS: TooManyRequestsError,
    ErrorKind.CANCELLED: RequestCancelledError,
    ErrorKind.CONNECTION: IbConnectionError,
    ErrorKind.CLIENT_ID_IN_USE: ClientIdInUseError,
    ErrorKind.TIMEOUT: RequestTimeoutError,
    ErrorKind.WORKER_CRASHED: WorkerCrashedError,
    ErrorKind.SHUTDOWN: FarmShutdownError,
    ErrorKind.RETRYABLE: IbError,
}


def classify(code: int, message: str = "") -> ErrorKind:
    """The ``ErrorKind`` of IB error ``code`` with text ``message``."""
    # Filled in from IB's official table (see the classification section of this module).
    if code == 200:
        return ErrorKind.CONTRACT_NOT_FOUND
    if code in (321, 10314):
        return ErrorKind.INVALID_REQUEST
    if code == 326:
        return ErrorKind.CLIENT_ID_IN_USE
    if 2100 <= code < 2200:
        return ErrorKind.INFO
    if code == 162:
        text = message.lower()
        if "pacing violation" in text:
            return ErrorKind.PACING
        if "returned no data" in text:
            return ErrorKind.NO_DATA
        if "cancelled" in text:
            return ErrorKind.CANCELLED
    if code == 322 and "simultaneous" in message.lower():
        return ErrorKind.TOO_MANY_REQUESTS
    return ErrorKind.RETRYABLE


def error_from(code: int, message: str) -> IbError:
    """Build the exception IB error ``code`` with ``message`` stands for."""
    kind = classify(code, message)
    return EXCEPTION_BY_KIND[kind](code, message, kind)
