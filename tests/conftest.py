"""Shared fixtures: a simulated gateway on a free port with a fixed clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from ibfarm.sim import SimGateway

#: The simulated gateway's clock in tests: a Friday evening after the US close.
NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, every: float = 0.02,
               what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def gateways() -> Iterator[Callable[..., SimGateway]]:
    """A factory of simulated gateways (port 0, fixed clock unless told); all stop on exit."""
    started: list[SimGateway] = []

    def make(**knobs) -> SimGateway:
        knobs.setdefault("now", lambda: NOW)
        gateway = SimGateway(port=0, **knobs).start()
        started.append(gateway)
        return gateway

    try:
        yield make
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture(autouse=True)
def main_thread_event_loop():
    """ib_insync's blocking API runs on the main thread's current loop; a test that used
    ``asyncio.run`` leaves none behind, so give every test one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop()
            if loop.is_closed():
                raise RuntimeError("closed")
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
    yield


@pytest.fixture
def gateway():
    """A simulated gateway on port 0 with IB's pacing rules and a fixed clock."""
    with SimGateway(port=0, now=lambda: NOW) as gw:
        yield gw


@pytest.fixture
def open_gateway():
    """A simulated gateway with pacing off (for tests that send many requests)."""
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        yield gw
