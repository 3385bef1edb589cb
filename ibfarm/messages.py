"""The records that travel over the pipe between the farm's manager and one worker.

One small dataclass per message, pickled (the manager's side dispatches them with ``match``)::

    manager ──► worker                          worker ──► manager
    ──────────────────                          ──────────────────
    Call(call_id, op, args, budget, grant)      Result(call_id, value, error)
        run ``op`` now: the pacer granted it        or a bars frame: BARS_HEADER + Arrow IPC
    Cancel(call_id)                             Interrupted(call_id, at_ib, reason, suspect)
        cancel it, at IB if it was sent             the connection was lost under it: the
    UseClientId(client_id)                          manager queues it again (any worker)
        connect with this id (after a 326)      StateChanged(state, client_id, detail)
    Exit()                                      ConnectFailed(detail, refused)
        disconnect and exit                     ClientIdRefused(client_id)   (326)
                                                Idle()   nothing to do for idle_timeout

A ``Call``'s ``budget`` is what is left of its ``request_timeout``: only time spent at IB
(sent, not yet answered) is counted, so waiting in the manager's queue, for the pacer or for a
reconnect never times a request out, and a resend does not restart its clock.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any


class Op(str, enum.Enum):
    """What a ``Call`` asks a worker to do."""

    BARS = "bars"  # args: contract, end, duration, bar size, what to show, use RTH
    HEAD_TIMESTAMP = "head_timestamp"  # args: contract, what to show, use RTH
    CONTRACT_DETAILS = "contract_details"  # args: contract
    FN = "fn"  # args: the pickled (fn, args, kwargs), unpickled in the worker


class WorkerState(str, enum.Enum):
    """A worker's connection, as the manager sees it."""

    STARTING = "starting"  # spawned, not yet connecting
    CONNECTING = "connecting"  # first connection attempts
    READY = "ready"  # connected: takes work
    LINK_DOWN = "link_down"  # connected to the gateway, but the gateway lost IB (1100)
    RECONNECTING = "reconnecting"  # the gateway dropped the socket; reconnecting
    RETIRING = "retiring"  # told to exit (idle, shutdown, no client id left)


class Interruption(str, enum.Enum):
    """Why a call came back unanswered."""

    DROPPED = "dropped"  # the socket to the gateway closed while it was out
    DATA_LOST = "data_lost"  # 1101: the gateway lost what was in flight
    MAINTENANCE = "maintenance"  # refused while IB was away (a 200 during 1100)
    NOT_CONNECTED = "not_connected"  # it reached a worker that had just lost its connection


# ----------------------------------------------------------------------------- manager -> worker


@dataclass(slots=True)
class Call:
    """Run ``op`` with ``args``; at most ``budget`` more seconds at IB.

    ``grant`` is the pacer's ``Grant`` the manager obtained for it (None: not paced); the
    worker re-dates it when the request leaves.
    """

    call_id: int
    op: Op
    args: tuple
    budget: float
    grant: Any = None


@dataclass(slots=True)
class Cancel:
    call_id: int


@dataclass(slots=True)
class UseClientId:
    client_id: int


@dataclass(slots=True)
class Exit:
    pass


# ----------------------------------------------------------------------------- worker -> manager


@dataclass(slots=True)
class Result:
    """The answer to a call: ``value``, or ``error`` (an exception)."""

    call_id: int
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Interrupted:
    """A call lost with its connection; ``at_ib`` seconds of its budget were spent.

    ``suspect``: it had just been sent when the gateway closed the connection, so it may be
    what the gateway refuses (a request it cannot parse).
    """

    call_id: int
    at_ib: float
    reason: Interruption
    suspect: bool = False


@dataclass(slots=True)
class StateChanged:
    state: WorkerState
    client_id: int
    detail: str = ""


@dataclass(slots=True)
class ConnectFailed:
    """A connection attempt failed; ``refused``: nothing listens at the address."""

    detail: str
    refused: bool = False


@dataclass(slots=True)
class ClientIdRefused:
    """The gateway refused ``client_id`` (326): the manager answers with ``UseClientId``."""

    client_id: int


@dataclass(slots=True)
class Idle:
    pass


#: ``StateChanged.detail`` of a worker leaving because it received SIGTERM.
SIGNALLED = "stopped by SIGTERM"

ToWorker = Call | Cancel | UseClientId | Exit
FromWorker = Result | Interrupted | StateChanged | ConnectFailed | ClientIdRefused | Idle

#: A bars frame: this header (a marker byte and the call id), then an Arrow IPC stream.
BARS_HEADER = struct.Struct("<cq")
BARS_MARK = b"B"


def bars_header(call_id: int) -> bytes:
    return BARS_HEADER.pack(BARS_MARK, call_id)


def is_bars_frame(frame: bytes | memoryview) -> bool:
    return frame[:1] == BARS_MARK


def read_bars_header(frame: bytes | memoryview) -> tuple[int, memoryview]:
    """The call id and the Arrow IPC stream of a bars frame."""
    _, call_id = BARS_HEADER.unpack_from(frame, 0)
    return call_id, memoryview(frame)[BARS_HEADER.size:]


__all__ = ["BARS_HEADER", "Call", "Cancel", "ClientIdRefused", "ConnectFailed", "Exit",
           "FromWorker", "Idle", "Interrupted", "Interruption", "Op", "Result", "StateChanged",
           "ToWorker", "UseClientId", "WorkerState", "bars_header", "is_bars_frame",
           "read_bars_header"]
