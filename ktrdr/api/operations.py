"""Background operations: loads and backfills that outlive the request that started them.

Each operation is one asyncio task on the server's loop, awaiting the DataManager's async
core (``loads.load`` / ``loads.backfill``)::

    POST /data/backfill ──► OperationRegistry.start(kind, request, runner) ──► 202 + Location
                              └─ task "operation-<id>": runner(ctx) ─► DataManager.backfill_async
                                   ctx.progress(...) ◄─ ProgressEvents, as requests land
    DELETE /operations/{id} ──► cancel(): status "cancelled" now, task.cancel()
                              └─ the DataManager cancels the farm requests still queued or in
                                 flight, saves what landed, and the task ends (its locks free)
    watchdog task (while operations need IB), every second:
        Availability.check() ── unreachable for outage_grace ─────► fail them (503 unavailable)
                             ── maintenance for maintenance_grace ─► fail them (503 maintenance)
                             ── maintenance, shorter ──► Operation.notice says so; they wait
                                                        (the farm holds their requests)

Ending an operation and ending its task are two steps: the operation's state is final at once
(``cancel``, an outage), while the task may still be saving what arrived; the per-file locks
(``loads.KeyLocks``) are released only when the task has ended, so the next operation on the
same symbol and timeframe waits for the save.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from ktrdr.api.availability import Availability, GatewayState
from ktrdr.api.errors import ApiError, to_api_error
from ktrdr.api.models import (
    BackfillRequest,
    LoadRequest,
    LoadResult,
    Operation,
    OperationKind,
    OperationStatus,
    Problem,
    Progress,
)
from ktrdr.data.external_data_interface import DataErrorKind

log = logging.getLogger(__name__)

#: Kinds that mean "IB did not answer"; while IB is away they become the state's 503.
_OUTAGE_KINDS = {DataErrorKind.TIMEOUT.value, DataErrorKind.UNAVAILABLE.value,
                 DataErrorKind.FAILED.value}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class OperationContext:
    """What an operation's work sees: where to report its progress."""

    def __init__(self, op: _Operation):
        self._op = op

    @property
    def id(self) -> str:
        return self._op.id

    def progress(self, done: int, total: int | None = None, message: str = "",
                 bars: int | None = None) -> None:
        """Report progress: requests done of total, what is happening, bars fetched so far
        (None: as reported last)."""
        percent = round(100.0 * done / total, 1) if total else None
        bars = self._op.progress.bars if bars is None else bars
        self._op.progress = Progress(done=done, total=total, percent=percent, bars=bars,
                                     message=message, updated_at=_now())


Runner = Callable[[OperationContext], Awaitable[LoadResult]]


class _Operation:
    def __init__(self, kind: OperationKind, request: LoadRequest | BackfillRequest,
                 needs_ib: bool):
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.request = request
        self.needs_ib = needs_ib
        self.status = OperationStatus.pending
        self.created_at = _now()
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.progress = Progress()
        self.result: LoadResult | None = None
        self.error: Problem | None = None
        self.notice: str | None = None
        self.task: asyncio.Task | None = None

    def model(self, prefix: str) -> Operation:
        return Operation(id=self.id, kind=self.kind, status=self.status,
                         created_at=self.created_at, started_at=self.started_at,
                         finished_at=self.finished_at, request=self.request,
                         progress=self.progress, result=self.result, error=self.error,
                         notice=self.notice if not self.status.finished else None,
                         href=f"{prefix}/operations/{self.id}")


def problem_of(err: ApiError, instance: str | None = None) -> Problem:
    return Problem(**err.body(instance))


class OperationRegistry:
    """The server's operations, running and finished (the last ``keep`` finished are kept).

    Args:
        availability: whether IB can be asked (the watchdog's and ``explain``'s source).
        outage_grace: seconds the gateway may be unreachable before operations fail.
        maintenance_grace: seconds operations wait through IB's maintenance before they fail.
        keep: finished operations remembered.
        prefix: the API's path prefix (for ``href`` and problem instances).
        on_finish: called once per operation as it finishes, with its kind, final state,
            seconds it ran (None if it never started) and result (the metrics' hook).
    """

    def __init__(self, availability: Availability | None = None, *,
                 outage_grace: float = 10.0, maintenance_grace: float = 5400.0,
                 keep: int = 200, prefix: str = "/api/v1",
                 on_finish: Callable[[str, str, float | None, LoadResult | None], None]
                 | None = None):
        self.availability = availability
        self.on_finish = on_finish
        self.outage_grace = outage_grace
        self.maintenance_grace = maintenance_grace
        self.keep = keep
        self.prefix = prefix
        self._ops: OrderedDict[str, _Operation] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()  # operation tasks not yet ended
        self._watchdog: asyncio.Task | None = None
        self._closed = False

    # ---------------------------------------------------------------- starting and reading

    def start(self, kind: OperationKind, request: LoadRequest | BackfillRequest, runner: Runner,
              needs_ib: bool = True) -> Operation:
        """Start ``runner`` as a new operation (a task on the running loop); returns its
        first state."""
        if self._closed:
            raise ApiError("shutdown", "the server is shutting down")
        op = _Operation(kind, request, needs_ib)
        self._ops[op.id] = op
        op.task = asyncio.get_running_loop().create_task(self._run(op, runner),
                                                         name=f"operation-{op.id}")
        self._tasks.add(op.task)
        op.task.add_done_callback(self._tasks.discard)
        self._ensure_watchdog()
        self._trim()
        log.info("operation %s: %s %s", op.id, kind.value, request.model_dump_json())
        return op.model(self.prefix)

    def get(self, op_id: str) -> Operation:
        return self._find(op_id).model(self.prefix)

    def list(self) -> list[Operation]:
        return [op.model(self.prefix) for op in reversed(self._ops.values())]

    def running(self) -> int:
        return sum(1 for op in self._ops.values() if not op.status.finished)

    def counts(self) -> dict[tuple[str, str], int]:
        """Operations known now, by ``(kind, state)``."""
        out: dict[tuple[str, str], int] = {}
        for op in list(self._ops.values()):
            key = (op.kind.value, op.status.value)
            out[key] = out.get(key, 0) + 1
        return out

    def _find(self, op_id: str) -> _Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise ApiError("not_found", f"no operation {op_id!r} (unknown, or forgotten)",
                           hint="list the operations with GET /api/v1/operations")
        return op

    # ---------------------------------------------------------------- ending

    def cancel(self, op_id: str) -> Operation:
        """Cancel a pending or running operation (a finished one is returned as it is)."""
        op = self._find(op_id)
        if not op.status.finished:
            self._stop(op, None)
            log.info("operation %s cancelled", op.id)
        return op.model(self.prefix)

    def _stop(self, op: _Operation, abort: ApiError | None) -> None:
        """End ``op`` now, cancelled (``abort`` None) or failed with ``abort``, and cancel its
        task (which cancels its requests and saves what landed)."""
        if abort is None:
            err = ApiError(DataErrorKind.CANCELLED, "the operation was cancelled",
                           hint="start it again if still needed; what was fetched is stored "
                                "and is not fetched again")
            self._finish(op, OperationStatus.cancelled, problem_of(err, self._instance(op)))
        else:
            self._finish(op, OperationStatus.failed, problem_of(abort, self._instance(op)))
        if op.task is not None and not op.task.done():
            op.task.cancel()

    def _finish(self, op: _Operation, status: OperationStatus, error: Problem | None = None,
                result: LoadResult | None = None) -> None:
        if op.status.finished:
            return
        op.status = status
        op.error = error
        if result is not None:
            op.result = result
        op.finished_at = _now()
        if self.on_finish is not None:
            ran = (op.finished_at - op.started_at).total_seconds() if op.started_at else None
            try:
                self.on_finish(op.kind.value, status.value, ran, op.result)
            except Exception:  # metrics must never fail an operation
                log.exception("on_finish hook failed")

    def _instance(self, op: _Operation) -> str:
        return f"{self.prefix}/operations/{op.id}"

    async def _run(self, op: _Operation, runner: Runner) -> None:
        op.status = OperationStatus.running
        op.started_at = _now()
        try:
            result = await runner(OperationContext(op))
        except asyncio.CancelledError:
            # _stop set the final state; the work has cancelled its requests and saved
            self._finish(op, OperationStatus.cancelled)
            log.info("operation %s: its work has stopped", op.id)
            return
        except Exception as exc:  # every failure becomes the operation's problem
            if op.status.finished:  # stopped (cancel, outage): how the work ended is moot
                log.info("operation %s: its work has stopped (%s: %s)", op.id,
                         type(exc).__name__, exc)
                return
            err = await self.explain(exc)
            if err.kind == "internal":
                log.error("operation %s failed", op.id, exc_info=exc)
            else:
                log.warning("operation %s failed: %s", op.id, err.detail)
            self._finish(op, OperationStatus.failed, problem_of(err, self._instance(op)))
            return
        failures = [r for r in result.symbols if r.status != "succeeded"]
        for report in failures:
            if report.error is not None and report.error.instance is None:
                report.error.instance = self._instance(op)
        if not failures:
            self._finish(op, OperationStatus.succeeded, result=result)
            return
        first = failures[0].error
        if first is not None and len(result.symbols) > 1:
            first = first.model_copy(update={
                "detail": f"{len(failures)} of {len(result.symbols)} symbols failed; "
                          f"{failures[0].symbol}: {first.detail}",
                "instance": self._instance(op)})
        self._finish(op, OperationStatus.failed, first, result)
        log.info("operation %s: %d of %d symbols failed", op.id, len(failures),
                 len(result.symbols))

    async def explain(self, exc: BaseException) -> ApiError:
        """The problem for ``exc``; a time-out or lost connection while IB is away (the
        gateway unreachable, or IB in maintenance) is reported as that."""
        err = to_api_error(exc)
        if err.kind in _OUTAGE_KINDS and self.availability is not None:
            await self.availability.check(max_age=0.5)
            return self.availability.problem() or err
        return err

    # ---------------------------------------------------------------- watchdog

    def _ensure_watchdog(self) -> None:
        if self.availability is None or (self._watchdog is not None
                                         and not self._watchdog.done()):
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(),
                                                                name="operations-watchdog")

    async def _watch(self) -> None:
        """While operations that need IB run: fail them once the gateway has been unreachable
        for ``outage_grace`` or IB in maintenance for ``maintenance_grace``; say meanwhile
        that they wait for IB's maintenance."""
        availability = self.availability
        assert availability is not None
        interval = max(0.2, min(1.0, self.outage_grace / 4))
        while not self._closed:
            live = [op for op in self._ops.values() if op.needs_ib and not op.status.finished]
            if not live:
                return
            try:
                await availability.check(max_age=interval / 2)
            except Exception:  # never let the watchdog die on a probe bug
                log.exception("gateway check failed")
            err: ApiError | None = None
            notice: str | None = None
            if availability.state is GatewayState.UNREACHABLE:
                if availability.down_for() >= self.outage_grace:
                    err = availability.unreachable()
            elif availability.state is GatewayState.MAINTENANCE:
                if availability.maintenance_for() >= self.maintenance_grace:
                    err = availability.maintenance_exceeded(self.maintenance_grace)
                else:
                    notice = availability.notice()
            for op in live:
                if op.status.finished:
                    continue
                if err is not None:
                    log.warning("operation %s failed: %s", op.id, err.detail)
                    self._stop(op, err)
                else:
                    op.notice = notice
            await asyncio.sleep(interval)

    # ---------------------------------------------------------------- housekeeping

    def _trim(self) -> None:
        finished = [k for k, op in self._ops.items() if op.status.finished]
        for key in finished[:max(0, len(finished) - self.keep)]:
            del self._ops[key]

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every operation and wait (up to ``timeout``) for their tasks to end, so
        nothing uses the DataManager once it is closed."""
        self._closed = True
        for op in list(self._ops.values()):
            if not op.status.finished:
                self._stop(op, ApiError("shutdown", "the server shut down"))
        tasks = list(self._tasks)
        if self._watchdog is not None:
            self._watchdog.cancel()
            tasks.append(self._watchdog)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("%d operation task(s) still ending after %.0f s; closing anyway",
                            len(pending), timeout)

    def __len__(self) -> int:
        return len(self._ops)


__all__ = ["OperationContext", "OperationRegistry", "problem_of"]
