"""Cancellation that reaches the provider's requests.

``DataManager`` is synchronous and has no way to stop a load half-way: it submits every
provider request to its own event loop and waits for them all. ``CancellableProvider`` wraps
the provider it is given: each provider coroutine created on an operation's thread (see
``bound``) remembers that operation, and when the operation is cancelled (or fails because the
gateway is gone) its coroutines are cancelled on the DataManager's loop. The adapter then
cancels the farm requests that have not been sent yet, and the DataManager call returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from ktrdr.data.external_data_interface import DataProviderCancelledError, ExternalDataProvider

log = logging.getLogger(__name__)


class CancelledByOperation(DataProviderCancelledError):
    """A provider call of an operation that was cancelled (or stopped by an outage)."""

    def __init__(self, message: str = "the operation was cancelled"):
        super().__init__(message, "api", 0, "start the operation again if still needed")


class CancellableProvider(ExternalDataProvider):
    """``inner`` with per-operation cancellation of its coroutines (see the module docstring)."""

    def __init__(self, inner: ExternalDataProvider):
        self.inner = inner
        self.name = inner.name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._running: dict[threading.Event, set[tuple[asyncio.AbstractEventLoop,
                                                       asyncio.Task]]] = {}

    # ----------------------------------------------------------------- binding

    @contextlib.contextmanager
    def bound(self, token: threading.Event) -> Iterator[None]:
        """Provider calls made on this thread inside the block belong to ``token``'s operation;
        setting the token and calling ``cancel(token)`` stops them."""
        previous = getattr(self._local, "token", None)
        self._local.token = token
        try:
            yield
        finally:
            self._local.token = previous

    def cancel(self, token: threading.Event) -> int:
        """Cancel the running coroutines of ``token``'s operation; returns how many."""
        with self._lock:
            running = list(self._running.get(token, ()))
        for loop, task in running:
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing left to cancel
                loop.call_soon_threadsafe(task.cancel)
        if running:
            log.info("cancelled %d provider request(s) of a stopped operation", len(running))
        return len(running)

    def _guard(self, coro: Coroutine) -> Coroutine:
        token = getattr(self._local, "token", None)
        return coro if token is None else self._run(token, coro)

    async def _run(self, token: threading.Event, coro: Coroutine) -> Any:
        if token.is_set():
            coro.close()
            raise CancelledByOperation()
        entry = (asyncio.get_running_loop(), asyncio.current_task())
        with self._lock:
            self._running.setdefault(token, set()).add(entry)
        try:
            return await coro
        except asyncio.CancelledError:
            if token.is_set():  # our cancel: report it as the provider error it means
                raise CancelledByOperation() from None
            raise
        finally:
            with self._lock:
                tasks = self._running.get(token)
                if tasks is not None:
                    tasks.discard(entry)
                    if not tasks:
                        del self._running[token]

    # ----------------------------------------------------------------- the interface
    # Not ``async def``: the coroutine must be created (and bound) on the caller's thread.

    def fetch_historical_data(self, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.fetch_historical_data(*args, **kwargs))

    def validate_symbol(self, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.validate_symbol(*args, **kwargs))

    def get_head_timestamp(self, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.get_head_timestamp(*args, **kwargs))

    def get_contract_details(self, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.get_contract_details(*args, **kwargs))

    def get_current_time(self) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.get_current_time())

    def plan_requests(self, *args: Any, **kwargs: Any) -> Coroutine:  # type: ignore[override]
        return self._guard(self.inner.plan_requests(*args, **kwargs))

    def health_check(self) -> Coroutine:  # type: ignore[override]
        return self.inner.health_check()

    def get_provider_info(self) -> dict[str, Any]:
        return self.inner.get_provider_info()

    def get_supported_timeframes(self) -> list[str]:
        return self.inner.get_supported_timeframes()

    def get_supported_instruments(self) -> list[str]:
        return self.inner.get_supported_instruments()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else the inner provider offers
        return getattr(self.inner, name)
