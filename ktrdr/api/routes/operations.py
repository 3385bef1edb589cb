"""``/operations``: progress, result and cancellation of background loads and backfills."""

from __future__ import annotations

from fastapi import APIRouter

from ktrdr.api import errors
from ktrdr.api.dependencies import Svc
from ktrdr.api.models import Operation, OperationList

router = APIRouter(prefix="/operations", tags=["operations"])
_NOT_FOUND = errors.responses(404, s404="problem: no such operation")


@router.get("", response_model=OperationList, summary="Operations, newest first")
async def list_operations(svc: Svc) -> OperationList:
    return OperationList(operations=svc.operations.list())


@router.get("/{operation_id}", response_model=Operation, responses=_NOT_FOUND,
            summary="An operation's status, progress and result")
async def get_operation(operation_id: str,
                        svc: Svc) -> Operation:
    """``status`` is pending, running, succeeded, failed or cancelled; a failed operation's
    ``error`` is a problem (with IB's code, the kind and a hint), and ``result`` has one
    report per symbol."""
    return svc.operations.get(operation_id)


@router.delete("/{operation_id}", response_model=Operation, responses=_NOT_FOUND,
               summary="Cancel an operation")
async def cancel_operation(operation_id: str,
                           svc: Svc) -> Operation:
    """A pending or running operation ends as ``cancelled`` at once: its task is cancelled,
    which cancels its requests still queued in the farm or in flight at IB and keeps what
    already landed (stored; a re-run fetches only the rest). A finished one is returned
    unchanged."""
    return svc.operations.cancel(operation_id)
