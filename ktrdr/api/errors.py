"""Errors as RFC 9457 problem details (``application/problem+json``).

One table, ``PROBLEMS``, says what HTTP status each error kind becomes. The kinds are IB's
(``ibfarm.errors.ErrorKind``: an unknown symbol, missing permissions, pacing...) plus a few of
the API's own (``unauthorized``, ``not_found``...). Every problem carries the IB code (when IB
sent one), the kind and a hint saying what to do about it::

    {"type": "https://ktrdr.invalid/problems/contract_not_found", "title": "Unknown symbol",
     "status": 404, "detail": "No security definition has been found for the request",
     "instance": "/api/v1/symbols/NOPE", "ib_code": 200, "kind": "contract_not_found",
     "hint": "check the symbol, security type, exchange and currency"}

Pacing problems (429) and an unreachable gateway (503) also carry a ``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ibfarm.errors import ErrorKind, hint_for

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Problem ``type`` URIs are this plus the kind (``.invalid``: an identifier, not a page).
PROBLEM_BASE = "https://ktrdr.invalid/problems/"


@dataclass(frozen=True)
class ProblemKind:
    """What an error kind becomes over HTTP.

    Attributes:
        status: the HTTP status.
        title: a short summary that does not change between occurrences.
        hint: what to do (IB's kinds take theirs from ``ibfarm.errors.HINTS``).
        retry_after: which ``Retry-After`` applies: "pacing", "unavailable", "short" or None.
    """

    status: int
    title: str
    hint: str = ""
    retry_after: str | None = None


K = ErrorKind
#: Error kind -> HTTP status, title, hint and Retry-After. The one table of the API's errors.
PROBLEMS: dict[str, ProblemKind] = {
    # IB's kinds
    K.CONTRACT_NOT_FOUND: ProblemKind(404, "Unknown symbol"),
    K.NO_DATA: ProblemKind(404, "No data"),
    K.NO_PERMISSION: ProblemKind(403, "No market-data permission"),
    K.INVALID_REQUEST: ProblemKind(422, "Invalid request"),
    K.PACING: ProblemKind(429, "IB pacing limit reached", retry_after="pacing"),
    K.TOO_MANY_REQUESTS: ProblemKind(429, "Too many IB requests open", retry_after="short"),
    K.CONNECTION: ProblemKind(503, "IB Gateway unavailable", retry_after="unavailable"),
    K.CLIENT_ID_IN_USE: ProblemKind(503, "IB client id in use", retry_after="unavailable"),
    K.WORKER_CRASHED: ProblemKind(503, "IB connection worker crashed", retry_after="short"),
    K.SHUTDOWN: ProblemKind(503, "Shutting down", retry_after="unavailable"),
    K.TIMEOUT: ProblemKind(504, "IB did not answer in time"),
    K.CANCELLED: ProblemKind(409, "Cancelled"),
    K.RETRYABLE: ProblemKind(502, "IB error", retry_after="short"),
    K.INFO: ProblemKind(502, "Unexpected IB notice"),
    # the API's own kinds
    "unauthorized": ProblemKind(
        401, "Unauthorized", "send 'Authorization: Bearer <token>' with KTRDR_API_TOKEN's value"),
    "not_found": ProblemKind(404, "Not found", "check the path and the identifier"),
    "method_not_allowed": ProblemKind(405, "Method not allowed", "see /docs for the methods"),
    "not_acceptable": ProblemKind(
        406, "Not acceptable",
        "accept application/json, application/vnd.apache.arrow.stream or "
        "application/vnd.apache.parquet"),
    "http_error": ProblemKind(400, "Bad request", "check the request"),
    "store_corrupt": ProblemKind(500, "Stored file unreadable",
                                 "move the file away or delete it, then load the data again"),
    "internal": ProblemKind(500, "Internal error", "see the server's log"),
}
PROBLEMS = {getattr(k, "value", k): v for k, v in PROBLEMS.items()}
del K

#: Seconds for ``Retry-After: short``.
SHORT_RETRY = 5


def describe(status: int) -> str:
    """The kinds answered with HTTP ``status``, for the OpenAPI responses."""
    kinds = [f"{name} ({spec.title})" for name, spec in PROBLEMS.items()
             if spec.status == status]
    return "problem: " + ", ".join(kinds) if kinds else "problem"


def responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for problems with these statuses (``application/problem+json``,
    schema ``Problem``); ``descriptions`` maps ``"s404"`` to a text replacing the default."""
    return {status: {
        "description": descriptions.get(f"s{status}") or describe(status),
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    } for status in statuses}


def _kind_name(kind: Any) -> str:
    return kind.value if isinstance(kind, Enum) else str(kind)


@dataclass(eq=False)
class ApiError(Exception):
    """An error the API answers with a problem.

    Args:
        kind: a key of ``PROBLEMS``.
        detail: what happened this time.
        ib_code: IB's error code, when IB sent one.
        hint: what to do (default: the kind's hint).
        status: overrides the kind's HTTP status.
        errors: details of invalid fields (validation errors).
        headers: extra response headers.
    """

    kind: str
    detail: str
    ib_code: int | None = None
    hint: str | None = None
    status: int | None = None
    errors: list[dict] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = _kind_name(self.kind)
        if self.kind not in PROBLEMS:
            raise ValueError(f"unknown problem kind {self.kind!r}")
        super().__init__(self.detail)

    @property
    def spec(self) -> ProblemKind:
        return PROBLEMS[self.kind]

    @property
    def http_status(self) -> int:
        return self.status or self.spec.status

    def retry_after(self, pacing: int, unavailable: int) -> int | None:
        """Seconds for the ``Retry-After`` header (None: no header)."""
        return {"pacing": pacing, "unavailable": unavailable,
                "short": SHORT_RETRY}.get(self.spec.retry_after or "")

    def body(self, instance: str | None) -> dict:
        """The problem document."""
        doc = {
            "type": PROBLEM_BASE + self.kind,
            "title": self.spec.title,
            "status": self.http_status,
            "detail": self.detail,
            "instance": instance,
            "ib_code": self.ib_code,
            "kind": self.kind,
            "hint": self.hint or self.spec.hint or _ib_hint(self.kind),
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def _ib_hint(kind: str) -> str:
    try:
        return hint_for(ErrorKind(kind))
    except ValueError:
        return ""


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


#: The data layer's exceptions by class name (most specific first) -> kind, for provider
#: errors that do not carry an ``IbError`` as their cause, and for store errors.
_CLASS_KINDS: tuple[tuple[str, str], ...] = (
    ("CancelledByOperation", ErrorKind.CANCELLED.value),
    ("DataProviderNotFoundError", ErrorKind.CONTRACT_NOT_FOUND.value),
    ("DataProviderPermissionError", ErrorKind.NO_PERMISSION.value),
    ("DataProviderInvalidRequestError", ErrorKind.INVALID_REQUEST.value),
    ("DataProviderRateLimitError", ErrorKind.PACING.value),
    ("DataProviderConnectionError", ErrorKind.CONNECTION.value),
    ("DataProviderConfigError", ErrorKind.CONNECTION.value),
    ("DataProviderDataError", ErrorKind.INVALID_REQUEST.value),
    ("DataProviderError", ErrorKind.RETRYABLE.value),
    ("DataCorruptError", "store_corrupt"),
    ("DataNotFoundError", "not_found"),
)


def _class_kind(err: BaseException) -> str | None:
    names = {cls.__name__ for cls in type(err).__mro__}
    return next((kind for name, kind in _CLASS_KINDS if name in names), None)


def to_api_error(exc: BaseException) -> ApiError:
    """The problem an exception stands for.

    ``ApiError`` passes through. Otherwise the kind comes from the first ``IbError`` (or
    other exception with a known ``kind``) along the cause chain, else from the data layer's
    exception class (``_CLASS_KINDS``); the detail and hint come from the outermost provider
    error when there is one (it says which request failed). Time-outs are 504, ``ValueError``
    is bad input (422), anything else is 500.
    """
    chain = list(_chain(exc))
    for err in chain:
        if isinstance(err, ApiError):
            return err
    kinded = next((e for e in chain if _kind_name(getattr(e, "kind", "")) in PROBLEMS), None)
    classed = next((e for e in chain if _class_kind(e) is not None), None)
    if kinded is None and classed is None:
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
            return ApiError(ErrorKind.TIMEOUT, str(exc) or "the request timed out")
        if isinstance(exc, ValueError):
            return ApiError(ErrorKind.INVALID_REQUEST, str(exc))
        return ApiError("internal", f"{type(exc).__name__}: {exc}")
    source = classed if classed is not None else kinded
    kind = _kind_name(kinded.kind) if kinded is not None else _class_kind(classed)
    code = _int_attr(kinded, "code") if kinded is not None else None
    if code is None and classed is not None:
        code = _int_attr(classed, "error_code")
    detail = getattr(source, "message", None) or str(source)
    hint = getattr(source, "hint", None) or getattr(kinded, "hint", None)
    err = ApiError(kind, str(detail), ib_code=code, hint=hint if isinstance(hint, str) else None)
    retry_after = getattr(source, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after > 0:
        err.headers["Retry-After"] = str(int(round(retry_after)))
    return err


def _int_attr(err: BaseException | None, name: str) -> int | None:
    value = getattr(err, name, None)
    return value if isinstance(value, int) and value != 0 else None


def problem_response(err: ApiError, request: Request) -> JSONResponse:
    """``err`` as an ``application/problem+json`` response (with ``Retry-After`` if it has one)."""
    settings = getattr(request.app.state, "settings", None)
    headers = dict(err.headers)
    seconds = err.retry_after(
        getattr(settings, "retry_after_pacing", 60),
        getattr(settings, "retry_after_unavailable", 10))
    if seconds is not None:
        headers.setdefault("Retry-After", str(seconds))
    return JSONResponse(err.body(request.url.path), status_code=err.http_status,
                        headers=headers, media_type=PROBLEM_JSON)


_HTTP_KINDS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               406: "not_acceptable"}


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem."""

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        err = ApiError(ErrorKind.INVALID_REQUEST, detail or "invalid request", errors=errors,
                       hint="fix the fields listed in 'errors'")
        return problem_response(err, request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_KINDS.get(exc.status_code, "http_error")
        err = ApiError(kind, str(exc.detail), status=exc.status_code,
                       headers=dict(exc.headers or {}))
        return problem_response(err, request)

    async def on_known(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(to_api_error(exc), request)

    # Errors of known types are answered here (the connection stays usable); anything else
    # reaches Starlette's server-error middleware, which answers the 500 problem below and
    # then lets the server log the exception.
    for known in _known_exceptions():
        app.add_exception_handler(known, on_known)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(to_api_error(exc), request)


def _known_exceptions() -> list[type[BaseException]]:
    from ibfarm.errors import IbError
    from ktrdr.data.data_manager import DataError
    from ktrdr.data.external_data_interface import DataProviderError
    from ktrdr.data.store import StoreError

    return [IbError, DataProviderError, DataError, StoreError, ValueError, TimeoutError,
            concurrent.futures.TimeoutError]
