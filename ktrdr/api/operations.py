"""Background operations: loads and backfills that outlive the request that started them.

Each operation is an asyncio task on the server's loop; its blocking work runs on a thread of
the registry's own pool (so long backfills never starve store reads). The work reports progress
through an ``OperationContext``, which is also how cancellation reaches it: ``cancel()`` marks
the operation cancelled at once and the work stops at its next progress report.

While operations run, a watchdog probes the gateway; when it has been unreachable for longer
than ``outage_grace`` seconds, every running operation that needs IB fails with a 503 problem
saying so, instead of waiting for request time-outs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from ktrdr.api.errors import ApiError, to_api_error
from ktrdr.api.gateway import GatewayMonitor
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
T = TypeVar("T")

#: Kinds that mean "IB did not answer"; while the gateway is down they become its 503.
_OUTAGE_KINDS = {DataErrorKind.TIMEOUT.value, DataErrorKind.UNAVAILABLE.value,
                 DataErrorKind.FAILED.value}


class OperationCancelled(Exception):
    """Raised inside an operation's work once the operation was cancelled."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class OperationContext:
    """What an operation's work sees: progress reports and cancellation (thread-safe)."""

    def __init__(self, op: _Operation, pool: concurrent.futures.Executor):
        self._op = op
        self._pool = pool
        self.cancel_event = threading.Event()
        self._hooks: list[Callable[[], object]] = []

    def on_cancel(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` when the operation is cancelled or aborted (at once if it was)."""
        self._hooks.append(hook)
        if self.cancel_event.is_set():
            hook()

    def cancel(self) -> None:
        """Mark the operation cancelled and run the hooks (the work stops at its next check)."""
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # a failing hook must not stop the others
                log.exception("cancel hook failed")

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise ``OperationCancelled`` if the operation was cancelled."""
        if self.cancel_event.is_set():
            raise OperationCancelled(self._op.id)

    def progress(self, done: int, total: int | None = None, message: str = "") -> None:
        """Report progress; raises ``OperationCancelled`` once the operation was cancelled."""
        percent = round(100.0 * done / total, 1) if total else None
        self._op.progress = Progress(done=done, total=total, percent=percent, message=message,
                                     updated_at=_now())
        self.check()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` on the operations' thread pool."""
        self.check()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))


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
        self.abort: ApiError | None = None
        self.task: asyncio.Task | None = None
        self.ctx: OperationContext | None = None

    def model(self, prefix: str) -> Operation:
        return Operation(id=self.id, kind=self.kind, status=self.status,
                         created_at=self.created_at, started_at=self.started_at,
                         finished_at=self.finished_at, request=self.request,
                         progress=self.progress, result=self.result, error=self.error,
                         href=f"{prefix}/operations/{self.id}")


def problem_of(err: ApiError, instance: str | None = None) -> Problem:
    return Problem(**err.body(instance))


class OperationRegistry:
    """The server's operations, running and finished (the last ``keep`` finished are kept).

    Args:
        monitor: the gateway probe used by the watchdog and to explain failures.
        outage_grace: seconds the gateway may be unreachable before operations fail.
        keep: finished operations remembered.
        threads: size of the thread pool for the operations' blocking work.
        prefix: the API's path prefix (for ``href`` and problem instances).
        on_finish: called once per operation as it finishes, with its kind, final state,
            seconds it ran (None if it never started) and result (the metrics' hook).
    """

    def __init__(self, monitor: GatewayMonitor | None = None, *, outage_grace: float = 10.0,
                 keep: int = 200, threads: int = 8, prefix: str = "/api/v1",
                 on_finish: Callable[[str, str, float | None, LoadResult | None], None]
                 | None = None):
        self.monitor = monitor
        self.on_finish = on_finish
        self.outage_grace = outage_grace
        self.keep = keep
        self.prefix = prefix
        self._ops: OrderedDict[str, _Operation] = OrderedDict()
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "ktrdr-op")
        self._watchdog: asyncio.Task | None = None
        self._closed = False

    # ---------------------------------------------------------------- starting and reading

    def start(self, kind: OperationKind, request: LoadRequest | BackfillRequest, runner: Runner,
              needs_ib: bool = True) -> Operation:
        """Start ``runner`` as a new operation; returns its first state."""
        if self._closed:
            raise ApiError("shutdown", "the server is shutting down")
        op = _Operation(kind, request, needs_ib)
        op.ctx = OperationContext(op, self._pool)
        self._ops[op.id] = op
        op.task = asyncio.get_running_loop().create_task(self._run(op, runner),
                                                         name=f"operation-{op.id}")
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
        """End ``op`` now: cancelled (``abort`` None) or failed with ``abort``."""
        op.abort = abort
        if abort is None:
            err = ApiError(DataErrorKind.CANCELLED, "the operation was cancelled",
                           hint="start it again if still needed")
            self._finish(op, OperationStatus.cancelled, problem_of(err, self._instance(op)))
        else:
            self._finish(op, OperationStatus.failed, problem_of(abort, self._instance(op)))
        if op.ctx is not None:
            op.ctx.cancel()
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
            result = await runner(op.ctx)
        except (asyncio.CancelledError, OperationCancelled):
            self._finish(op, OperationStatus.cancelled)  # _stop has set the error already
            return
        except Exception as exc:  # every failure becomes the operation's problem
            err = await self.explain(exc)
            if err.kind == "internal":
                log.exception("operation %s failed", op.id, exc_info=exc)
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
        """The problem for ``exc``; a time-out or lost connection while the gateway is
        unreachable is reported as the gateway being unreachable."""
        err = to_api_error(exc)
        if err.kind in _OUTAGE_KINDS and self.monitor is not None:
            health = await self.monitor.check(max_age=0.5)
            if not health.reachable:
                return self.monitor.unavailable()
        return err

    # ---------------------------------------------------------------- watchdog

    def _ensure_watchdog(self) -> None:
        if self.monitor is None or (self._watchdog is not None and not self._watchdog.done()):
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(),
                                                                name="operations-watchdog")

    async def _watch(self) -> None:
        """Probe the gateway while operations that need IB run; fail them after the grace."""
        assert self.monitor is not None
        interval = max(0.2, min(1.0, self.outage_grace / 4))
        while not self._closed:
            live = [op for op in self._ops.values() if op.needs_ib and not op.status.finished]
            if not live:
                return
            try:
                await self.monitor.check(max_age=interval / 2)
            except Exception:  # never let the watchdog die on a probe bug
                log.exception("gateway probe failed")
            down = self.monitor.down_for()
            if down >= self.outage_grace:
                err = self.monitor.unavailable()
                for op in live:
                    if not op.status.finished:
                        log.warning("operation %s failed: %s", op.id, err.detail)
                        self._stop(op, err)
            await asyncio.sleep(interval)

    # ---------------------------------------------------------------- housekeeping

    def _trim(self) -> None:
        finished = [k for k, op in self._ops.items() if op.status.finished]
        for key in finished[:max(0, len(finished) - self.keep)]:
            del self._ops[key]

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every operation and wait (up to ``timeout``) for their tasks to end."""
        self._closed = True
        tasks = [op.task for op in self._ops.values() if op.task is not None]
        for op in list(self._ops.values()):
            if not op.status.finished:
                self._stop(op, ApiError("shutdown", "the server shut down"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            tasks.append(self._watchdog)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        # The work's threads end soon after their provider calls were cancelled; wait for
        # them (bounded), so nothing is still using the DataManager when it is closed.
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._pool.shutdown, True), timeout)
        except asyncio.TimeoutError:
            log.warning("operation threads still busy after %.0f s; closing anyway", timeout)

    def __len__(self) -> int:
        return len(self._ops)


__all__ = ["OperationCancelled", "OperationContext", "OperationRegistry", "problem_of"]
