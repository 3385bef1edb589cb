"""Fixtures of the simulator's tests: an official-client connection to a gateway on a clock."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest

from tests.conftest import gateways
from tests.sim.ibapiclient import connected


@pytest.fixture
def ibapi_app_factory():
    """``make(clock, **knobs) -> (Recorder, SimGateway)``: pacing off unless told; every
    gateway and connection closes at the end of the test."""
    with contextlib.ExitStack() as stack:
        make_gateway = stack.enter_context(gateways())

        def make(clock: datetime, **knobs):
            knobs.setdefault("pacing", "off")
            gw = make_gateway(now=lambda: clock, **knobs)
            return stack.enter_context(connected(gw.port)), gw

        yield make
