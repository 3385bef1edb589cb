"""Functions tests send to farm workers with ``IbFarm.submit`` (importable by name)."""

from __future__ import annotations

import asyncio
import os
import signal

from ibfarm.backend import RequestError, Stock


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
    """Send a historical request as given and raise the gateway's error for it, if any.

    The error is taken from ``errorEvent``: the libraries differ in which codes fail a request
    (ib_async counts 321 as a warning), the wire does not."""
    future = asyncio.get_running_loop().create_future()

    def on_error(rid, code, message, *_):
        if rid != -1 and not future.done():  # the only request this function makes
            future.set_exception(RequestError(rid, code, message))

    ib.errorEvent += on_error
    try:
        bars = ib.reqHistoricalDataAsync(
            Stock("AAPL", "SMART", "USD"), "", "1 D", bar_size, "TRADES", True, formatDate=2,
            timeout=0)
        done, _ = await asyncio.wait({future, asyncio.ensure_future(bars)},
                                     return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        ib.errorEvent -= on_error
