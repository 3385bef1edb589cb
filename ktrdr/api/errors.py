"""Errors as RFC 9457 problem details (``application/problem+json``).

One table, ``PROBLEMS``, says what HTTP status each error kind becomes. The kinds are the data
layer's (``DataErrorKind``: ``unknown_symbol``, ``no_permission``, ``invalid_request``,
``rate_limited``, ``unavailable``, ``timeout``, ``cancelled``, ``misconfigured``, ``failed``;
the data provider sets them, the API never looks at IB's own kinds) plus the API's own
(``maintenance``, ``shutdown``, ``unauthorized``, ``not_found``, ...). Every problem carries
the provider's code (IB's, when IB sent one), the kind and a hint saying what to do::

    exception ──► to_api_error ──► ApiError(kind, detail, ib_code, hint)
                   DataProviderError: its kind, message, code, hint (retry_after)
                   DataCorruptError: store_corrupt; DataNotFoundError: not_found
                   ValueError: invalid_request; TimeoutError: timeout; else internal
              ──► problem_response ──► {"type", "title", "status", "detail", "instance",
                                        "ib_code", "kind", "hint"} + Retry-After

    {"type": "https://ktrdr.invalid/problems/unknown_symbol", "title": "Unknown symbol",
     "status": 404, "detail": "no contract found for 'NOPE' (tried: stock, index, future)",
     "instance": "/api/v1/symbols/NOPE", "ib_code": 200, "kind": "unknown_symbol",
     "hint": "check the symbol; forex pairs are written like EUR.USD, ..."}

Rate limits (429), an unreachable gateway and IB's maintenance (503) also carry a
``Retry-After`` header.
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

from ktrdr.data.data_manager import DataError, DataNotFoundError
from ktrdr.data.external_data_interface import KIND_HINTS, DataErrorKind, DataProviderError
from ktrdr.data.store import DataCorruptError, StoreError

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
        hint: what to do (the data layer's kinds take theirs from ``KIND_HINTS``).
        retry_after: which ``Retry-After`` applies: "pacing", "unavailable", "maintenance",
            "short" or None.
    """

    status: int
    title: str
    hint: str = ""
    retry_after: str | None = None


K = DataErrorKind
#: Error kind -> HTTP status, title, hint and Retry-After. The one table of the API's errors.
PROBLEMS: dict[str, ProblemKind] = {
    # the data layer's kinds
    K.UNKNOWN_SYMBOL: ProblemKind(404, "Unknown symbol"),
    K.NO_PERMISSION: ProblemKind(403, "No market-data permission"),
    K.INVALID_REQUEST: ProblemKind(422, "Invalid request"),
    K.RATE_LIMITED: ProblemKind(429, "Rate limit reached", retry_after="pacing"),
    K.UNAVAILABLE: ProblemKind(503, "Data source unavailable", retry_after="unavailable"),
    K.MISCONFIGURED: ProblemKind(503, "Data source misconfigured", retry_after="unavailable"),
    K.TIMEOUT: ProblemKind(504, "No answer in time"),
    K.CANCELLED: ProblemKind(409, "Cancelled"),
    K.FAILED: ProblemKind(502, "Data source error", retry_after="short"),
    # the API's own kinds
    "maintenance": ProblemKind(503, "IB in maintenance",
                               "IB is in its daily maintenance; the operation continues when it "
                               "ends", retry_after="maintenance"),
    "shutdown": ProblemKind(503, "Shutting down", "try again once the server is back",
                            retry_after="unavailable"),
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

    def retry_after(self, pacing: int, unavailable: int, maintenance: int = 60) -> int | None:
        """Seconds for the ``Retry-After`` header (None: no header)."""
        return {"pacing": pacing, "unavailable": unavailable, "maintenance": maintenance,
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
            "hint": self.hint or self.spec.hint or _kind_hint(self.kind),
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def _kind_hint(kind: str) -> str:
    try:
        return KIND_HINTS[DataErrorKind(kind)]
    except ValueError:
        return ""


def to_api_error(exc: BaseException) -> ApiError:
    """The problem an exception stands for, by its type and (provider errors) its ``kind``.

    ``ApiError`` passes through; a ``DataProviderError`` becomes its ``kind``'s problem with
    its message, code and hint (a rate limit's ``retry_after`` becomes ``Retry-After``); an
    unreadable stored file is ``store_corrupt``, nothing stored ``not_found``; time-outs are
    504, other ``ValueError``s (bad symbol, timeframe, range) bad input (422), anything else
    is 500.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DataProviderError):
        err = ApiError(exc.kind, exc.message, ib_code=exc.error_code or None,
                       hint=exc.hint or None)
        if exc.kind is DataErrorKind.RATE_LIMITED and exc.retry_after and exc.retry_after > 0:
            err.headers["Retry-After"] = str(int(round(exc.retry_after)))
        return err
    if isinstance(exc, DataCorruptError):
        return ApiError("store_corrupt", str(exc))
    if isinstance(exc, DataNotFoundError):
        return ApiError("not_found", str(exc))
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return ApiError(DataErrorKind.TIMEOUT, str(exc) or "the request timed out")
    if isinstance(exc, ValueError):
        return ApiError(DataErrorKind.INVALID_REQUEST, str(exc))
    return ApiError("internal", f"{type(exc).__name__}: {exc}")


def problem_response(err: ApiError, request: Request) -> JSONResponse:
    """``err`` as an ``application/problem+json`` response (with ``Retry-After`` if it has one)."""
    settings = getattr(request.app.state, "settings", None)
    headers = dict(err.headers)
    seconds = err.retry_after(
        getattr(settings, "retry_after_pacing", 60),
        getattr(settings, "retry_after_unavailable", 10),
        getattr(settings, "retry_after_maintenance", 60))
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
        err = ApiError(DataErrorKind.INVALID_REQUEST, detail or "invalid request", errors=errors,
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
    return [DataProviderError, DataError, StoreError, ValueError, TimeoutError,
            concurrent.futures.TimeoutError]
