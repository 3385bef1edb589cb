"""IbFarm: a ``concurrent.futures.Executor`` whose workers each hold one IB connection.

What the caller sees::

    farm = IbFarm(port=4002, max_workers=4)        # or IbFarm(FarmConfig.from_env())
    farm.historical_bars(BarRequest(...)) ─► FarmFuture ─► pyarrow.Table (BAR_SCHEMA)
    farm.map_bars(requests)               ─► tables in order
    farm.head_timestamp(...), farm.contract_details(...), farm.submit(fn, ...)
    farm.status(), farm.shutdown(), with IbFarm(...) as farm: ...

Every request is checked here before it is queued (bar size and duration in IB's terms, no
text IB's wire protocol cannot carry), so what IB would refuse fails at once with
``InvalidRequestError``. The queue, the pacing, the gateways and the workers are the
manager's (``ibfarm.manager``, whose docstring draws the data flow); one worker process per
client id (``ibfarm.worker``); the records between them are ``ibfarm.messages``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import pickle
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from ibfarm.backend import Contract
from ibfarm.bars import BarRequest, bar_seconds, check_wire_text, duration_problem
from ibfarm.config import FarmConfig
from ibfarm.contracts import make_contract
from ibfarm.errors import InvalidRequestError
from ibfarm.manager import FarmFuture, Manager
from ibfarm.messages import Op
from ibfarm.pacing import PacedRequest

log = logging.getLogger(__name__)

_live_farms: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for farm in list(_live_farms):
        farm._manager.shutdown(wait=True, cancel_futures=True, cancel_running=True)


class IbFarm(concurrent.futures.Executor):
    """Worker processes, one IB connection each, behind the ``Executor`` interface.

    Args:
        config: the settings (default ``FarmConfig()``; see ``FarmConfig.from_env``).
        log_level: level of the workers' own log.
        overrides: ``FarmConfig`` fields that replace the ones in ``config``.

    Every method returns a ``FarmFuture``: call ``.result()`` or, in asyncio code,
    ``await`` it (the caller's loop is never blocked); ``.cancel()`` stops it (queued: it
    leaves the queue; sent: it is cancelled at the gateway).
    """

    def __init__(self, config: FarmConfig | None = None, *, log_level: int = logging.WARNING,
                 **overrides):
        config = config or FarmConfig()
        self.config = config.replace(**overrides) if overrides else config
        self._manager = Manager(self.config, log_level)
        weakref.finalize(self, self._manager.shutdown, False, True, True)
        _live_farms.add(self)

    # ----------------------------------------------------------------- Executor

    def submit(self, fn, /, *args, **kwargs) -> FarmFuture:
        """Run ``fn(ib, *args, **kwargs)`` in a worker with its connected ``IB``.

        A coroutine function (or one returning an awaitable) is awaited on the worker's loop,
        so use the library's ``...Async`` methods inside it. Its result must pickle. ``fn`` may
        be defined anywhere, ``__main__`` and lambdas included: functions the worker cannot
        import by name (workers do not import the caller's main script) travel by value
        (cloudpickle).
        """
        try:
            blob = _pickle_call(fn, args, kwargs)
        except Exception as exc:
            return _failed(TypeError(f"cannot send {fn!r} to a worker: {exc}"))
        return self._manager.submit(Op.FN, (blob,))

    # ----------------------------------------------------------------- IB requests

    def historical_bars(self, request: BarRequest) -> FarmFuture:
        """Bars for ``request`` as a ``pyarrow.Table`` in ``BAR_SCHEMA`` (empty if IB has none).

        A request IB would refuse (an unknown bar size, ``N D`` over 365, a small bar size
        beyond IB's step table, text the wire cannot carry) fails at once with
        ``InvalidRequestError``; common spellings ("1 sec", "1h") are sent in IB's own.
        """
        try:
            request = request.checked()
            if (problem := duration_problem(request.bar_size, request.duration)) is not None:
                raise ValueError(_DURATION_PROBLEMS[problem].format(
                    duration=request.duration, bar_size=request.bar_size))
            contract = _checked_contract(request.symbol, request.sec_type, request.exchange,
                                         request.currency)
        except ValueError as exc:
            return _failed(_invalid(exc))
        end, what = request.ib_end(), request.what_to_show
        paced = PacedRequest(
            key=(_contract_key(contract), end, request.duration, request.bar_size, what,
                 request.use_rth),
            contract_key=(_contract_key(contract), what), what_to_show=what,
            bar_seconds=bar_seconds(request.bar_size))
        return self._manager.submit(Op.BARS, (contract, end, request.duration, request.bar_size,
                                              what, bool(request.use_rth)), paced=paced)

    def map_bars(self, requests: Iterable[BarRequest], timeout: float | None = None
                 ) -> Iterator[pa.Table]:
        """Submit every request now; yield their tables in order (like ``Executor.map``)."""
        return _in_order([self.historical_bars(request) for request in requests], timeout)

    def head_timestamp(self, symbol_or_contract, what_to_show: str = "TRADES",
                       use_rth: bool = True) -> FarmFuture:
        """The earliest time IB has data for (an aware UTC ``datetime``)."""
        try:
            contract = _checked_contract(symbol_or_contract)
            what = check_wire_text(what_to_show, "what_to_show").upper()
        except ValueError as exc:
            return _failed(_invalid(exc))
        paced = PacedRequest(key=("head", _contract_key(contract), what, use_rth),
                             contract_key=(_contract_key(contract), what), what_to_show=what,
                             bar_seconds=None)
        return self._manager.submit(Op.HEAD_TIMESTAMP, (contract, what, bool(use_rth)),
                                    paced=paced)

    def contract_details(self, symbol_or_contract) -> FarmFuture:
        """IB's ``ContractDetails`` list for a symbol or contract (empty: unknown)."""
        try:
            contract = _checked_contract(symbol_or_contract)
        except ValueError as exc:
            return _failed(_invalid(exc))
        return self._manager.submit(Op.CONTRACT_DETAILS, (contract,), messages=1)

    # ----------------------------------------------------------------- the farm

    def status(self) -> dict:
        """Workers (pid, client id, gateway, state, in flight, served, errors, idle seconds,
        RSS, CPU), the farm's totals (requests by kind and outcome, IB errors by code,
        retries, queue), one entry per gateway (state, workers, pacer), and ``pacer`` (the
        first gateway's counters)."""
        return self._manager.status()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 cancel_running: bool = False) -> None:
        """Stop taking work; finish what is in flight; stop the workers.

        Args:
            wait: return only when every worker has exited and the farm's threads, pipes
                and pacer segments are released.
            cancel_futures: cancel the requests not yet sent.
            cancel_running: also cancel the requests out at IB (each is cancelled at the
                gateway), so the farm stops at once (Ctrl-C).
        """
        self._manager.shutdown(wait, cancel_futures or cancel_running, cancel_running)
        _live_farms.discard(self)


#: How IB words its refusals of a duration (bars.duration_problem's answers).
_DURATION_PROBLEMS = {
    "days": "duration {duration!r}: IB takes at most 365 days as 'N D'; ask in years ('1 Y') "
            "or in shorter pieces",
    "step": "duration {duration!r} is longer than IB serves {bar_size!r} bars in one request "
            "(IB's step table: e.g. 1800 S for 1 secs, 1 D for 30 secs); ask in shorter pieces",
}


def _invalid(exc: ValueError) -> InvalidRequestError:
    if isinstance(exc, InvalidRequestError):
        return exc
    return InvalidRequestError(0, str(exc))


def _checked_contract(symbol_or_contract, sec_type: str = "STK", exchange: str = "SMART",
                      currency: str = "USD") -> Contract:
    """``make_contract`` whose every text field is one the wire can carry."""
    if isinstance(symbol_or_contract, str):
        check_wire_text(symbol_or_contract, "symbol")
        if not symbol_or_contract.strip():
            raise ValueError("empty symbol; give an IB symbol such as AAPL or EUR.USD")
    contract = make_contract(symbol_or_contract, sec_type, exchange, currency)
    for name in ("symbol", "secType", "exchange", "primaryExchange", "currency", "localSymbol",
                 "tradingClass", "lastTradeDateOrContractMonth", "multiplier", "right"):
        check_wire_text(str(getattr(contract, name, "") or ""), name)
    return contract


def _contract_key(contract) -> tuple:
    return (contract.conId, contract.symbol, contract.secType, contract.exchange,
            contract.currency, contract.lastTradeDateOrContractMonth)


def _pickle_call(fn, args: tuple, kwargs: dict) -> bytes:
    """``(fn, args, kwargs)`` pickled so a worker can load it without the caller's main
    script: by reference when ``fn`` is importable, by value (cloudpickle) otherwise."""
    try:
        blob = pickle.dumps((fn, args, kwargs), protocol=5)
        if b"__main__" not in blob:
            return blob
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    import cloudpickle

    return cloudpickle.dumps((fn, args, kwargs), protocol=5)


def _in_order(futures: list[FarmFuture], timeout: float | None) -> Iterator[Any]:
    end = None if timeout is None else time.monotonic() + timeout

    def results() -> Iterator[Any]:
        try:
            futures.reverse()
            while futures:
                left = None if end is None else end - time.monotonic()
                yield futures.pop().result(left)
        finally:
            for future in futures:
                future.cancel()
    return results()


def _failed(error: BaseException) -> FarmFuture:
    future = FarmFuture()
    future.set_exception(error)
    return future


__all__ = ["FarmFuture", "IbFarm"]
