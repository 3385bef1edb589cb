"""Functions tests send to farm workers with ``IbFarm.submit`` (importable by name)."""

from __future__ import annotations

import asyncio
import os
import signal

from ib_insync import Stock


async def server_time(ib):
    return await ib.reqCurrentTimeAsync()


def client_id(ib) -> int:
    return ib.client.clientId


def worker_pid(ib) -> int:
    return os.getpid()


def boom(ib):
    raise ValueError("boom")


def kill_self(ib):
    os.kill(os.getpid(), signal.SIGKILL)


async def sleep_then(ib, seconds: float, value):
    await asyncio.sleep(seconds)
    return value


async def raw_bars(ib, bar_size: str):
    return await ib.reqHistoricalDataAsync(
        Stock("AAPL", "SMART", "USD"), "", "1 D", bar_size, "TRADES", True, formatDate=2,
        timeout=0)
