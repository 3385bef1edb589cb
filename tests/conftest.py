"""Shared fixtures: a simulated gateway on a free port with a fixed clock."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ibfarm.sim import SimGateway

#: The simulated gateway's clock in tests: a Friday evening after the US close.
NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)


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
